// AES-256-GCM behind one interface, in three implementations that produce identical bytes:
// node:crypto (OpenSSL), @noble/ciphers (pure JavaScript, the portable one), and the optional
// native addon (OpenSSL without node:crypto's per-call set-up; see native-aead.ts).
// `defaultCipher()` picks the addon when it is built, else node:crypto when this Node.js build
// offers AES-256-GCM, else @noble/ciphers.
// Sealed form: ciphertext followed by the 16-byte authentication tag.

import { createCipheriv, createDecipheriv, createSecretKey, getCiphers, type KeyObject } from 'node:crypto'
import { createRequire } from 'node:module'
import type { gcm as NobleGcm } from '@noble/ciphers/aes.js'
import { GalleonError } from '../errors.js'
import { PerKey } from './per-key.js'
import { keyHandle, nativeAead, nativeAeadStatus, type NativeAeadAddon } from './native-aead.js'

export const KEY_BYTES = 32
export const NONCE_BYTES = 12
export const TAG_BYTES = 16

/** An AES-256-GCM implementation. */
export interface AeadCipher {
  readonly name: 'node' | 'noble' | 'native'
  /** Encrypts and authenticates `plaintext` and `aad`; returns ciphertext || tag. */
  seal: (key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array) => Uint8Array
  /** Like `seal`, but writes ciphertext || tag into `out` (plaintext length + 16 bytes). */
  sealInto: (key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Uint8Array) => void
  /** Checks and decrypts what `seal` returned; throws DECRYPTION_FAILED on any mismatch. */
  open: (key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array) => Uint8Array
}

function checkInputs (key: Uint8Array, nonce: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.byteLength !== KEY_BYTES) throw new GalleonError('INVALID_ARGUMENT', `an AES-256 key is ${KEY_BYTES} bytes, got ${key?.byteLength ?? typeof key}`)
  if (!(nonce instanceof Uint8Array) || nonce.byteLength !== NONCE_BYTES) throw new GalleonError('INVALID_ARGUMENT', `a GCM nonce is ${NONCE_BYTES} bytes, got ${nonce?.byteLength ?? typeof nonce}`)
}

function checkOut (plaintext: Uint8Array, out: Uint8Array): void {
  if (!(out instanceof Uint8Array) || out.byteLength !== plaintext.byteLength + TAG_BYTES) throw new GalleonError('INVALID_ARGUMENT', `the output of a seal is the plaintext length + ${TAG_BYTES} bytes, got ${out?.byteLength ?? typeof out}`)
}

function failed (cause?: unknown): GalleonError {
  return new GalleonError('DECRYPTION_FAILED', 'the data failed authentication: it was altered, moved, replayed, or encrypted under another key; nothing was returned', cause === undefined ? undefined : { cause })
}

// A KeyObject per key: handing node:crypto the raw bytes makes it import them again for every
// block (about 1 µs of a 7-8 µs 4 KiB open).
const keyObjects = new PerKey<KeyObject>((key) => createSecretKey(key))

/** `seal` in terms of a `sealInto`: a new array for ciphertext || tag. */
function sealing (sealInto: AeadCipher['sealInto']): AeadCipher['seal'] {
  return (key, nonce, plaintext, aad) => {
    const out = new Uint8Array(plaintext.byteLength + TAG_BYTES)
    sealInto(key, nonce, plaintext, aad, out)
    return out
  }
}

export const nodeCipher: AeadCipher = {
  name: 'node',
  seal: sealing((key, nonce, plaintext, aad, out) => { nodeCipher.sealInto(key, nonce, plaintext, aad, out) }),
  sealInto (key, nonce, plaintext, aad, out) {
    checkInputs(key, nonce)
    checkOut(plaintext, out)
    const cipher = createCipheriv('aes-256-gcm', keyObjects.get(key), nonce, { authTagLength: TAG_BYTES })
    cipher.setAAD(aad)
    const head = cipher.update(plaintext)
    out.set(head, 0)
    const tail = cipher.final()
    if (tail.byteLength > 0) out.set(tail, head.byteLength)
    out.set(cipher.getAuthTag(), plaintext.byteLength)
  },
  open (key, nonce, sealed, aad) {
    checkInputs(key, nonce)
    if (sealed.byteLength < TAG_BYTES) throw failed()
    const length = sealed.byteLength - TAG_BYTES
    const decipher = createDecipheriv('aes-256-gcm', keyObjects.get(key), nonce, { authTagLength: TAG_BYTES })
    decipher.setAAD(aad)
    decipher.setAuthTag(sealed.subarray(length))
    try {
      const head = decipher.update(sealed.subarray(0, length))
      const tail = decipher.final()
      if (tail.byteLength === 0) return new Uint8Array(head.buffer, head.byteOffset, head.byteLength)
      const out = new Uint8Array(length)
      out.set(head, 0)
      out.set(tail, head.byteLength)
      return out
    } catch (err) {
      throw failed(err)
    }
  }
}

// @noble/ciphers is loaded on first use: its AES module builds its tables as it loads (about 15 ms
// of CPU), and node:crypto or the addon does the work wherever Node.js has AES-256-GCM, so every
// process (a daemon, each CLI call) would pay that for nothing. `require` of this ES module is
// synchronous on the Node.js versions we support (20.19 and newer).
let nobleGcm: typeof NobleGcm | undefined
function gcm (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array): ReturnType<typeof NobleGcm> {
  nobleGcm ??= (createRequire(import.meta.url)('@noble/ciphers/aes.js') as { gcm: typeof NobleGcm }).gcm
  return nobleGcm(key, nonce, aad)
}

export const nobleCipher: AeadCipher = {
  name: 'noble',
  seal (key, nonce, plaintext, aad) {
    checkInputs(key, nonce)
    return gcm(key, nonce, aad).encrypt(plaintext)
  },
  sealInto (key, nonce, plaintext, aad, out) {
    checkOut(plaintext, out)
    out.set(nobleCipher.seal(key, nonce, plaintext, aad))
  },
  open (key, nonce, sealed, aad) {
    checkInputs(key, nonce)
    if (sealed.byteLength < TAG_BYTES) throw failed()
    try {
      return gcm(key, nonce, aad).decrypt(sealed)
    } catch (err) {
      throw failed(err)
    }
  }
}

function addon (): NativeAeadAddon {
  const loaded = nativeAead()
  if (loaded === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `the native AES-GCM addon is not available: ${nativeAeadStatus().reason}; use defaultCipher(), which falls back to node:crypto`)
  return loaded
}

/** The native addon (check nativeAeadStatus().available first: without it every call fails with BACKEND_UNAVAILABLE). */
export const nativeCipher: AeadCipher = {
  name: 'native',
  seal: sealing((key, nonce, plaintext, aad, out) => { nativeCipher.sealInto(key, nonce, plaintext, aad, out) }),
  sealInto (key, nonce, plaintext, aad, out) {
    checkInputs(key, nonce)
    checkOut(plaintext, out)
    const native = addon()
    native.seal(keyHandle(native, key), nonce, aad, plaintext, out)
  },
  open (key, nonce, sealed, aad) {
    checkInputs(key, nonce)
    if (sealed.byteLength < TAG_BYTES) throw failed()
    const out = new Uint8Array(sealed.byteLength - TAG_BYTES)
    const native = addon()
    if (!native.open(keyHandle(native, key), nonce, aad, sealed, out)) throw failed()
    return out
  }
}

/**
 * The native addon when it is built and passes its self-test, else node:crypto when it offers
 * AES-256-GCM (every standard build), else @noble/ciphers.
 */
export function defaultCipher (): AeadCipher {
  if (nativeAead() !== undefined) return nativeCipher
  return getCiphers().includes('aes-256-gcm') ? nodeCipher : nobleCipher
}
