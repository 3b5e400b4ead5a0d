// Key rotation of the facade: a volume's data key (its blocks re-encrypted in the background) and
// the key-encryption key that wraps every data key.

import { GalleonError, describe, errorCode } from '../errors.js'
import type { KeyProvider } from '../drivers.js'
import type { VolumeEncryption } from '../crypto/key-manager.js'
import { InternalKeyProvider, PassphraseKeyProvider } from '../crypto/keys.js'
import type { VolumeBlocks } from '../engine/engine.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { toVolume } from './records.js'
import type { VolumeRef } from './refs.js'

/** Data-key and key-encryption-key rotations (GalleonFS checks the caller first). */
export class KeyRotations {
  readonly #host: FacadeHost
  /** Data-key rotations running in the background, by volume id. */
  readonly running = new Map<string, Promise<void>>()

  constructor (host: FacadeHost) {
    this.#host = host
  }

  /** The work of GalleonFS.rotateVolumeKey, once the caller is checked. */
  async rotateVolumeKey (vol: VolumeRef, options: { wait?: boolean }): Promise<VolumeEncryption> {
    const record = this.#host.catalog.resolve(vol)
    if (record.encrypted !== true) throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is not encrypted, so it has no data key to rotate`)
    const volume = this.#host.ioVolume(record)
    if (volume.cipher?.unavailable !== undefined) throw volume.cipher.unavailable
    if (this.#host.migrations.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is being migrated; rotate its key once the migration ends (a move to an encrypting class gives it a new data key anyway)`)
    const previous = this.running.get(record.id)
    if (previous !== undefined) {
      if (this.#host.keys.rotation(record.id) !== undefined) {
        throw new GalleonError('BUSY', `volume ${record.name} is already re-encrypting with a new key; wait for it (getVolumeEncryption shows the progress)`)
      }
      // The previous rotation has re-encrypted everything (getVolumeEncryption says so) and is
      // retiring the old key: a new one starts once that is done.
      await previous
      if (this.running.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is already re-encrypting with a new key; wait for it (getVolumeEncryption shows the progress)`)
    }
    // A rotation that stopped (an error was reported) is resumed, not started over.
    if (this.#host.keys.rotation(record.id) === undefined) await this.#host.keys.beginRotation(record.id, volume.cipher as NonNullable<VolumeBlocks['cipher']>)
    const running = this.startRotation(record)
    if (options?.wait === true) await running
    const state = this.#host.keys.describe(record.id, volume.cipher)
    if (options?.wait === true && state.rotation !== undefined) throw new GalleonError('IO_ERROR', `the re-encryption of volume ${record.name} stopped before it finished; it resumes at the next open`)
    return state
  }

  /** Runs (or resumes) the background re-encryption of a volume after a DEK rotation. */
  startRotation (record: VolumeRecord): Promise<void> {
    const existing = this.running.get(record.id)
    if (existing !== undefined) return existing
    // Background work of the instance: it does not run as the caller that started it.
    const run = this.#host.context.exit(async () => {
      const volume = this.#host.volumeBlocks(record)
      const cipher = volume.cipher
      const rotation = this.#host.keys.rotation(record.id)
      if (cipher === undefined || rotation === undefined) return
      try {
        await this.#host.engine.reseal(volume, rotation.cursor, async (next) => {
          await this.#host.keys.advanceRotation(record.id, next)
          if (this.#host.closed) throw new GalleonError('CANCELLED', 'the instance is closing; the re-encryption resumes at the next open')
        })
        const retired = await this.#host.keys.finishRotation(record.id)
        // Reads that fetched a block before it was re-sealed may still open it with the old key:
        // let those in flight finish (new ones wait a moment), then forget the old keys.
        const open = await volume.closeGate()
        try {
          for (const version of retired) cipher.dropKey(version)
        } finally {
          open()
        }
        this.#host.emit('volume:key-rotated', toVolume(this.#host.catalog.resolve(record.id)), this.#host.keys.describe(record.id, cipher).keyVersion as number)
      } catch (err) {
        if (this.#host.closed || (err instanceof GalleonError && (err.code === 'CANCELLED' || err.code === 'VOLUME_NOT_FOUND'))) return
        this.#host.emit('io:error', { volumeId: record.id, volumeName: record.name, operation: 'write', code: errorCode(err), message: `re-encryption with the new data key stopped (it resumes at the next open): ${(err as Error)?.message ?? String(err)}` })
      } finally {
        this.running.delete(record.id)
      }
    })
    this.running.set(record.id, run)
    return run
  }

  /** Rotates the key-encryption key (see GalleonFS.rotateKeyEncryptionKey); in the admin queue. */
  async rotateKeyEncryptionKey (options: { keyProvider?: KeyProvider, passphrase?: string }): Promise<{ keyId: string, provider: string, rewrapped: number }> {
    const current = await this.#host.keys.provider()
    let next: KeyProvider
    if (options.keyProvider !== undefined) {
      const provider = options.keyProvider
      if (provider === null || typeof provider !== 'object' || typeof provider.wrap !== 'function' || typeof provider.unwrap !== 'function' || typeof provider.keyId !== 'string' || typeof provider.name !== 'string') {
        throw new GalleonError('INVALID_ARGUMENT', `keyProvider must implement { name, keyId, wrap(dek, context), unwrap(wrapped, context) }, got ${describe(provider)}`)
      }
      next = provider
    } else if (options.passphrase !== undefined) {
      if (!(current instanceof PassphraseKeyProvider)) throw new GalleonError('INVALID_ARGUMENT', `this instance uses the ${current.name} key provider, not a passphrase; pass { keyProvider } to move its keys elsewhere`)
      next = await current.change(options.passphrase)
    } else if (current instanceof InternalKeyProvider) {
      next = await current.rotate()
    } else {
      throw new GalleonError('INVALID_ARGUMENT', `the ${current.name} key provider cannot make a new key by itself; pass { keyProvider } (or { passphrase } for the passphrase provider)`)
    }
    let rewrapped: number
    try {
      rewrapped = await this.#host.keys.rewrapAll(next)
    } catch (err) {
      // The new salt file is in place already (so that a crash mid-way leaves keys it can open):
      // put the old passphrase back, or say plainly that the new one is now the one that opens.
      if (!(current instanceof PassphraseKeyProvider) || next === current) throw err
      const reason = (err as Error)?.message ?? String(err)
      try {
        await current.reinstate(next as PassphraseKeyProvider)
      } catch (undo) {
        throw new GalleonError(errorCode(err), `the passphrase change failed while re-wrapping the keys (${reason}), and the old salt file could not be put back (${(undo as Error).message}): the storage now opens with the NEW passphrase; run the change again to finish it`, { cause: err })
      }
      throw new GalleonError(errorCode(err), `the passphrase change failed while re-wrapping the keys, so the old passphrase stays: ${reason}`, { cause: err })
    }
    return { keyId: next.keyId, provider: next.name, rewrapped }
  }
}
