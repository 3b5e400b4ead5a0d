// Key rotation of the facade: a volume's data key (its blocks re-encrypted in the background) and
// the key-encryption key that wraps every data key.

import { GalleonError, describe, errorCode } from '../errors.js'
import type { KeyProvider } from '../drivers.js'
import type { VolumeEncryption } from '../crypto/key-manager.js'
import { InternalKeyProvider, PassphraseKeyProvider } from '../crypto/keys.js'
import { timedKeyProvider } from '../crypto/key-source.js'
import type { VolumeBlocks } from '../engine/engine.js'
import { replicatorFor } from '../engine/replicator.js'
import { VolumeState, WriteConcern } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import type { VolumeSpec } from '../replication/records.js'
import { toVolume } from './records.js'
import { hereOrNext, keptTokens, newCall, primaryCall } from './forwarded-calls.js'
import type { VolumeRef } from './refs.js'

/** Thrown by a re-seal's progress when a newer rotation began: the re-seal starts over. */
const RESTART = Symbol('restart')

/** Data-key and key-encryption-key rotations (GalleonFS checks the caller first). */
export class KeyRotations {
  readonly #host: FacadeHost
  /** Data-key rotations running in the background, by volume id. */
  readonly running = new Map<string, Promise<void>>()
  /**
   * Volumes whose rotation passed its checks and is being recorded (a replicated volume's cluster
   * record counting it, the new key stored) but has not begun yet, with how many calls do so: a
   * migration or class change checking meanwhile is refused, as it is once the rotation runs.
   */
  readonly #startingCalls = new Map<string, number>()
  /** Whether a rotation of the volume is being recorded now (see #startingCalls). */
  readonly starting = { has: (volumeId: string): boolean => this.#startingCalls.has(volumeId) }

  constructor (host: FacadeHost) {
    this.#host = host
  }

  /**
   * The work of GalleonFS.rotateVolumeKey, once the caller is checked. A replicated volume's key
   * is rotated on its primary (other nodes forward the call), and every copy rotates its own.
   */
  async rotateVolumeKey (vol: VolumeRef, options: { wait?: boolean }): Promise<VolumeEncryption> {
    const record = this.#host.catalog.resolve(vol)
    if (record.encrypted !== true) throw new GalleonError('INVALID_ARGUMENT', `volume ${record.name} is not encrypted, so it has no data key to rotate`)
    // A move of it from this node (a 1-copy volume turns replicated for it): refused before the
    // rotation goes to a primary the move may not have recorded yet.
    this.#refuseNodeMove(record)
    if (record.replication !== undefined) return await this.#rotateReplicated(record, options)
    // Marked from its checks on: a migration checking while the new key is stored (before the
    // rotation runs) is refused, instead of starting and replacing the keys under the rotation.
    const volume = await this.#starting(record.id, async () => {
      const volume = await this.#begin(record)
      // A rotation that stopped (an error was reported) is resumed, not started over.
      if (this.#host.keys.rotation(record.id) === undefined) await this.#host.keys.beginRotation(record.id, volume.cipher as NonNullable<VolumeBlocks['cipher']>)
      return volume
    })
    return await this.#run(record, volume, options)
  }

  /** The checks of a rotation and the wait for one that is retiring its old key; returns the volume's engine state. */
  async #begin (record: VolumeRecord): Promise<VolumeBlocks> {
    const volume = this.#host.ioVolume(record)
    if (volume.cipher?.unavailable !== undefined) throw volume.cipher.unavailable
    if (this.#host.migrations.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is being migrated; rotate its key once the migration ends (a move to an encrypting class gives it a new data key anyway)`)
    this.#refuseNodeMove(record)
    this.#refuseClassChange(record)
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
    return volume
  }

  /**
   * BUSY while this node moves a volume that had one copy, here, to another node: the rotation
   * re-encrypts that copy alone, and the move deletes it (see ClusterMigrations.#migrateToNode).
   */
  #refuseNodeMove (record: VolumeRecord): void {
    if (this.#host.nodeMoves.get(record.id)?.fromLocal === true) throw new GalleonError('BUSY', `volume ${record.name} is moving to another node (migrateVolume with { node }); rotate its key once the move ends`)
  }

  /**
   * BUSY while the replicated volume changes storage class (see FacadeHost.changingClass; `spec`:
   * the cluster's record about to be written): this node's copy could not convert while it
   * re-encrypts, and the class change would give up with the copies half converted.
   */
  #refuseClassChange (record: VolumeRecord, spec?: VolumeSpec): void {
    if (record.replication === undefined) return
    const to = this.#host.changingClass(record.id, spec)
    if (to === undefined) return
    throw new GalleonError('BUSY', `volume ${record.name} is changing to storage class ${to} (its copy on node ${this.#host.cluster?.nodeId ?? ''} has not converted yet); rotate its key once that is done. A class change that gave up is finished by migrateVolume to ${to} again (once its cause is fixed), or undone by migrating the volume back to storage class ${record.storageClass}`)
  }

  /** Runs `task` (the recording of a rotation's start) with the volume marked as starting a rotation. */
  async #starting<T> (volumeId: string, task: () => Promise<T>): Promise<T> {
    // Counted: two calls recording at once (one is refused or repeats later) must not unmark the other.
    this.#startingCalls.set(volumeId, (this.#startingCalls.get(volumeId) ?? 0) + 1)
    try {
      return await task()
    } finally {
      const left = (this.#startingCalls.get(volumeId) ?? 1) - 1
      if (left > 0) this.#startingCalls.set(volumeId, left)
      else this.#startingCalls.delete(volumeId)
    }
  }

  /** Runs the re-encryption that a begun rotation needs; with `wait`, until it is done. */
  async #run (record: VolumeRecord, volume: VolumeBlocks, options: { wait?: boolean }): Promise<VolumeEncryption> {
    const running = this.startRotation(record)
    if (options?.wait === true) await running
    const state = this.#host.keys.describe(record.id, volume.cipher)
    if (options?.wait === true && state.rotation !== undefined) {
      // The background run stops quietly when the instance closes or the volume is deleted: say
      // which, rather than report an I/O error that did not happen.
      if (this.#host.closed) throw new GalleonError('CANCELLED', `the instance closed before the re-encryption of volume ${record.name} finished; it resumes at the next open (call rotateVolumeKey with { wait: true } again then to wait for it)`)
      const now = this.#host.catalog.volumeById(record.id)
      if (now === undefined || now.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} was deleted before its re-encryption with the new data key finished; there is nothing left to rotate`)
      throw new GalleonError('IO_ERROR', `the re-encryption of volume ${record.name} stopped before it finished; it resumes at the next open`)
    }
    return state
  }

  /**
   * A replicated volume: on a node that is not its primary, the call goes there (with `wait`, the
   * wait too, in steps within a forwarded call's time); the answer is the primary's copy's. The
   * call's token goes with it, so that it can be sent again (its answer lost, or the primary
   * closing or losing the role under it: it then answers NOT_LEADER) without counting twice.
   */
  async #rotateReplicated (record: VolumeRecord, options: { wait?: boolean }): Promise<VolumeEncryption> {
    const replication = this.#host.replication
    if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now; join it to rotate the volume's key`)
    const forwarded = async (token: string): Promise<VolumeEncryption> => {
      let state = (await this.#host.forward(record, { op: 'rotateVolumeKey', token })).header.encryption as VolumeEncryption
      while (options?.wait === true) {
        const reply = (await this.#host.forward(record, { op: 'awaitKeyRotation' })).header
        state = reply.encryption as VolumeEncryption
        if (reply.done === true) break
      }
      return state
    }
    if (replication.forwards(record.id)) return await forwarded(newCall().token)
    // A call made here on the primary has a token of its own kind (see PRIMARY_TOKEN_PREFIX). When
    // this node stops being the primary under the rotation (its lease ended, the role moved; not
    // its own close, which ends the call), the next primary answers, and the token keeps a rotation
    // this node counted from counting again there.
    const local = primaryCall()
    return await hereOrNext(this.#host, record.id, local, async () => await this.rotateOnPrimary(record.id, options, local.token), async (repeat) => await forwarded(repeat.token))
  }

  /**
   * Rotates a replicated volume's key on its primary (this node): the cluster's record counts the
   * rotation first (copies created, resynced or promoted from then on take it), then the primary's
   * key changes and the rotation takes its place in the change stream; the call waits until the
   * in-sync copies have applied it, so none of them seals new data under its old key afterwards.
   * `token`: a forwarded call's, whose repeat answers without rotating again.
   */
  async rotateOnPrimary (volumeId: string, options: { wait?: boolean }, token?: string): Promise<VolumeEncryption> {
    const replication = this.#host.replication
    const record = this.#host.catalog.resolve(volumeId)
    if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now; join it to rotate the volume's key`)
    const describeNow = (): VolumeEncryption => this.#host.keys.describe(record.id, this.#host.volumeBlocks(record).cipher)
    // A repeat of a forwarded call that counted its rotation already (its answer was lost, or the
    // primary that counted it closed or lost the role): the record names it, also after a change
    // of primary. A primary promoted since may not have taken the rotation yet: it does first.
    if (token !== undefined && countedRotation(replication.spec(record.id), token)) {
      await this.#takeCounted(record.id)
      return describeNow()
    }
    const volume = await this.#begin(record)
    const replicator = volume.replicator
    const nodeId = this.#host.cluster?.nodeId ?? ''
    const notLeader = (): GalleonError => new GalleonError('NOT_LEADER', `node ${nodeId} stopped being the primary of volume ${record.name} before its key rotation began; retry it`)
    if (replicator === undefined) throw notLeader()
    // In the admin queue, as a copy's rotation from the record is (see applyRotation): this node
    // sees the record it changes too, and must not take the rotation a second time.
    let repeated = false
    const generation = await this.#starting(record.id, async () => await this.#host.admin(async () => {
      const counted = await replication.update(record.id, (r) => {
        if (r.primary !== nodeId) return undefined
        if (token !== undefined && countedRotation(r.spec, token)) { repeated = true; return undefined }
        // A class change that wrote the record since the check above (from another node, say).
        this.#refuseClassChange(this.#host.catalog.resolve(record.id), r.spec)
        const tokens = rotationTokens(r.spec, token)
        // keyRotationToken too (the last forwarded rotation's), for nodes of earlier versions.
        const last = tokens[tokens.length - 1]
        return { ...r, spec: { ...r.spec, keyGeneration: (r.spec.keyGeneration ?? 0) + 1, ...(tokens.length === 0 ? {} : { keyRotationTokens: tokens }), ...(last === undefined ? {} : { keyRotationToken: last }) } }
      })
      if (repeated) return undefined
      if (counted === undefined) throw notLeader()
      const generation = counted.record.spec.keyGeneration as number
      // Begun even over a rotation that stopped (its keys stay until the new one's re-seal is
      // done): the cluster counted a new one, which copies take as a new key.
      await this.#host.keys.beginRotation(record.id, volume.cipher as NonNullable<VolumeBlocks['cipher']>, generation)
      return generation
    }))
    if (generation === undefined) {
      await this.#takeCounted(record.id)
      return await this.#run(record, volume, options)
    }
    // This copy's re-encryption starts now, not once the copies confirmed: a primary that loses
    // the role (or closes) in the wait below throws before #run, and nothing else would start it
    // (its resync as a copy finds the rotation taken), so its copy would keep the old key and a
    // rotation under way until the instance is opened again.
    void this.startRotation(record)
    let seq: number | undefined
    try {
      seq = replicatorFor(volume, replicator)?.record({ type: 'rekey', generation })
    } catch (err) {
      // The role is moving: the record counts the rotation, so the next primary and every copy take it from there.
      if (!(err instanceof GalleonError && err.code === 'NOT_LEADER')) throw err
    }
    if (seq !== undefined) {
      await replicator.committed(seq, WriteConcern.WriteReplicated).catch((err: unknown) => {
        // No copy is in sync now: each takes the rotation when it resyncs (its record says so).
        const others = replication.status(record.id)?.inSync.filter((node) => node !== nodeId) ?? []
        if (errorCode(err) === 'WRITE_CONCERN_UNSATISFIED' && others.length === 0) return
        throw new GalleonError(errorCode(err), `the data key of volume ${record.name} is rotated on its primary (${nodeId}), but its in-sync copies (${others.join(', ')}) did not confirm theirs: ${(err as Error)?.message ?? String(err)}; they rotate when they next read the volume's record or resync`, { cause: err })
      })
    }
    return await this.#run(record, volume, options)
  }

  /**
   * This node's copy takes the rotations the volume's record counts that it has not taken yet: a
   * primary promoted after its predecessor counted one (the record says so, and applySpec starts it
   * in the background) answers for it only once it has begun it.
   */
  async #takeCounted (volumeId: string): Promise<void> {
    const generation = this.#host.replication?.spec(volumeId)?.keyGeneration ?? 0
    if (generation > this.#host.keys.generation(volumeId)) await this.applyRotation(volumeId, generation)
  }

  /**
   * Forwarded by a node waiting for a replicated volume's rotation (rotateVolumeKey with `wait`):
   * waits up to `ms` for this copy's re-encryption; `done` once it is over.
   */
  async awaitRotation (volumeId: string, ms: number): Promise<{ encryption: VolumeEncryption, done: boolean }> {
    const record = this.#host.catalog.resolve(volumeId)
    // A primary promoted since the rotation was counted: its own copy's rotation is the one waited for.
    if (record.replication !== undefined) await this.#takeCounted(record.id)
    const running = this.running.get(record.id)
    if (running !== undefined) {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([running, new Promise<void>((resolve) => { timer = setTimeout(resolve, ms) })])
      clearTimeout(timer)
    }
    // As in #run: the background run stops quietly when this instance closes or the volume is
    // deleted. Say which (and do not attach a deleted volume's storage again to describe it).
    const nodeId = this.#host.cluster?.nodeId ?? ''
    const now = this.#host.recordById(record.id)
    if (now === undefined || now.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} was deleted before its re-encryption with the new data key finished; there is nothing left to rotate`)
    const encryption = this.#host.keys.describe(record.id, this.#host.volumeBlocks(now).cipher)
    const done = !this.running.has(record.id)
    if (done && encryption.rotation !== undefined) {
      if (this.#host.closed) throw new GalleonError('NOT_LEADER', `node ${nodeId}, the primary of volume ${record.name}, is closing; its next primary finishes the re-encryption: wait for it there`)
      throw new GalleonError('IO_ERROR', `the re-encryption of volume ${record.name} on node ${nodeId} stopped before it finished; it resumes at that node's next open`)
    }
    return { encryption, done }
  }

  /**
   * A copy of a replicated volume takes rotation `generation` of the volume's keys (a streamed
   * change, its resync or its record said so): it rotates its own data key, unless it has already.
   * A conversion of the copy to another class starts again afterwards.
   */
  async applyRotation (volumeId: string, generation: number): Promise<void> {
    if (this.#host.keys.generation(volumeId) >= generation) return
    await this.#host.adminAfterMigration(volumeId, async () => {
      const record = this.#host.recordById(volumeId)
      if (record === undefined || record.state === VolumeState.Deleting || record.encrypted !== true) return
      if (this.#host.keys.generation(volumeId) >= generation) return
      const cipher = this.#host.volumeBlocks(record).cipher
      if (cipher === undefined) return
      // A copy whose keys do not open cannot seal anything anyway; its I/O fails with the reason.
      if (cipher.unavailable !== undefined) throw cipher.unavailable
      await this.#host.keys.beginRotation(volumeId, cipher, generation)
      void this.startRotation(record)
    }, 'the primary rotated the volume\'s data key; the conversion of this copy starts again after it')
  }

  /**
   * Runs (or resumes) the background re-encryption of a volume after a DEK rotation. A rotation
   * that begins while it runs (a copy taking the next one of its volume) makes it start over.
   */
  startRotation (record: VolumeRecord): Promise<void> {
    const existing = this.running.get(record.id)
    if (existing !== undefined) return existing
    // Nothing to re-encrypt (a run started earlier finished it): no run, so that a rotation asked
    // for next is not refused as BUSY by a run that has nothing to do.
    if (this.#host.keys.rotation(record.id) === undefined) return Promise.resolve()
    // Background work of the instance: it does not run as the caller that started it.
    const run = this.#host.context.exit(async () => {
      const volume = this.#host.volumeBlocks(record)
      const cipher = volume.cipher
      try {
        for (;;) {
          const rotation = this.#host.keys.rotation(record.id)
          const version = this.#host.keys.currentVersion(record.id)
          if (cipher === undefined || rotation === undefined || version === undefined) return
          const restarted = (): boolean => this.#host.keys.currentVersion(record.id) !== version
          await this.#host.engine.reseal(volume, rotation.cursor, async (next) => {
            if (restarted()) throw RESTART
            await this.#host.keys.advanceRotation(record.id, next, version)
            if (this.#host.closed) throw new GalleonError('CANCELLED', 'the instance is closing; the re-encryption resumes at the next open')
          }).catch((err: unknown) => { if (err !== RESTART) throw err })
          const retired = await this.#host.keys.finishRotation(record.id, version)
          if (retired === undefined) continue
          // Reads that fetched a block before it was re-sealed may still open it with the old key:
          // let those in flight finish (new ones wait a moment), then forget the old keys.
          const open = await volume.closeGate()
          try {
            for (const old of retired) cipher.dropKey(old)
          } finally {
            open()
          }
          this.#host.emit('volume:key-rotated', toVolume(this.#host.catalog.resolve(record.id)), this.#host.keys.describe(record.id, cipher).keyVersion as number)
          // A rotation that began while the old keys were being dropped (a replicated volume's next
          // rotation reaching this copy) found this run still going and left its work to it.
          if (this.#host.keys.rotation(record.id) !== undefined) continue
          return
        }
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
      next = timedKeyProvider(provider)
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
      rewrapped = await this.#host.keys.rewrapAll(next, (err) => {
        // Stored and in force; only the clean-up of the old wraps did not happen (see KeyManager.rewrapAll).
        this.#host.emit('io:error', { volumeId: '', volumeName: '', operation: 'flush', code: errorCode(err), message: `the key-encryption key was rotated, but compacting the metadata failed (${(err as Error)?.message ?? String(err)}): its files may still hold the data keys wrapped by the old key (${current.keyId}) until the database compacts them; rotate again once the cause is fixed to compact them now` })
      })
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

/**
 * The tokens a record keeps once the rotation of `token` is counted: those it had, including the
 * one a node of an earlier version wrote to keyRotationToken (it knows no list: its token may be in
 * neither, or newer than the list), the newest of each kind (see keptTokens), oldest first. A
 * repeat of any of them (its answer lost, the call sent again, also after other rotations and a
 * change of primary) does not rotate again.
 */
function rotationTokens (spec: VolumeSpec, token: string | undefined): string[] {
  const tokens = Array.isArray(spec.keyRotationTokens) ? spec.keyRotationTokens.filter((t): t is string => typeof t === 'string') : []
  for (const added of [spec.keyRotationToken, token]) {
    if (typeof added === 'string' && !tokens.includes(added)) tokens.push(added)
  }
  return keptTokens(tokens)
}

/** Whether the rotation of the forwarded call `token` was counted already (see VolumeSpec.keyRotationTokens). */
function countedRotation (spec: VolumeSpec | undefined, token: string): boolean {
  return spec !== undefined && ((Array.isArray(spec.keyRotationTokens) && spec.keyRotationTokens.includes(token)) || spec.keyRotationToken === token)
}
