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
import { chmod, readFile, stat } from 'node:fs/promises'
import { createFileExclusively, writeFileAtomically } from '../durable-files.js'
import { hkdf } from '@noble/hashes/hkdf.js'
import { scryptAsync } from '@noble/hashes/scrypt.js'
import { sha256 } from '@noble/hashes/sha2.js'
import type { KeyProvider } from '../drivers.js'
import { GalleonError, copyBytes, describe, reasonOf } from '../errors.js'
import { KEY_BYTES, NONCE_BYTES, defaultCipher, type AeadCipher } from './cipher.js'
import { MAX_TIMER_MS, PROVIDER_TIMEOUT_MS, withinTimeout } from './provider-timeout.js'

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

/**
 * A provider that holds its KEK in memory and wraps with wrapKey. It may also hold retired KEKs
 * (from earlier rotations): they still unwrap what they wrapped (old backups), but never wrap.
 */
abstract class LocalKeyProvider implements KeyProvider {
  abstract readonly name: string
  readonly keyId: string
  readonly #kek: Uint8Array
  readonly #retired: readonly Uint8Array[]

  protected constructor (kek: Uint8Array, retired: readonly Uint8Array[] = []) {
    this.#kek = kek
    this.#retired = retired
    this.keyId = keyIdOf(kek)
  }

  /** Ids of the retired KEKs still held. */
  get retiredKeyIds (): string[] { return this.#retired.map(keyIdOf) }

  /** For subclasses that rotate: the KEKs held, current first. */
  protected get keks (): Uint8Array[] { return [this.#kek, ...this.#retired] }

  async wrap (dek: Uint8Array, context: string): Promise<Uint8Array> { return wrapKey(this.#kek, dek, context) }

  async unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array> {
    try {
      return unwrapKey(this.#kek, wrapped, context)
    } catch (err) {
      for (const kek of this.#retired) {
        try { return unwrapKey(kek, wrapped, context) } catch {}
      }
      throw err
    }
  }
}

/** Writes `text` to `path` atomically and durably, mode 0600. */
async function replaceSecretFile (path: string, text: string, what: string): Promise<void> {
  try {
    await writeFileAtomically(path, new TextEncoder().encode(text), { temporary: `${path}.${process.pid}.${Date.now()}.tmp`, mode: 0o600, exclusive: true })
  } catch (err) {
    throw new GalleonError('IO_ERROR', `could not replace the ${what} ${path}: ${(err as Error).message}; the old one is unchanged`, { cause: err })
  }
}

/**
 * Creates `path` with mode 0600 holding `text`, durably. Returns false when it already exists
 * (another process created it first: the caller reads that one).
 */
async function createSecretFile (path: string, text: string, what: string): Promise<boolean> {
  try {
    if (!await createFileExclusively(path, new TextEncoder().encode(text), 0o600)) return false
    await chmod(path, 0o600)
    return true
  } catch (err) {
    throw new GalleonError('IO_ERROR', `could not create the ${what} ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * Key provider with a master key file in the storage path. The file holds one 256-bit key per line
 * in hex: the current KEK first, then the ones earlier rotations retired (kept so backups taken
 * before a rotation stay restorable).
 */
export class InternalKeyProvider extends LocalKeyProvider {
  readonly name = 'internal'
  readonly path: string

  private constructor (path: string, keks: Uint8Array[]) {
    super(keks[0] as Uint8Array, keks.slice(1))
    this.path = path
  }

  /**
   * Loads the master key file at `path`, creating it (mode 0600) if it does not exist, unless
   * `create` is false (volumes already depend on it: a new key could not unwrap theirs).
   */
  static async open (path: string, options: { create?: boolean } = {}): Promise<InternalKeyProvider> {
    let text: string | undefined
    try {
      const info = await stat(path)
      if (!info.isFile()) throw new GalleonError('CORRUPTION', `the master key file ${path} is not a regular file; put the file from your key backup there`)
      if ((info.mode & 0o077) !== 0) {
        throw new GalleonError('INVALID_ARGUMENT', `the master key file ${path} can be read by group or others (mode ${(info.mode & 0o777).toString(8)}); run chmod 600 ${path}`)
      }
      text = await readFile(path, 'utf8')
    } catch (err) {
      if (err instanceof GalleonError) throw err
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new GalleonError('IO_ERROR', `could not read the master key file ${path}: ${(err as Error).message}`, { cause: err })
    }
    if (text === undefined) {
      if (options.create === false) {
        throw new GalleonError('DECRYPTION_FAILED', `the master key file ${path} is missing, and encrypted volumes need it; restore it from your key backup (a new key cannot read their data)`)
      }
      const kek = generateKey()
      if (!await createSecretFile(path, Buffer.from(kek).toString('hex') + '\n', 'master key file')) return await InternalKeyProvider.open(path, options)
      return new InternalKeyProvider(path, [kek])
    }
    const lines = text.split('\n').map((line) => line.trim()).filter((line) => line.length > 0)
    if (lines.length === 0 || !lines.every((line) => /^[0-9a-f]{64}$/.test(line))) {
      throw new GalleonError('CORRUPTION', `the master key file ${path} does not hold 256-bit hex keys, one per line; restore it from your key backup`)
    }
    return new InternalKeyProvider(path, lines.map((line) => new Uint8Array(Buffer.from(line, 'hex'))))
  }

  /**
   * Makes a new master key current, atomically: the file afterwards holds the new key, then every
   * older one (retired). Returns the provider for the new file.
   */
  async rotate (): Promise<InternalKeyProvider> {
    const keks = [generateKey(), ...this.keks]
    await replaceSecretFile(this.path, keks.map((kek) => Buffer.from(kek).toString('hex')).join('\n') + '\n', 'master key file')
    return new InternalKeyProvider(this.path, keks)
  }
}

interface SaltRecord {
  salt: string
  N: number
  check: string
  /** KEKs of earlier passphrases, each wrapped under this passphrase's KEK (hex). */
  retired?: string[]
}

/**
 * Key provider with a KEK derived from a passphrase. Changing the passphrase keeps the earlier KEKs
 * in the salt file, wrapped under the new one, so backups taken before stay restorable.
 */
export class PassphraseKeyProvider extends LocalKeyProvider {
  readonly name = 'passphrase'
  readonly saltPath: string
  readonly #N: number
  /** The salt file's record for this KEK, as stored. */
  readonly #record: SaltRecord

  private constructor (saltPath: string, N: number, kek: Uint8Array, retired: Uint8Array[], record: SaltRecord) {
    super(kek, retired)
    this.saltPath = saltPath
    this.#N = N
    this.#record = record
  }

  /**
   * Derives the KEK from `passphrase` with the salt kept at `saltPath` (created on first use, unless
   * `create` is false: keys already depend on it). A wrong passphrase fails with DECRYPTION_FAILED
   * saying so.
   */
  static async open (passphrase: string, saltPath: string, cost: { N?: number } = {}, options: { create?: boolean } = {}): Promise<PassphraseKeyProvider> {
    checkPassphrase(passphrase)
    const N = cost.N ?? 2 ** 15
    if (!validCost(N)) throw new GalleonError('INVALID_ARGUMENT', `the passphrase cost (scrypt N) must be a power of 2 from 2 to ${MAX_COST}, got ${describe(cost.N)}`)
    let stored: SaltRecord | undefined
    try {
      stored = JSON.parse(await readFile(saltPath, 'utf8'))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new GalleonError('CORRUPTION', `the passphrase salt file ${saltPath} cannot be read: ${(err as Error).message}`, { cause: err })
    }
    if (stored === undefined) {
      if (options.create === false) {
        throw new GalleonError('DECRYPTION_FAILED', `the passphrase salt file ${saltPath} is missing, and encrypted volumes need it; restore it from a backup of the storage path (a new salt cannot read their keys), or open with the key provider this storage was set up with`)
      }
      const { record, kek } = await newSaltRecord(passphrase, N)
      if (!await createSecretFile(saltPath, JSON.stringify(record) + '\n', 'passphrase salt file')) return await PassphraseKeyProvider.open(passphrase, saltPath, cost, options)
      return new PassphraseKeyProvider(saltPath, N, kek, [], record)
    }
    // Every field is checked before use: a damaged file must say so, not pass for a wrong
    // passphrase (a salt or check value cut short) or fail inside scrypt (a cost changed).
    const hex = (value: unknown, bytes: number | 'any'): boolean => typeof value === 'string' && /^(?:[0-9a-f]{2})+$/.test(value) && (bytes === 'any' ? value.length >= 32 : value.length === bytes * 2)
    if (stored === null || typeof stored !== 'object' || !hex(stored.salt, 'any') || !hex(stored.check, 16) || !validCost(stored.N) ||
        (stored.retired !== undefined && !(Array.isArray(stored.retired) && stored.retired.every((wrapped) => hex(wrapped, WRAPPED_BYTES))))) {
      throw new GalleonError('CORRUPTION', `the passphrase salt file ${saltPath} is damaged; restore it from a backup of the storage path`)
    }
    const kek = await scryptAsync(passphrase, new Uint8Array(Buffer.from(stored.salt, 'hex')), { N: stored.N, r: 8, p: 1, dkLen: KEY_BYTES })
    const expected = Buffer.from(stored.check, 'hex')
    const actual = Buffer.from(checkValue(kek), 'hex')
    if (expected.byteLength !== actual.byteLength || !timingSafeEqual(expected, actual)) {
      throw new GalleonError('DECRYPTION_FAILED', 'wrong passphrase: it does not match the one this storage was set up with (if a passphrase change was cut short, the new passphrase is the one that opens it)')
    }
    let retired: Uint8Array[]
    try {
      retired = (stored.retired ?? []).map((wrapped) => unwrapKey(kek, new Uint8Array(Buffer.from(wrapped, 'hex')), 'retired-kek'))
    } catch (err) {
      // The passphrase matched its check value, so a retired key that does not open is damage.
      throw new GalleonError('CORRUPTION', `the passphrase salt file ${saltPath} is damaged: the passphrase is right, but a key of an earlier passphrase kept in it does not open; restore the file from a backup of the storage path`, { cause: err })
    }
    return new PassphraseKeyProvider(saltPath, stored.N, kek, retired, stored)
  }

  /** Switches to a new passphrase, atomically; the old KEK is kept, retired. Returns the new provider. */
  async change (passphrase: string): Promise<PassphraseKeyProvider> {
    checkPassphrase(passphrase)
    const { record, kek } = await newSaltRecord(passphrase, this.#N)
    const retired = this.keks
    record.retired = retired.map((old) => Buffer.from(wrapKey(kek, old, 'retired-kek')).toString('hex'))
    await replaceSecretFile(this.saltPath, JSON.stringify(record) + '\n', 'passphrase salt file')
    return new PassphraseKeyProvider(this.saltPath, this.#N, kek, retired, record)
  }

  /**
   * Undoes change() to `changed` when the re-wrap after it failed: this (the earlier) passphrase
   * opens the storage again. `changed`'s KEK stays in the file, retired, in case a key was wrapped
   * under it after all (a write reported as failed that reached the disk).
   */
  async reinstate (changed: PassphraseKeyProvider): Promise<PassphraseKeyProvider> {
    const [kek, ...retired] = this.keks as [Uint8Array, ...Uint8Array[]]
    const keep = [...retired, ...changed.keks.slice(0, 1)]
    const record: SaltRecord = { ...this.#record, retired: keep.map((old) => Buffer.from(wrapKey(kek, old, 'retired-kek')).toString('hex')) }
    await replaceSecretFile(this.saltPath, JSON.stringify(record) + '\n', 'passphrase salt file')
    return new PassphraseKeyProvider(this.saltPath, this.#N, kek, keep, record)
  }
}

/** Largest scrypt N that fits (with r = 8) under the 1 GiB memory limit of the scrypt we use. */
const MAX_COST = 2 ** 19

function validCost (N: unknown): N is number {
  return typeof N === 'number' && Number.isSafeInteger(N) && N >= 2 && N <= MAX_COST && (N & (N - 1)) === 0
}

function checkPassphrase (passphrase: unknown): asserts passphrase is string {
  if (typeof passphrase !== 'string' || passphrase.length < 8) throw new GalleonError('INVALID_ARGUMENT', 'a passphrase must be a string of at least 8 characters')
}

async function newSaltRecord (passphrase: string, N: number): Promise<{ record: SaltRecord, kek: Uint8Array }> {
  const salt = new Uint8Array(randomBytes(16))
  const kek = await scryptAsync(passphrase, salt, { N, r: 8, p: 1, dkLen: KEY_BYTES })
  return { record: { salt: Buffer.from(salt).toString('hex'), N, check: checkValue(kek) }, kek }
}

function checkValue (kek: Uint8Array): string {
  return Buffer.from(hkdf(sha256, kek, undefined, new TextEncoder().encode('galleonfs passphrase check'), 16)).toString('hex')
}

/**
 * `key` wrapped by `provider` (base64), once the provider has given it back: a wrap it cannot undo
 * (a KMS role allowed to encrypt but not to decrypt, a faulty wrap) would make whatever the key
 * protects unreadable from the next open on, and a KEK rotation would have replaced the only
 * wraps that worked.
 */
export async function wrapChecked (provider: KeyProvider, key: Uint8Array, context: string): Promise<string> {
  let wrapped: Uint8Array
  try {
    // A copy: a provider may wipe the plaintext key it was given once it has wrapped it.
    wrapped = await provider.wrap(copyBytes(key), context)
  } catch (err) {
    if (err instanceof GalleonError && err.code === 'BACKEND_UNAVAILABLE') throw err
    throw new GalleonError('BACKEND_UNAVAILABLE', `the ${provider.name} key provider (key ${provider.keyId}) could not wrap the key for ${context}, so nothing was stored: ${reasonOf(err)}`, { cause: err })
  }
  if (!(wrapped instanceof Uint8Array) || wrapped.byteLength === 0) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `the ${provider.name} key provider (key ${provider.keyId}) wrapped the key for ${context} into ${describe(wrapped)}, not bytes, so nothing was stored`)
  }
  // Ours from here on: a provider may reuse the array it answered with (its next answer overwriting it).
  wrapped = copyBytes(wrapped)
  let back: Uint8Array
  try {
    back = await provider.unwrap(copyBytes(wrapped), context)
  } catch (err) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `the ${provider.name} key provider (key ${provider.keyId}) cannot unwrap the key it just wrapped for ${context}, so nothing was stored: check that it may decrypt as well as encrypt (${reasonOf(err)})`, { cause: err })
  }
  if (!(back instanceof Uint8Array) || back.byteLength !== key.byteLength || !timingSafeEqual(back, key)) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `the ${provider.name} key provider (key ${provider.keyId}) unwrapped the key it just wrapped for ${context} to other bytes, so nothing was stored; its wrap and unwrap do not match`)
  }
  return Buffer.from(wrapped).toString('base64')
}

/**
 * What to do when `provider` cannot open keys this storage holds (or holds keys it cannot open):
 * put back the key source they were wrapped with, named, since a master key file or salt file from
 * another backup or another storage looks just as valid as the right one.
 */
export function keySourceFix (provider: KeyProvider): string {
  if (provider instanceof InternalKeyProvider) {
    return `put back the master key file ${provider.path} these keys were wrapped with (from your key backup: one restored from another backup, or copied from another storage, holds another key), then open GalleonFS again; if the keys were moved to a KMS (rotateKeyEncryptionKey with a keyProvider), open with that keyProvider instead`
  }
  if (provider instanceof PassphraseKeyProvider) {
    return `put back this storage's own passphrase salt file ${provider.saltPath} (from a backup of the storage path: the salt file of another storage, or an older copy, derives another key from the same passphrase), then open GalleonFS again; if the keys were moved to a KMS (rotateKeyEncryptionKey with a keyProvider), open with that keyProvider instead`
  }
  return 'open GalleonFS with the key provider (and KMS key) these keys were wrapped with; if its KMS did not answer, try again once it does'
}

/** How long an ExternalKeyProvider's wrap or unwrap may take by default. */
export const EXTERNAL_TIMEOUT_MS = PROVIDER_TIMEOUT_MS
export { MAX_TIMER_MS }

/** Key provider whose wrap and unwrap are functions the application supplies (a KMS, an HSM). */
export class ExternalKeyProvider implements KeyProvider {
  readonly name = 'external'
  readonly keyId: string
  readonly #wrap: (dek: Uint8Array, context: string) => Promise<Uint8Array>
  readonly #unwrap: (wrapped: Uint8Array, context: string) => Promise<Uint8Array>
  readonly #timeoutMs: number

  /**
   * `timeoutMs` (default 30 s): how long a wrap or unwrap may take before it fails, so a KMS client
   * that hangs cannot hang open() or createVolume().
   */
  constructor (options: { keyId: string, wrap: (dek: Uint8Array, context: string) => Promise<Uint8Array>, unwrap: (wrapped: Uint8Array, context: string) => Promise<Uint8Array>, timeoutMs?: number }) {
    if (options === null || typeof options !== 'object' || typeof options.wrap !== 'function' || typeof options.unwrap !== 'function' || typeof options.keyId !== 'string' || options.keyId.length === 0) {
      throw new GalleonError('INVALID_ARGUMENT', `an external key provider needs { keyId, wrap(dek, context), unwrap(wrapped, context) }, got ${describe(options)}`)
    }
    const timeoutMs = options.timeoutMs ?? EXTERNAL_TIMEOUT_MS
    if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new GalleonError('INVALID_ARGUMENT', `an external key provider's timeoutMs must be a positive number of milliseconds, got ${describe(options.timeoutMs)}`)
    this.keyId = options.keyId
    this.#wrap = options.wrap
    this.#unwrap = options.unwrap
    // Node's timers take at most 2^31 - 1 ms (about 24.8 days); longer ones would fire at once.
    this.#timeoutMs = Math.min(timeoutMs, MAX_TIMER_MS)
  }

  /** `call`'s result, or a rejection once `timeoutMs` passed without one. */
  async #within<T> (call: () => Promise<T>): Promise<T> {
    return await withinTimeout(call, this.#timeoutMs)
  }

  async wrap (dek: Uint8Array, context: string): Promise<Uint8Array> {
    let wrapped: unknown
    try {
      wrapped = await this.#within(async () => await this.#wrap(dek, context))
    } catch (err) {
      throw new GalleonError('BACKEND_UNAVAILABLE', `the external key provider could not wrap the key of ${context}: ${reasonOf(err)}`, { cause: err })
    }
    if (!(wrapped instanceof Uint8Array) || wrapped.byteLength === 0) throw new GalleonError('BACKEND_UNAVAILABLE', `the external key provider's wrap() returned ${describe(wrapped)} for ${context}, not bytes`)
    return wrapped
  }

  async unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array> {
    let dek: unknown
    try {
      dek = await this.#within(async () => await this.#unwrap(wrapped, context))
    } catch (err) {
      throw new GalleonError('DECRYPTION_FAILED', `the external key provider could not unwrap the key of ${context}: ${reasonOf(err)}`, { cause: err })
    }
    if (!(dek instanceof Uint8Array) || dek.byteLength !== KEY_BYTES) throw new GalleonError('DECRYPTION_FAILED', `the external key provider returned ${describe(dek)} for ${context}, not a ${KEY_BYTES}-byte key`)
    return dek
  }
}
