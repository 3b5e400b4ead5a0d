// Data keys and the key providers that wrap them. A DEK is 32 random bytes; wrapping seals it with
// AES-256-GCM under a key-encryption key (KEK), a fresh random nonce each time (a KEK wraps few
// keys, far below the 2^32 random-nonce limit), and the context (volume id) as associated data.
// Wrapped form: version (1) | nonce (12) | sealed DEK (32 + 16 tag).
//
// Providers:
//   internal    a master key file (32 random bytes, hex) created with mode 0600 in the storage path;
//               a file readable by group or others is refused, like ssh does with private keys.
//   passphrase  a KEK derived with scrypt (N = 2^15, r = 8, p = 1) from a passphrase and a random
//               salt kept in a small file with a check value, so a wrong passphrase is reported as
//               such at open, before any data is touched.
//   external    wrap/unwrap by functions the application supplies (a KMS client, an HSM).

import { randomBytes, timingSafeEqual } from 'node:crypto'
import { chmod, open, readFile, stat } from 'node:fs/promises'
import { hkdf } from '@noble/hashes/hkdf.js'
import { scryptAsync } from '@noble/hashes/scrypt.js'
import { sha256 } from '@noble/hashes/sha2.js'
import type { KeyProvider } from '../drivers.js'
import { GalleonError, describe } from '../errors.js'
import { KEY_BYTES, NONCE_BYTES, defaultCipher, type AeadCipher } from './cipher.js'

const WRAP_VERSION = 1
const WRAPPED_BYTES = 1 + NONCE_BYTES + KEY_BYTES + 16

/** A fresh random data key. */
export function generateKey (): Uint8Array {
  return new Uint8Array(randomBytes(KEY_BYTES))
}

/** Seals `dek` under `kek`, bound to `context`. */
export function wrapKey (kek: Uint8Array, dek: Uint8Array, context: string, cipher: AeadCipher = defaultCipher()): Uint8Array {
  if (!(dek instanceof Uint8Array) || dek.byteLength !== KEY_BYTES) throw new GalleonError('INVALID_ARGUMENT', `a data key is ${KEY_BYTES} bytes, got ${describe(dek)}`)
  const nonce = new Uint8Array(randomBytes(NONCE_BYTES))
  const sealed = cipher.seal(kek, nonce, dek, contextBytes(context))
  const out = new Uint8Array(WRAPPED_BYTES)
  out[0] = WRAP_VERSION
  out.set(nonce, 1)
  out.set(sealed, 1 + NONCE_BYTES)
  return out
}

/** Opens what wrapKey returned; DECRYPTION_FAILED under another KEK or context. */
export function unwrapKey (kek: Uint8Array, wrapped: Uint8Array, context: string, cipher: AeadCipher = defaultCipher()): Uint8Array {
  if (!(wrapped instanceof Uint8Array) || wrapped.byteLength !== WRAPPED_BYTES || wrapped[0] !== WRAP_VERSION) {
    throw new GalleonError('DECRYPTION_FAILED', `a wrapped key is ${WRAPPED_BYTES} bytes of format ${WRAP_VERSION}; this one is not (damaged metadata?)`)
  }
  return cipher.open(kek, wrapped.subarray(1, 1 + NONCE_BYTES), wrapped.subarray(1 + NONCE_BYTES), contextBytes(context))
}

function contextBytes (context: string): Uint8Array {
  if (typeof context !== 'string' || context.length === 0) throw new GalleonError('INVALID_ARGUMENT', `a key context is a non-empty string (a volume id), got ${describe(context)}`)
  return new TextEncoder().encode(`galleonfs-dek:${context}`)
}

/** Short, stable id of a KEK (not secret: a hash of a derived value, not of the key itself). */
function keyIdOf (kek: Uint8Array): string {
  return Buffer.from(sha256(hkdf(sha256, kek, undefined, new TextEncoder().encode('galleonfs key id'), 32))).toString('hex').slice(0, 16)
}

/** A provider that holds its KEK in memory and wraps with wrapKey. */
abstract class LocalKeyProvider implements KeyProvider {
  abstract readonly name: string
  readonly keyId: string
  readonly #kek: Uint8Array

  protected constructor (kek: Uint8Array) {
    this.#kek = kek
    this.keyId = keyIdOf(kek)
  }

  async wrap (dek: Uint8Array, context: string): Promise<Uint8Array> { return wrapKey(this.#kek, dek, context) }
  async unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array> { return unwrapKey(this.#kek, wrapped, context) }
}

/**
 * Creates `path` with mode 0600 holding `text`, durably. Returns false when it already exists
 * (another process created it first: the caller reads that one).
 */
async function createSecretFile (path: string, text: string, what: string): Promise<boolean> {
  try {
    const handle = await open(path, 'wx', 0o600)
    try {
      await handle.writeFile(text)
      await handle.datasync()
    } finally {
      await handle.close()
    }
    await chmod(path, 0o600)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw new GalleonError('IO_ERROR', `could not create the ${what} ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/** Key provider with a master key file in the storage path. */
export class InternalKeyProvider extends LocalKeyProvider {
  readonly name = 'internal'

  /** Loads the master key file at `path`, creating it (mode 0600) if it does not exist. */
  static async open (path: string): Promise<InternalKeyProvider> {
    let text: string | undefined
    try {
      const info = await stat(path)
      if ((info.mode & 0o077) !== 0) {
        throw new GalleonError('INVALID_ARGUMENT', `the master key file ${path} can be read by group or others (mode ${(info.mode & 0o777).toString(8)}); run chmod 600 ${path}`)
      }
      text = await readFile(path, 'utf8')
    } catch (err) {
      if (err instanceof GalleonError) throw err
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new GalleonError('IO_ERROR', `could not read the master key file ${path}: ${(err as Error).message}`, { cause: err })
    }
    if (text === undefined) {
      const kek = generateKey()
      if (!await createSecretFile(path, Buffer.from(kek).toString('hex') + '\n', 'master key file')) return await InternalKeyProvider.open(path)
      return new InternalKeyProvider(kek)
    }
    const hex = text.trim()
    if (!/^[0-9a-f]{64}$/.test(hex)) throw new GalleonError('CORRUPTION', `the master key file ${path} does not hold a 256-bit hex key; restore it from your key backup`)
    return new InternalKeyProvider(new Uint8Array(Buffer.from(hex, 'hex')))
  }
}

/** Key provider with a KEK derived from a passphrase. */
export class PassphraseKeyProvider extends LocalKeyProvider {
  readonly name = 'passphrase'

  /**
   * Derives the KEK from `passphrase` with the salt kept at `saltPath` (created on first use).
   * A wrong passphrase fails with DECRYPTION_FAILED saying so.
   */
  static async open (passphrase: string, saltPath: string, cost: { N?: number } = {}): Promise<PassphraseKeyProvider> {
    if (typeof passphrase !== 'string' || passphrase.length < 8) throw new GalleonError('INVALID_ARGUMENT', 'a passphrase must be a string of at least 8 characters')
    const N = cost.N ?? 2 ** 15
    let stored: { salt: string, N: number, check: string } | undefined
    try {
      stored = JSON.parse(await readFile(saltPath, 'utf8'))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new GalleonError('CORRUPTION', `the passphrase salt file ${saltPath} cannot be read: ${(err as Error).message}`, { cause: err })
    }
    if (stored === undefined) {
      const salt = new Uint8Array(randomBytes(16))
      const kek = await scryptAsync(passphrase, salt, { N, r: 8, p: 1, dkLen: KEY_BYTES })
      const record = { salt: Buffer.from(salt).toString('hex'), N, check: checkValue(kek) }
      if (!await createSecretFile(saltPath, JSON.stringify(record) + '\n', 'passphrase salt file')) return await PassphraseKeyProvider.open(passphrase, saltPath, cost)
      return new PassphraseKeyProvider(kek)
    }
    if (typeof stored?.salt !== 'string' || typeof stored.check !== 'string' || !Number.isSafeInteger(stored.N)) {
      throw new GalleonError('CORRUPTION', `the passphrase salt file ${saltPath} is damaged; restore it from a backup of the storage path`)
    }
    const kek = await scryptAsync(passphrase, new Uint8Array(Buffer.from(stored.salt, 'hex')), { N: stored.N, r: 8, p: 1, dkLen: KEY_BYTES })
    const expected = Buffer.from(stored.check, 'hex')
    const actual = Buffer.from(checkValue(kek), 'hex')
    if (expected.byteLength !== actual.byteLength || !timingSafeEqual(expected, actual)) {
      throw new GalleonError('DECRYPTION_FAILED', 'wrong passphrase: it does not match the one this storage was set up with')
    }
    return new PassphraseKeyProvider(kek)
  }
}

function checkValue (kek: Uint8Array): string {
  return Buffer.from(hkdf(sha256, kek, undefined, new TextEncoder().encode('galleonfs passphrase check'), 16)).toString('hex')
}

/** Key provider whose wrap and unwrap are functions the application supplies (a KMS, an HSM). */
export class ExternalKeyProvider implements KeyProvider {
  readonly name = 'external'
  readonly keyId: string
  readonly #wrap: (dek: Uint8Array, context: string) => Promise<Uint8Array>
  readonly #unwrap: (wrapped: Uint8Array, context: string) => Promise<Uint8Array>

  constructor (options: { keyId: string, wrap: (dek: Uint8Array, context: string) => Promise<Uint8Array>, unwrap: (wrapped: Uint8Array, context: string) => Promise<Uint8Array> }) {
    if (options === null || typeof options !== 'object' || typeof options.wrap !== 'function' || typeof options.unwrap !== 'function' || typeof options.keyId !== 'string' || options.keyId.length === 0) {
      throw new GalleonError('INVALID_ARGUMENT', `an external key provider needs { keyId, wrap(dek, context), unwrap(wrapped, context) }, got ${describe(options)}`)
    }
    this.keyId = options.keyId
    this.#wrap = options.wrap
    this.#unwrap = options.unwrap
  }

  async wrap (dek: Uint8Array, context: string): Promise<Uint8Array> {
    const wrapped = await this.#wrap(dek, context)
    if (!(wrapped instanceof Uint8Array) || wrapped.byteLength === 0) throw new GalleonError('INVALID_ARGUMENT', `the external key provider's wrap() must return bytes, got ${describe(wrapped)}`)
    return wrapped
  }

  async unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array> {
    let dek: unknown
    try {
      dek = await this.#unwrap(wrapped, context)
    } catch (err) {
      throw new GalleonError('DECRYPTION_FAILED', `the external key provider could not unwrap the key of ${context}: ${(err as Error)?.message ?? String(err)}`, { cause: err })
    }
    if (!(dek instanceof Uint8Array) || dek.byteLength !== KEY_BYTES) throw new GalleonError('DECRYPTION_FAILED', `the external key provider returned ${describe(dek)} for ${context}, not a ${KEY_BYTES}-byte key`)
    return dek
  }
}
