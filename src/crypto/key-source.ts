// Where an instance's key provider comes from: a given provider, a passphrase (its salt in the
// storage directory), the internal provider's master key file, or, in memory, a key of the process.

import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { KeyProvider } from '../drivers.js'
import { GalleonError } from '../errors.js'
import { ExternalKeyProvider, InternalKeyProvider, PassphraseKeyProvider, generateKey, unwrapKey, wrapKey } from './keys.js'
import { PROVIDER_TIMEOUT_MS, withinTimeout } from './provider-timeout.js'
import { backupKeyFingerprint } from './key-records.js'

/** How the instance gets its key provider. */
export interface KeySource {
  /** Storage directory: the internal provider keeps `master.key` there, the passphrase one `passphrase.salt`. */
  readonly storagePath?: string
  readonly keyProvider?: KeyProvider
  readonly passphrase?: string
  /** scrypt cost for a new passphrase (tests use small values). */
  readonly passphraseCost?: number
  /** True for in-memory instances: an internal provider with a key that lives as long as the process. */
  readonly inMemory?: boolean
}

/**
 * Opens the key provider `source` describes (not a given keyProvider: that one is used as it is).
 * `empty`: the storage holds no keys yet, so the internal provider's key file or the passphrase's
 * salt may be created.
 */
export async function openKeyProvider (source: KeySource, empty: boolean): Promise<KeyProvider> {
  const { storagePath, passphrase, inMemory } = source
  if (storagePath !== undefined && passphrase !== undefined) {
    return await PassphraseKeyProvider.open(passphrase, join(storagePath, 'passphrase.salt'), { N: source.passphraseCost }, { create: empty })
  }
  if (storagePath !== undefined) {
    try {
      return await InternalKeyProvider.open(join(storagePath, 'master.key'), { create: empty })
    } catch (err) {
      // No master key, because the keys are protected by a passphrase: say so, rather than
      // send the user looking for a key file that never existed.
      const saltPath = join(storagePath, 'passphrase.salt')
      if (err instanceof GalleonError && err.code === 'DECRYPTION_FAILED' && await stat(saltPath).then(() => true, () => false)) {
        throw new GalleonError('DECRYPTION_FAILED', `the keys of this storage's encrypted volumes are protected by a passphrase (${saltPath} exists); open it with { passphrase }`, { cause: err })
      }
      throw err
    }
  }
  if (inMemory === true) return new MemoryKeyProvider()
  throw new GalleonError('INVALID_ARGUMENT', 'encrypted volumes need a key provider: open with storagePath (the internal provider keeps a master key there), a passphrase, or a keyProvider')
}

/** The internal provider of an in-memory instance: a random KEK that lives as long as the process. */
class MemoryKeyProvider implements KeyProvider {
  readonly name = 'internal'
  readonly keyId: string
  readonly #kek = generateKey()

  constructor () {
    this.keyId = 'memory-' + backupKeyFingerprint(this.#kek).slice(0, 12)
  }

  async wrap (dek: Uint8Array, context: string): Promise<Uint8Array> { return wrapKey(this.#kek, dek, context) }
  async unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array> { return unwrapKey(this.#kek, wrapped, context) }
}

/**
 * `provider` with a time limit on each wrap and unwrap: a KeyProvider object of the application's
 * own (an HSM binding, a KMS client) that never answers would hang open() or createVolume() for
 * good. Our own providers are returned as they are (an ExternalKeyProvider has its own limit).
 */
export function timedKeyProvider (provider: KeyProvider): KeyProvider {
  if (provider instanceof ExternalKeyProvider || provider instanceof InternalKeyProvider || provider instanceof PassphraseKeyProvider || provider instanceof TimedKeyProvider) return provider
  return new TimedKeyProvider(provider)
}

class TimedKeyProvider implements KeyProvider {
  readonly #inner: KeyProvider

  constructor (inner: KeyProvider) {
    this.#inner = inner
  }

  // Read through: a provider may change its keyId when it rotates its key.
  get name (): string { return this.#inner.name }
  get keyId (): string { return this.#inner.keyId }

  async wrap (dek: Uint8Array, context: string): Promise<Uint8Array> {
    return await withinTimeout(async () => await this.#inner.wrap(dek, context), PROVIDER_TIMEOUT_MS)
  }

  async unwrap (wrapped: Uint8Array, context: string): Promise<Uint8Array> {
    return await withinTimeout(async () => await this.#inner.unwrap(wrapped, context), PROVIDER_TIMEOUT_MS)
  }
}
