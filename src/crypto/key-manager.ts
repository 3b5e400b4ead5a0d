// Data keys of encrypted volumes: created, wrapped by the instance's key provider (the KEK), kept in
// the metadata database (only wrapped), unwrapped at open, rotated.
//
// Per volume, one record: its DEKs by version (the current one seals new blocks; older ones remain
// while a rotation re-seals what they sealed), each DEK's persisted nonce limit (see
// volume-cipher.ts), the volume's backup key (seals its backup chunks), and the progress of a DEK
// rotation. Deleting the record makes whatever is left of the volume's blocks unreadable.
// The records' shapes and the checked unwrap of a key are in key-records.ts; where the key provider
// comes from, in key-source.ts.

import type { AbstractSublevel } from 'abstract-level'
import type { KeyProvider } from '../drivers.js'
import { GalleonError, copyBytes, describe, reasonOf } from '../errors.js'
import type { MetadataDatabase } from '../volumes/catalog.js'
import { InternalKeyProvider, PassphraseKeyProvider, generateKey, keySourceFix, wrapChecked } from './keys.js'
import { backupKeyContext, backupKeyFingerprint, dataKeyCheck, dekContext, unb64, unwrapBackupKey, unwrapDataKey, type BackupKey, type BackupKeyRecord, type DataKeyRecord, type VolumeEncryption, type VolumeKeyRecord } from './key-records.js'
import { openKeyProvider, timedKeyProvider, type KeySource } from './key-source.js'
import { providerTimeout, timedOut } from './provider-timeout.js'
import { GENERATION_RESERVATION, NONCE_RESERVATION, VolumeCipher } from './volume-cipher.js'
import { SerialQueue } from '../serial-queue.js'

export type { BackupKey, VolumeEncryption, VolumeKeyRecord } from './key-records.js'
export { backupKeyContext, backupKeyFingerprint } from './key-records.js'
export type { KeySource } from './key-source.js'

type JsonSublevel = AbstractSublevel<MetadataDatabase, any, string, any>
const SYNC = { sync: true } as unknown as Record<string, never>

/** How many volumes' keys a key provider is tried on before it is refused (see KeyManager.#check). */
const CHECK_ATTEMPTS = 3

export class KeyManager {
  readonly #db: JsonSublevel
  readonly #source: KeySource
  readonly #records = new Map<string, VolumeKeyRecord>()
  #provider: KeyProvider | undefined
  #opening: Promise<KeyProvider> | undefined
  /** The provider that proved it opens this storage's keys (see #check); only it wraps. */
  #checked: KeyProvider | undefined
  /** Why the key provider did not answer in time while the volumes were attached (see attach). */
  #unanswered: GalleonError | undefined
  /** A call that timed out at open has had its one more time limit to answer late (see #unwrapAtOpen). */
  #lateAnswerWaited = false
  /** Record writes one at a time (nonce reservations and rotations update the same records). */
  readonly #queue = new SerialQueue()

  constructor (db: MetadataDatabase, source: KeySource) {
    this.#db = db.sublevel('keys', { valueEncoding: 'json' }) as JsonSublevel
    this.#source = source
    const { keyProvider, passphrase } = source
    if (keyProvider !== undefined && passphrase !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'pass either keyProvider or passphrase, not both')
    if (keyProvider !== undefined && (keyProvider === null || typeof keyProvider !== 'object' || typeof keyProvider.wrap !== 'function' || typeof keyProvider.unwrap !== 'function' || typeof keyProvider.keyId !== 'string' || typeof keyProvider.name !== 'string')) {
      throw new GalleonError('INVALID_ARGUMENT', `keyProvider must implement { name, keyId, wrap(dek, context), unwrap(wrapped, context) }, got ${describe(keyProvider)}`)
    }
    if (passphrase !== undefined && source.storagePath === undefined) {
      throw new GalleonError('INVALID_ARGUMENT', 'a passphrase needs storagePath (its salt is kept there); with other drivers pass a keyProvider')
    }
    this.#provider = keyProvider === undefined ? undefined : timedKeyProvider(keyProvider)
  }

  /** Loads the key records; with a passphrase, checks it now (a wrong one fails open). */
  async load (): Promise<void> {
    for (const [id, record] of await this.#db.iterator().all()) this.#records.set(id as string, record as VolumeKeyRecord)
    if (this.#source.passphrase !== undefined) await this.provider()
  }

  /**
   * The key provider, opened on first use (the internal one creates its key file then) and checked
   * once against the keys this storage holds: everything that wraps a key gets it from here.
   */
  async provider (): Promise<KeyProvider> {
    const provider = await this.#opened()
    if (this.#checked !== provider) {
      await this.#check(provider)
      this.#checked = provider
    }
    return provider
  }

  /** The key provider, opened but not checked: for unwrapping only (every unwrap checks its key). */
  async #opened (): Promise<KeyProvider> {
    if (this.#provider !== undefined) return this.#provider
    this.#opening ??= openKeyProvider(this.#source, this.#records.size === 0).then((provider) => { this.#provider = provider; return provider }, (err) => { this.#opening = undefined; throw err })
    return await this.#opening
  }

  /**
   * Refuses a provider that cannot open the keys this storage holds: a master key file or passphrase
   * salt file from the wrong backup, or another KMS key, is a valid key too, and keys wrapped under
   * it would leave the storage with two KEKs, the new volumes lost once the right one is put back.
   * Each try unwraps a volume's data key (or, without a check value, its backup key) and checks the
   * bytes; a few volumes are tried, so one damaged record does not condemn the right provider. A
   * storage with no keys yet accepts any provider.
   */
  async #check (provider: KeyProvider): Promise<void> {
    // A local provider's key ids are hashes of its keys: one that holds the KEK a record names is
    // this storage's, even when that record does not open (damaged), so it is not refused for that.
    if (provider instanceof InternalKeyProvider || provider instanceof PassphraseKeyProvider) {
      const held = new Set([provider.keyId, ...provider.retiredKeyIds])
      for (const record of this.#records.values()) {
        if (held.has(record.backup.kekId) || record.keys.some((key) => held.has(key.kekId))) return
      }
    }
    let failure: unknown
    let tried = 0
    for (const record of this.#records.values()) {
      try {
        const key = record.keys.find((candidate) => candidate.check !== undefined)
        await (key === undefined ? unwrapBackupKey(provider, record.volumeId, record.backup) : unwrapDataKey(provider, record.volumeId, key))
        return
      } catch (err) {
        failure ??= err
      }
      if (++tried === CHECK_ATTEMPTS) break
    }
    if (failure === undefined) return
    // A provider that cannot wrap and unwrap a key of its own is failing (a KMS down or refusing):
    // BACKEND_UNAVAILABLE, as for any wrap. One that can holds another key than this storage's.
    await wrapChecked(provider, generateKey(), 'key-provider-check')
    const kekIds = [...new Set([...this.#records.values()].map((record) => record.backup.kekId))].slice(0, 3).join(', ')
    throw new GalleonError('DECRYPTION_FAILED', `the ${provider.name} key provider (key ${provider.keyId}) works, but cannot open the keys of this storage's encrypted volumes (wrapped by key ${kekIds}): it is not the key they were created with, so nothing new is wrapped under it; ${keySourceFix(provider)} (${reasonOf(failure)})`, { cause: failure })
  }
  /** Ids of volumes that have key records. */
  volumeIds (): string[] { return [...this.#records.keys()] }

  has (volumeId: string): boolean { return this.#records.has(volumeId) }

  /** Creates the keys of a new encrypted volume and returns its cipher. */
  async create (volumeId: string, storageId: number): Promise<VolumeCipher> {
    const dek = generateKey()
    const backupKey = generateKey()
    // Inside the queue, so a KEK rotation running meanwhile re-wraps this key too (or wraps it itself).
    await this.#serial(async () => {
      const provider = await this.provider()
      await this.#put({
        volumeId,
        current: 1,
        keys: [{ version: 1, wrapped: await wrapChecked(provider, dek, dekContext(volumeId, 1)), kekId: provider.keyId, reservedUpTo: NONCE_RESERVATION, check: dataKeyCheck(dek) }],
        backup: { wrapped: await wrapChecked(provider, backupKey, backupKeyContext(volumeId)), kekId: provider.keyId, fingerprint: backupKeyFingerprint(backupKey) },
        sealedGenerationsBelow: GENERATION_RESERVATION
      })
    })
    const cipher = new VolumeCipher(storageId, async (version, limit, generations) => await this.#reserve(volumeId, version, limit, generations))
    // A fresh key's first nonces (and the volume's first generations) are reserved with its record:
    // the first writes need not wait.
    cipher.addKey(1, dek, { next: 0, limit: NONCE_RESERVATION }, true)
    cipher.restoreGenerations(GENERATION_RESERVATION)
    return cipher
  }

  /**
   * The cipher of an existing encrypted volume, its DEKs unwrapped. When they cannot be unwrapped
   * (wrong or missing KEK), the cipher is marked unavailable: the volume's I/O fails with the reason
   * and the rest of the instance works.
   */
  async attach (volumeId: string, storageId: number): Promise<VolumeCipher> {
    const cipher = new VolumeCipher(storageId, async (version, limit, generations) => await this.#reserve(volumeId, version, limit, generations))
    const record = this.#records.get(volumeId)
    try {
      if (record === undefined) throw new GalleonError('CORRUPTION', `the keys of encrypted volume ${volumeId} are missing from the metadata`)
      cipher.restoreGenerations(record.sealedGenerationsBelow ?? 0)
      const provider = await this.#opened()
      if (this.#unanswered !== undefined) {
        throw new GalleonError('DECRYPTION_FAILED', `the keys of volume ${volumeId} were not unwrapped: the ${provider.name} key provider (key ${provider.keyId}) did not answer for another volume's keys at this open (${this.#unanswered.message}), so it was not asked again; open GalleonFS again once it answers`, { cause: this.#unanswered })
      }
      for (const key of record.keys) {
        const dek = await this.#unwrapAtOpen(provider, volumeId, key)
        cipher.addKey(key.version, dek, { next: key.reservedUpTo, limit: key.reservedUpTo }, key.version === record.current)
      }
    } catch (err) {
      cipher.unavailable = err instanceof GalleonError ? err : new GalleonError('DECRYPTION_FAILED', String(err))
      // One time limit per open, not one per volume: a hung KMS would otherwise hold open() for
      // the limit times the number of encrypted volumes.
      if (timedOut(err)) this.#unanswered ??= cipher.unavailable
    }
    return cipher
  }

  /**
   * unwrapDataKey at open, where the first call that timed out gets one more time limit to answer
   * late: a KMS that is slow once (a cold start, a lost packet) answers, and the key is asked for
   * again; only one that does not is taken for hung, and not asked for the other volumes' keys (see
   * attach). Once per open: given to every call, a KMS slow at each key's first unwrap (a cache in
   * front of a slow one) would cost the open up to two limits per encrypted volume.
   */
  async #unwrapAtOpen (provider: KeyProvider, volumeId: string, key: DataKeyRecord): Promise<Uint8Array> {
    try {
      return await unwrapDataKey(provider, volumeId, key)
    } catch (err) {
      const timeout = providerTimeout(err)
      if (timeout === undefined || this.#lateAnswerWaited) throw err
      this.#lateAnswerWaited = true
      if (!await timeout.answersLate()) throw err
      return await unwrapDataKey(provider, volumeId, key)
    }
  }

  /**
   * Live migration's key hand-over: the metadata operations (for one atomic batch with the volume's
   * switch-over) that make the keys staged under `stagingId` (by `create`) the keys of `volumeId`,
   * or, with no staging id, remove `volumeId`'s keys (a move to a class without encryption). DEKs
   * are re-wrapped for their new owner (a wrapped key names the volume it belongs to). The volume's
   * backup key stays when it had one, so its backups stay readable with the same key. Call `apply`
   * once the batch is stored.
   */
  async handOver (stagingId: string | undefined, volumeId: string): Promise<{ ops: object[], apply: () => void, cipher?: (storageId: number) => VolumeCipher }> {
    return await this.#serial(async () => {
      const previous = this.#records.get(volumeId)
      if (stagingId === undefined) {
        return { ops: previous === undefined ? [] : [{ type: 'del', sublevel: this.#db, key: volumeId }], apply: () => { this.#records.delete(volumeId) } }
      }
      const staged = this.#record(stagingId)
      const provider = await this.provider()
      const keys: DataKeyRecord[] = []
      const deks: Uint8Array[] = []
      for (const key of staged.keys) {
        const dek = await unwrapDataKey(provider, stagingId, key)
        deks.push(dek)
        keys.push({ ...key, wrapped: await wrapChecked(provider, dek, dekContext(volumeId, key.version)), kekId: provider.keyId })
      }
      let backup = previous?.backup
      if (backup === undefined) {
        const backupKey = await unwrapBackupKey(provider, stagingId, staged.backup)
        backup = { wrapped: await wrapChecked(provider, backupKey, backupKeyContext(volumeId)), kekId: provider.keyId, fingerprint: staged.backup.fingerprint }
      }
      // The fresh keys of a conversion answer every rotation the copy had taken.
      // The generations the copy sealed under these keys stay reserved: it is the volume's storage now.
      const record: VolumeKeyRecord = { volumeId, current: staged.current, keys, backup, ...(staged.sealedGenerationsBelow === undefined ? {} : { sealedGenerationsBelow: staged.sealedGenerationsBelow }), ...(previous?.retiredBackups === undefined ? {} : { retiredBackups: previous.retiredBackups }), ...(previous?.generation === undefined ? {} : { generation: previous.generation }) }
      return {
        ops: [{ type: 'put', sublevel: this.#db, key: volumeId, value: record }, { type: 'del', sublevel: this.#db, key: stagingId }],
        apply: () => { this.#records.set(volumeId, record); this.#records.delete(stagingId) },
        // The cipher of the volume's new storage, from the keys unwrapped here (after `apply`): no
        // second unwrap after the switch-over, where a key provider's brief failure would leave a
        // migrated volume without its keys until the next open.
        cipher: (storageId: number) => {
          const cipher = new VolumeCipher(storageId, async (version, limit, generations) => await this.#reserve(volumeId, version, limit, generations))
          for (const [i, key] of keys.entries()) cipher.addKey(key.version, deks[i] as Uint8Array, { next: key.reservedUpTo, limit: key.reservedUpTo }, key.version === record.current)
          cipher.restoreGenerations(record.sealedGenerationsBelow ?? 0)
          return cipher
        }
      }
    })
  }

  /** Forgets a volume's keys (crypto-shredding what is left of its blocks). */
  async delete (volumeId: string): Promise<void> {
    await this.#serial(async () => {
      await this.#db.del(volumeId, SYNC)
      this.#records.delete(volumeId)
    })
  }

  /** Encryption facts of a volume. */
  describe (volumeId: string, cipher: VolumeCipher | undefined): VolumeEncryption {
    const record = this.#records.get(volumeId)
    if (record === undefined) return { encrypted: false }
    return {
      encrypted: true,
      algorithm: 'AES-256-GCM',
      keyVersion: record.current,
      keyVersions: record.keys.map((key) => key.version),
      provider: this.#provider?.name,
      kekId: record.keys.find((key) => key.version === record.current)?.kekId,
      ...(record.rotation === undefined ? {} : { rotation: record.rotation }),
      ...(record.generation === undefined ? {} : { keyGeneration: record.generation }),
      ...(cipher?.unavailable === undefined ? {} : { unavailable: cipher.unavailable.message })
    }
  }

  rotation (volumeId: string): VolumeKeyRecord['rotation'] {
    return this.#records.get(volumeId)?.rotation
  }

  /** Version of the DEK sealing new writes of a volume (undefined: it has no keys). */
  currentVersion (volumeId: string): number | undefined {
    return this.#records.get(volumeId)?.current
  }

  /** The rotation of a replicated volume's keys that this copy's current DEK answers (0: none). */
  generation (volumeId: string): number {
    return this.#records.get(volumeId)?.generation ?? 0
  }

  /** A new copy of a replicated volume: its fresh keys answer the volume's rotations so far. */
  async markGeneration (volumeId: string, generation: number): Promise<void> {
    await this.#serial(async () => {
      const record = this.#record(volumeId)
      if ((record.generation ?? 0) >= generation) return
      await this.#put({ ...record, generation })
    })
  }

  /**
   * Starts a DEK rotation: a new DEK becomes current (new writes use it) and the rotation record
   * says what is left to re-seal. The volume gets a new backup key with it, so backups taken from
   * now on are sealed with a key that never sealed anything before; the old backup key is kept,
   * retired, for the backups taken before. Returns the new version.
   *
   * One that begins while another re-seals replaces it: every older DEK stays until the new key's
   * re-seal, which starts over, is done (a copy of a replicated volume takes the volume's rotations
   * as they come). `generation`: the rotation of a replicated volume's keys this one answers.
   */
  async beginRotation (volumeId: string, cipher: VolumeCipher, generation?: number): Promise<number> {
    const dek = generateKey()
    const backupKey = generateKey()
    return await this.#serial(async () => {
      const provider = await this.provider()
      const record = this.#record(volumeId)
      const version = Math.max(...record.keys.map((key) => key.version)) + 1
      const wrapped = await wrapChecked(provider, dek, dekContext(volumeId, version))
      const backup = { wrapped: await wrapChecked(provider, backupKey, backupKeyContext(volumeId)), kekId: provider.keyId, fingerprint: backupKeyFingerprint(backupKey) }
      await this.#put({
        ...record,
        current: version,
        keys: [...record.keys, { version, wrapped, kekId: provider.keyId, reservedUpTo: NONCE_RESERVATION, check: dataKeyCheck(dek) }],
        backup,
        retiredBackups: [...(record.retiredBackups ?? []), record.backup],
        rotation: { cursor: 0, startedAt: new Date().toISOString() },
        ...(generation === undefined || generation <= (record.generation ?? 0) ? {} : { generation })
      })
      // Its first nonces are reserved with it: a write sealing right after the switch never waits or fails.
      cipher.addKey(version, dek, { next: 0, limit: NONCE_RESERVATION }, true)
      return version
    })
  }

  /**
   * Records rotation progress (call only once the re-sealed blocks below `cursor` are durable).
   * `version`: the key the blocks were re-sealed with; nothing is recorded if another rotation has
   * begun since (its re-seal starts over).
   */
  async advanceRotation (volumeId: string, cursor: number, version?: number): Promise<void> {
    await this.#serial(async () => {
      const record = this.#record(volumeId)
      if (record.rotation === undefined || (version !== undefined && record.current !== version)) return
      await this.#put({ ...record, rotation: { ...record.rotation, cursor } })
    })
  }

  /**
   * Ends a rotation: every block is durable under the current key, so the older DEKs leave the
   * metadata. Returns the versions to drop from the cipher (once reads in flight are done), or
   * undefined when the current key is no longer `version` (another rotation began: nothing ends).
   */
  async finishRotation (volumeId: string, version?: number): Promise<number[] | undefined> {
    return await this.#serial(async () => {
      const record = this.#record(volumeId)
      if (version !== undefined && record.current !== version) return undefined
      const { rotation: _done, ...rest } = record
      await this.#put({ ...rest, keys: record.keys.filter((key) => key.version === record.current) })
      return record.keys.filter((key) => key.version !== record.current).map((key) => key.version)
    })
  }

  /** The volume's backup key, unwrapped. */
  async backupKey (volumeId: string): Promise<BackupKey> {
    const record = this.#record(volumeId)
    const provider = await this.#opened()
    const key = await unwrapBackupKey(provider, volumeId, record.backup)
    return { key, fingerprint: record.backup.fingerprint, wrapped: record.backup.wrapped, kekId: record.backup.kekId, provider: provider.name }
  }

  /**
   * Opens the backup key a manifest carries: from the source volume's record when it is still here
   * (its current backup key or one a DEK rotation retired, whatever KEK rotations happened since),
   * else by unwrapping the manifest's copy.
   */
  async openBackupKey (volumeId: string, stored: { wrapped: string, kekId: string, fingerprint: string }): Promise<Uint8Array> {
    const record = this.#records.get(volumeId)
    if (record !== undefined && record.backup.fingerprint === stored.fingerprint) return (await this.backupKey(volumeId)).key
    const provider = await this.#opened()
    const retired = record?.retiredBackups?.find((backup) => backup.fingerprint === stored.fingerprint)
    if (retired !== undefined) return await unwrapBackupKey(provider, volumeId, retired)
    let key: Uint8Array
    try {
      key = await provider.unwrap(unb64(stored.wrapped), backupKeyContext(volumeId))
    } catch (err) {
      throw new GalleonError('DECRYPTION_FAILED', `the backup is encrypted with a key wrapped by KEK ${stored.kekId}, which the ${provider.name} key provider (key ${provider.keyId}) cannot unwrap; open GalleonFS with the key provider, passphrase or master key file in use when the backup was taken (if this storage's keys have moved to another provider since, on a storage path of its own: for the internal provider, an empty one holding a copy of that master.key)`, { cause: err })
    }
    if (!(key instanceof Uint8Array) || backupKeyFingerprint(key) !== stored.fingerprint) throw new GalleonError('DECRYPTION_FAILED', 'the backup key, unwrapped, does not match its fingerprint: the manifest was altered, or the key provider is not the one in use when the backup was taken (its unwrap gave other bytes)')
    // A copy the provider cannot reach (see unwrapDataKey).
    return copyBytes(key)
  }

  /**
   * Re-wraps every DEK and backup key under `next` (no data is rewritten) in one atomic batch, then
   * makes it the provider. Returns how many keys were re-wrapped. `onCompactionFailed` hears why
   * the superseded records could not be compacted away (see #compactRecords): the rotation stands,
   * but the old KEK's wraps stay in the metadata's files until the database compacts them.
   */
  async rewrapAll (next: KeyProvider, onCompactionFailed?: (err: unknown) => void): Promise<number> {
    const current = await this.provider()
    return await this.#serial(async () => {
      const batch: Array<{ type: 'put', key: string, value: VolumeKeyRecord }> = []
      let count = 0
      for (const record of this.#records.values()) {
        const keys: DataKeyRecord[] = []
        for (const key of record.keys) {
          const dek = await unwrapDataKey(current, record.volumeId, key)
          keys.push({ ...key, wrapped: await wrapChecked(next, dek, dekContext(record.volumeId, key.version)), kekId: next.keyId })
          count++
        }
        const rewrap = async (stored: BackupKeyRecord): Promise<BackupKeyRecord> => {
          const backupKey = await unwrapBackupKey(current, record.volumeId, stored)
          count++
          return { ...stored, wrapped: await wrapChecked(next, backupKey, backupKeyContext(record.volumeId)), kekId: next.keyId }
        }
        const backup = await rewrap(record.backup)
        let retiredBackups: BackupKeyRecord[] | undefined
        for (const stored of record.retiredBackups ?? []) (retiredBackups ??= []).push(await rewrap(stored))
        batch.push({ type: 'put', key: record.volumeId, value: { ...record, keys, backup, ...(retiredBackups === undefined ? {} : { retiredBackups }) } })
      }
      // With no key to re-wrap, no wrap above checked the new provider: it must give a key back
      // before it becomes this storage's (a KMS role that may encrypt but not decrypt would
      // otherwise be reported as moved to, and fail every encrypted volume created afterwards).
      if (count === 0) await wrapChecked(next, generateKey(), 'key-provider-check')
      if (batch.length > 0) await this.#db.batch(batch, SYNC)
      for (const { value } of batch) this.#records.set(value.volumeId, value)
      if (batch.length > 0) await this.#compactRecords().catch((err: unknown) => { onCompactionFailed?.(err) })
      // Every key is wrapped by it now (each wrap checked): it is this storage's provider.
      this.#provider = next
      this.#checked = next
      return count
    })
  }

  /**
   * Drops the superseded key records from the metadata's files, where a log-structured database
   * keeps them until it compacts: after a KEK rotation they hold the keys wrapped by the old KEK,
   * which is meant to open nothing any more. Only a database that can compact a range (classic-level)
   * does; the re-wrap stands either way, so a failure here is not the rotation's (the caller reports it).
   */
  async #compactRecords (): Promise<void> {
    const root = this.#db.db as unknown as { compactRange?: (start: string, end: string) => Promise<void> }
    if (typeof root.compactRange !== 'function') return
    // The sublevel's keys are its prefix and then the volume id: '!keys!' up to '!keys"'.
    const prefix = this.#db.prefix
    const end = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)
    await root.compactRange(prefix, end)
  }

  /** Whether some key is wrapped by a KEK other than the provider's current one (an interrupted rotation). */
  async staleWraps (): Promise<boolean> {
    if (this.#records.size === 0) return false
    const provider = await this.#opened()
    return [...this.#records.values()].some((record) => [record.backup, ...(record.retiredBackups ?? []), ...record.keys].some((key) => key.kekId !== provider.keyId))
  }

  /**
   * For a key record written before generations were reserved (no `sealedGenerationsBelow`):
   * persists `below`, where the volume's generations resume at this open (past every version
   * stored). Until something is sealed no reservation is made, and a trim of the newest versions
   * first would otherwise let the next open resume below them. Nothing for a record that has one.
   */
  async reserveOpeningGenerations (volumeId: string, below: number): Promise<void> {
    if (this.#records.get(volumeId)?.sealedGenerationsBelow !== undefined) return
    await this.#serial(async () => {
      const record = this.#record(volumeId)
      if (record.sealedGenerationsBelow === undefined) await this.#put({ ...record, sealedGenerationsBelow: below })
    })
  }

  async #reserve (volumeId: string, version: number, limit: number, generations: number): Promise<void> {
    await this.#serial(async () => {
      const record = this.#record(volumeId)
      await this.#put({
        ...record,
        keys: record.keys.map((key) => key.version === version && key.reservedUpTo < limit ? { ...key, reservedUpTo: limit } : key),
        sealedGenerationsBelow: Math.max(record.sealedGenerationsBelow ?? 0, generations)
      })
    })
  }

  #record (volumeId: string): VolumeKeyRecord {
    const record = this.#records.get(volumeId)
    if (record === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} has no encryption keys (it is not encrypted, or it was deleted)`)
    return record
  }

  async #put (record: VolumeKeyRecord): Promise<void> {
    await this.#db.put(record.volumeId, record, SYNC)
    this.#records.set(record.volumeId, record)
  }

  async #serial<T> (task: () => Promise<T>): Promise<T> {
    return await this.#queue.run(task)
  }
}
