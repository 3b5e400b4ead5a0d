// The operations of test/encryption-model-fuzz.test.ts that change volumes and keys, each applied
// to the model as it goes: writes, trims, reads, expansions, snapshots, reverts, clones, deletions,
// data-key and key-encryption-key rotations and moves between providers, backups and restores,
// and migrations between the encrypting and the plain class.

import assert from 'node:assert/strict'
import { GalleonError, InternalKeyProvider, PassphraseKeyProvider, WriteConcern, type KeyProvider } from '../../src/index.js'
import { markerText } from './crypto-fuzz-support.js'
import {
  CryptoFuzzModel, LIMIT_BLOCKS, MAX_BLOCKS, MAX_ROTATIONS, MAX_VOLUMES, MIN_BLOCKS, MODES, PASSPHRASE_COST, PLAIN, SEALED, providerName,
  type Lineage, type ModelBackup, type ModelVolume, type Mode
} from './crypto-fuzz-model.js'

/** The model's operations: each calls the library, checks what it returns and updates the model. */
export class CryptoFuzzOps extends CryptoFuzzModel {
  // ---------------------------------------------------------------- volumes and I/O

  async create (encrypted: boolean): Promise<ModelVolume> {
    const name = this.name('v')
    const size = (MIN_BLOCKS + this.int(MAX_BLOCKS - MIN_BLOCKS + 1)) * this.bs
    this.say(`createVolume ${name} ${size / this.bs} blocks ${encrypted ? 'encrypted' : 'plain'}`)
    const created = await this.fs.createVolume({ name, sizeBytes: size, storageClass: encrypted ? SEALED : PLAIN })
    assert.equal(created.encrypted, encrypted)
    const volume: ModelVolume = { name, id: created.id, encrypted, data: new Uint8Array(size), snapshots: new Map(), keyVersion: encrypted ? 1 : 0, keyEpoch: this.epoch(), rotations: 0, pending: 0, newBackupKey: false, source: undefined }
    this.volumes.set(name, volume)
    this.count(`create ${encrypted ? 'encrypted' : 'plain'}`)
    return volume
  }

  /** Starts a random write (model updated at once: writes to a block apply in the order issued). */
  startWrite (volume: ModelVolume): Promise<void> {
    const size = volume.data.byteLength
    const blocks = size / this.bs
    const concern = this.chance(0.3) ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
    let offset: number
    let length: number
    const aligned = this.chance(0.5)
    if (aligned) {
      const count = 1 + this.int(Math.min(4, blocks))
      offset = this.int(blocks - count + 1) * this.bs
      length = count * this.bs
    } else {
      offset = this.int(size - 1)
      length = 1 + this.int(Math.min(size - offset, 3 * this.bs))
    }
    const zeroes = this.chance(0.08)
    const first = this.markers + 1
    const data = zeroes ? new Uint8Array(length) : this.data(volume, offset, length)
    volume.data.set(data, offset)
    const asBlock = aligned && length === this.bs && this.chance(0.5)
    const markers = this.markers < first ? '' : ` markers ${markerText(first)}..${markerText(this.markers)}`
    this.say(`${asBlock ? 'writeBlock' : 'write'} ${volume.name} ${offset}+${length}${zeroes ? ' zeroes' : ''} ${concern}${markers}`)
    this.count(`write ${aligned ? 'aligned' : 'unaligned'} ${concern}`)
    return asBlock ? this.fs.writeBlock(volume.name, offset / this.bs, data, concern) : this.fs.write(volume.name, offset, data, concern)
  }

  async write (volume: ModelVolume): Promise<void> {
    if (this.chance(0.2)) {
      const writes = Array.from({ length: 2 + this.int(4) }, () => this.startWrite(volume))
      await Promise.all(writes)
      this.count('concurrent writes')
    } else {
      await this.startWrite(volume)
    }
  }

  async trim (volume: ModelVolume): Promise<void> {
    const size = volume.data.byteLength
    const offset = this.chance(0.5) ? this.int(size / this.bs) * this.bs : this.int(size - 1)
    const length = 1 + this.int(Math.min(size - offset, 4 * this.bs))
    this.say(`trim ${volume.name} ${offset}+${length}`)
    await this.fs.trim(volume.name, offset, length)
    volume.data.fill(0, offset, offset + length)
    this.count('trim')
  }

  async read (volume: ModelVolume): Promise<void> {
    const views: Array<[string | { volume: string, snapshot: string }, Uint8Array]> = [[volume.name, volume.data], ...[...volume.snapshots].map(([snapshot, image]) => [{ volume: volume.name, snapshot }, image] as [{ volume: string, snapshot: string }, Uint8Array])]
    const [view, image] = this.pick(views) as [string | { volume: string, snapshot: string }, Uint8Array]
    const offset = this.int(image.byteLength)
    const length = 1 + this.int(image.byteLength - offset)
    this.say(`read ${JSON.stringify(view)} ${offset}+${length}`)
    if (length % this.bs === 0 && offset % this.bs === 0 && length === this.bs) {
      assert.ok(Buffer.from(await this.fs.readBlock(view, offset / this.bs)).equals(image.subarray(offset, offset + length)), `readBlock ${JSON.stringify(view)} ${offset / this.bs}`)
    } else {
      assert.ok(Buffer.from(await this.fs.read(view, offset, length)).equals(image.subarray(offset, offset + length)), `read ${JSON.stringify(view)} ${offset}+${length}`)
    }
    this.count('read')
  }

  async expand (volume: ModelVolume): Promise<void> {
    const blocks = volume.data.byteLength / this.bs
    if (blocks >= LIMIT_BLOCKS) return
    const size = (blocks + 1 + this.int(Math.min(8, LIMIT_BLOCKS - blocks))) * this.bs
    this.say(`expandVolume ${volume.name} to ${size / this.bs} blocks`)
    await this.fs.expandVolume(volume.name, size)
    const data = new Uint8Array(size)
    data.set(volume.data)
    volume.data = data
    this.count('expand')
  }

  async snapshot (volume: ModelVolume): Promise<void> {
    const name = this.name('snap')
    this.say(`createSnapshot ${volume.name} ${name}`)
    await this.fs.createSnapshot(volume.name, name)
    volume.snapshots.set(name, Uint8Array.from(volume.data))
    this.count('snapshot')
  }

  /** Clones that read from `volume` (or, given, from that snapshot of it). */
  dependants (volume: ModelVolume, snapshot?: string): ModelVolume[] {
    return [...this.volumes.values()].filter((v) => v.source?.volume === volume.name && (snapshot === undefined || v.source.snapshot === snapshot))
  }

  async deleteSnapshot (volume: ModelVolume): Promise<void> {
    const name = this.pick([...volume.snapshots.keys()])
    if (name === undefined) return
    const clones = this.dependants(volume, name)
    const force = clones.length > 0 && this.chance(0.7)
    if (clones.length > 0 && !force) {
      await this.refused(`deleteSnapshot ${volume.name}@${name} that ${clones[0]?.name} reads from`, 'BUSY', async () => await this.fs.deleteSnapshot(volume.name, name), volume)
      return
    }
    this.say(`deleteSnapshot ${volume.name}@${name}${force ? ' force' : ''}`)
    await this.fs.deleteSnapshot(volume.name, name, { force })
    volume.snapshots.delete(name)
    for (const clone of clones) clone.source = undefined
    this.count('delete snapshot')
  }

  async revert (volume: ModelVolume): Promise<void> {
    const name = this.pick([...volume.snapshots.keys()])
    if (name === undefined) return
    this.say(`restoreSnapshot ${volume.name} ${name}`)
    try {
      await this.fs.restoreSnapshot(volume.name, name)
    } catch (err) {
      // Refused while the volume re-encrypts, saying so: nothing changed.
      if (!(err instanceof GalleonError && err.code === 'BUSY' && volume.pending > 0 && /re-?encrypt/.test(err.message))) throw err
      this.count('revert refused: re-encrypting')
      return
    }
    const data = new Uint8Array(volume.data.byteLength)
    data.set(volume.snapshots.get(name) as Uint8Array)
    volume.data = data
    this.count('revert')
  }

  async clone (volume: ModelVolume): Promise<void> {
    if (this.volumes.size >= MAX_VOLUMES) return
    const snapshot = this.chance(0.6) ? this.pick([...volume.snapshots.keys()]) : undefined
    const name = this.name('c')
    this.say(`cloneVolume ${volume.name}${snapshot === undefined ? '' : `@${snapshot}`} as ${name}`)
    const created = await this.fs.cloneVolume(snapshot === undefined ? volume.name : { volume: volume.name, snapshot }, name)
    assert.equal(created.encrypted, volume.encrypted, 'a clone is encrypted as its source is')
    const image = snapshot === undefined ? volume.data : volume.snapshots.get(snapshot) as Uint8Array
    this.volumes.set(name, { name, id: created.id, encrypted: volume.encrypted, data: Uint8Array.from(image), snapshots: new Map(), keyVersion: volume.encrypted ? 1 : 0, keyEpoch: this.epoch(), rotations: 0, pending: 0, newBackupKey: false, source: { volume: volume.name, ...(snapshot === undefined ? {} : { snapshot }) } })
    this.count(`clone ${volume.encrypted ? 'encrypted' : 'plain'}${snapshot === undefined ? '' : ' snapshot'}`)
  }

  async deleteVolume (volume: ModelVolume): Promise<void> {
    if (this.volumes.size <= 1) return
    const clones = this.dependants(volume)
    const force = clones.length > 0 && this.chance(0.7)
    if (clones.length > 0 && !force) {
      await this.refused(`deleteVolume ${volume.name} that ${clones[0]?.name} reads from`, 'BUSY', async () => await this.fs.deleteVolume(volume.name), volume)
      return
    }
    this.say(`deleteVolume ${volume.name}${force ? ' force' : ''}`)
    await this.fs.deleteVolume(volume.name, { force })
    this.volumes.delete(volume.name)
    for (const clone of clones) clone.source = undefined
    this.count(`delete ${volume.encrypted ? 'encrypted' : 'plain'} volume`)
  }

  // ---------------------------------------------------------------- keys

  /** Rotates a volume's data key, sometimes with writes in flight, waiting for the re-encryption or not. */
  async rotateVolumeKey (volume: ModelVolume): Promise<void> {
    if (!volume.encrypted) {
      await this.refused(`rotateVolumeKey of plain ${volume.name}`, 'INVALID_ARGUMENT', async () => await this.fs.rotateVolumeKey(volume.name), volume)
      return
    }
    // Each rotation keeps the old backup key (retired) in the volume's record, and a KEK rotation
    // re-wraps them all: a few per volume exercise that without making the re-wraps long.
    if (volume.rotations >= MAX_ROTATIONS) {
      await this.write(volume)
      return
    }
    await this.settle(volume)
    const writes = this.chance(0.4) ? Array.from({ length: 1 + this.int(4) }, () => this.startWrite(volume)) : []
    const wait = this.chance(0.5)
    this.say(`rotateVolumeKey ${volume.name}${wait ? ' wait' : ''} (${writes.length} writes in flight)`)
    const state = await this.fs.rotateVolumeKey(volume.name, { wait })
    await Promise.all(writes)
    volume.keyVersion++
    volume.rotations++
    volume.newBackupKey = true
    assert.equal(state.keyVersion, volume.keyVersion, `${volume.name}: the new key is current at once`)
    if (wait) {
      assert.equal(state.rotation, undefined, 'a waited rotation is over')
      assert.deepEqual(state.keyVersions, [volume.keyVersion], 'a waited rotation dropped the old key')
    } else {
      volume.pending++
      // Another one at once: refused while the re-encryption runs, or a rotation after it.
      if (this.chance(0.3)) {
        this.say(`rotateVolumeKey ${volume.name} again`)
        try {
          const again = await this.fs.rotateVolumeKey(volume.name)
          volume.keyVersion++
          volume.rotations++
          volume.pending++
          assert.equal(again.keyVersion, volume.keyVersion)
          this.count('rotate again: rotated')
        } catch (err) {
          assert.ok(err instanceof GalleonError && err.code === 'BUSY', String(err))
          this.count('rotate again: BUSY')
        }
      }
    }
    this.count(`rotate DEK${wait ? ' wait' : ''}${writes.length > 0 ? ' with writes' : ''}`)
  }

  /**
   * How many keys a KEK rotation re-wraps: each encrypted volume's DEK, backup key and retired backup
   * keys, and the older DEKs a re-encryption still running keeps (up to `pending` of them).
   */
  keyCount (): { least: number, most: number } {
    let least = 0
    let most = 0
    for (const volume of this.volumes.values()) {
      if (!volume.encrypted) continue
      least += 2 + volume.rotations
      most += 2 + volume.rotations + volume.pending
    }
    return { least, most }
  }

  /** Rotates the KEK within the provider, or moves every key to another provider. */
  async rotateKek (): Promise<void> {
    if (this.chance(0.7)) await this.settleAll()
    // The command provider runs a program per wrap and unwrap (a re-wrap of every key costs three
    // runs per key): it is moved to less often and left sooner, to keep a run short.
    const others = MODES.filter((m) => m !== this.mode && (m !== 'command' || this.chance(0.5)))
    const to = this.mode !== 'command' && this.chance(0.4) ? this.mode : this.pick(others) as Mode
    let options: { keyProvider?: KeyProvider, passphrase?: string }
    let label: string
    const apply: Array<() => void> = []
    if (to === this.mode && to === 'internal') {
      options = {}
      label = this.label('i')
      apply.push(() => { const lineage = this.internal as Lineage; lineage.current = label; lineage.holds.add(label) })
    } else if (to === this.mode && to === 'passphrase') {
      const passphrase = `fuzz passphrase ${this.labels + 1}`
      options = { passphrase }
      label = this.label('p')
      apply.push(() => { const lineage = this.pass as Lineage & { passphrase: string }; lineage.current = label; lineage.holds.add(label); lineage.passphrase = passphrase })
    } else if (to === 'internal') {
      // Into the master key file: the one this storage had (its keys, retired ones included), or a new one.
      options = { keyProvider: await InternalKeyProvider.open(this.masterPath) }
      const lineage = this.internal ?? { current: this.label('i'), holds: new Set<string>() }
      lineage.holds.add(lineage.current)
      this.internal = lineage
      label = lineage.current
    } else if (to === 'passphrase') {
      const lineage = this.pass ?? { passphrase: `fuzz passphrase ${this.labels + 1}`, current: this.label('p'), holds: new Set<string>() }
      lineage.holds.add(lineage.current)
      this.pass = lineage
      options = { keyProvider: await PassphraseKeyProvider.open(lineage.passphrase, this.saltPath, { N: PASSPHRASE_COST }) }
      label = lineage.current
    } else if (to === 'command') {
      const key = await this.newCommandKey()
      options = { keyProvider: this.commandProvider(key.keyFile, key.keyId) }
      label = key.label
      apply.push(() => { this.command = key })
    } else {
      const key = this.newExternalKey()
      options = { keyProvider: this.externalProvider(key.kek, key.keyId) }
      label = key.label
      apply.push(() => { this.external = key })
    }
    const what = `KEK ${to === this.mode ? 'rotation within' : 'move to'} ${to}`
    const writes = this.chance(0.3) ? [...this.volumes.values()].slice(0, 2).map((v) => this.startWrite(v)) : []
    this.say(`rotateKeyEncryptionKey ${this.mode} (${this.current}) -> ${to} (${label})${writes.length > 0 ? ' with writes in flight' : ''}`)
    const result = await this.fs.rotateKeyEncryptionKey(options)
    await Promise.all(writes)
    for (const change of apply) change()
    this.mode = to
    this.current = label
    assert.equal(result.provider, providerName(to))
    const { least, most } = this.keyCount()
    assert.ok(result.rewrapped >= least && result.rewrapped <= most, `every data key, backup key and retired backup key is re-wrapped: ${result.rewrapped}, expected ${least}..${most}`)
    const known = this.kekIds.get(label)
    if (known === undefined) this.kekIds.set(label, result.keyId)
    else assert.equal(result.keyId, known)
    this.count(what)
    for (const volume of this.volumes.values()) await this.checkEncryption(volume)
  }

  // ---------------------------------------------------------------- backups

  async backup (volume: ModelVolume): Promise<void> {
    const strategy = this.chance(0.5) ? 'full' : 'incremental'
    const abort = this.int(10)
    const controller = new AbortController()
    if (abort === 0) controller.abort()
    const before = (await this.fs.listBackups(volume.name).catch(() => [])).length
    this.say(`createBackup ${volume.name} ${strategy}${abort === 0 ? ' (aborted before)' : abort === 1 ? ' (aborted soon)' : ''}`)
    const running = this.fs.createBackup(volume.name, { strategy, ...(abort <= 1 ? { signal: controller.signal } : {}) })
    if (abort === 1) setTimeout(() => { controller.abort() }, this.int(5))
    let backup
    try {
      backup = await running
    } catch (err) {
      assert.ok(abort <= 1 && err instanceof GalleonError && err.code === 'CANCELLED', String(err))
      assert.equal((await this.fs.listBackups(volume.name)).length, before, 'a cancelled backup is not listed')
      this.count('backup cancelled')
      await this.checkVolume(volume, true)
      return
    }
    assert.notEqual(abort, 0, 'a backup whose signal was aborted before it began was taken')
    assert.equal(backup.encrypted, volume.encrypted, 'a backup is encrypted as its volume is')
    if (volume.encrypted && volume.newBackupKey && strategy === 'incremental') assert.equal(backup.strategy, 'full', 'the first backup after a data-key rotation is a full one')
    volume.newBackupKey = false
    this.backups.push({ id: backup.id, volumeId: volume.id, volumeName: volume.name, encrypted: volume.encrypted, image: Uint8Array.from(volume.data), kek: volume.encrypted ? this.current : undefined, keyEpoch: volume.keyEpoch, baseId: backup.baseId ?? null })
    this.count(`backup ${volume.encrypted ? 'encrypted' : 'plain'} ${strategy}`)
  }

  /**
   * Whether a backup restores now: a plain one always; an encrypted one while its volume's key
   * record still holds its backup key, else if the key provider holds the KEK that wrapped the
   * manifest's copy.
   */
  restorable (backup: ModelBackup): boolean {
    if (!backup.encrypted) return true
    const source = [...this.volumes.values()].find((v) => v.id === backup.volumeId)
    if (source !== undefined && source.encrypted && source.keyEpoch === backup.keyEpoch) return true
    return this.holds(backup.kek)
  }

  async restore (backup: ModelBackup, keep: boolean): Promise<void> {
    const name = this.name('r')
    const expected = this.restorable(backup)
    this.say(`restoreBackup ${backup.id} (${backup.volumeName}, ${backup.encrypted ? `encrypted, KEK ${backup.kek}` : 'plain'}) as ${name}: ${expected ? 'restores' : 'refused'}`)
    if (!expected) {
      await this.refused(`restore of ${backup.id} without its key`, 'DECRYPTION_FAILED', async () => await this.fs.restoreBackup(backup.id, { name }))
      assert.equal((await this.fs.listVolumes()).some((v) => v.name === name), false, 'a refused restore leaves no volume')
      const report = await this.fs.verifyBackup(backup.id)
      assert.equal(report.ok, false)
      assert.equal(report.problems[0]?.code, 'DECRYPTION_FAILED')
      return
    }
    const verified = await this.fs.verifyBackup(backup.id)
    assert.deepEqual(verified.problems, [], `backup ${backup.id} verifies`)
    const restored = await this.fs.restoreBackup(backup.id, { name })
    assert.equal(restored.encrypted, backup.encrypted, 'an encrypted backup restores into an encrypted volume')
    assert.equal(restored.sizeBytes, backup.image.byteLength)
    assert.ok(Buffer.from(await this.fs.read(name, 0, backup.image.byteLength)).equals(backup.image), `backup ${backup.id} restores byte for byte`)
    this.count(`restore ${backup.encrypted ? 'encrypted' : 'plain'}`)
    if (keep && this.volumes.size < MAX_VOLUMES) {
      this.volumes.set(name, { name, id: restored.id, encrypted: backup.encrypted, data: Uint8Array.from(backup.image), snapshots: new Map(), keyVersion: backup.encrypted ? 1 : 0, keyEpoch: this.epoch(), rotations: 0, pending: 0, newBackupKey: false, source: undefined })
      const volume = this.volumes.get(name) as ModelVolume
      await this.checkEncryption(volume)
    } else {
      await this.fs.deleteVolume(name, { force: true })
    }
  }

  // ---------------------------------------------------------------- migration

  async migrate (volume: ModelVolume): Promise<void> {
    await this.settle(volume)
    const to = volume.encrypted ? PLAIN : SEALED
    if (this.dependants(volume).length > 0) {
      await this.refused(`migrateVolume ${volume.name} that clones read from`, 'BUSY', async () => await this.fs.migrateVolume(volume.name, { storageClass: to }), volume)
      return
    }
    const abort = this.int(8)
    const controller = new AbortController()
    if (abort === 0) controller.abort()
    // A move to a plain class writes the volume's data in the clear, as asked (a cancelled move's
    // copy too, until its space is reused): its markers are exposed, and those of every write in
    // flight (one overwritten by the next may still have reached the new storage), unless the move
    // was cancelled before it began.
    const exposed = this.held(volume)
    const first = this.markers + 1
    const writes = abort > 1 && this.chance(0.4) ? Array.from({ length: 1 + this.int(3) }, () => this.startWrite(volume)) : []
    for (let n = first; n <= this.markers; n++) exposed.add(markerText(n))
    this.say(`migrateVolume ${volume.name} to ${to}${abort === 0 ? ' (aborted before)' : abort === 1 ? ' (aborted soon)' : ''} (${writes.length} writes in flight)`)
    if (volume.encrypted && abort !== 0) for (const marker of exposed) this.secret.delete(marker)
    const running = this.fs.migrateVolume(volume.name, { storageClass: to }, abort <= 1 ? { signal: controller.signal } : {})
    if (abort === 1) setTimeout(() => { controller.abort() }, this.int(10))
    let moved = true
    try {
      await running
    } catch (err) {
      assert.ok(abort <= 1 && err instanceof GalleonError && err.code === 'CANCELLED', String(err))
      moved = false
    }
    await Promise.all(writes)
    assert.ok(abort !== 0 || !moved, 'a migration whose signal was aborted before it began went ahead')
    const info = await this.fs.getVolume(volume.name)
    assert.equal(info.storageClass, moved ? to : (volume.encrypted ? SEALED : PLAIN), 'the class after the migration')
    if (moved) {
      volume.encrypted = !volume.encrypted
      volume.keyVersion = volume.encrypted ? 1 : 0
      volume.keyEpoch = this.epoch()
      volume.rotations = 0
      volume.newBackupKey = false
      volume.source = undefined
    }
    this.count(`migrate to ${to}${moved ? '' : ': cancelled'}`)
    await this.checkVolume(volume, true)
    await this.checkEncryption(volume)
  }
}
