// Seeded random sequences against encryption at rest and key management, on the file and level
// backends (one block size per run), checked against a plain byte model of every volume and
// snapshot: writes (aligned, unaligned, zeroes, every write concern), trims, expansions, snapshots,
// reverts, clones of encrypted snapshots and volumes, deletions, data-key rotations (waited for or
// not, with writes in flight), key-encryption-key rotations and moves between the internal,
// passphrase, command (a KMS program in a temp dir) and in-process external providers, full and
// incremental backups (some cancelled by an AbortSignal) restored and verified after later
// rotations, migrations between an encrypting and a plain class (some aborted, some with writes in
// flight), bad requests, and closes and reopens, some with a missing or wrong key file, a wrong or
// missing passphrase or another KMS key, which must be refused with the documented error and, once
// the configuration is put right, read back every byte. Every few steps: reads equal the model,
// getVolumeEncryption reports the key version, provider and KEK the model expects, and no marker
// written to an encrypted volume (each written block carries a unique one) is in any file under
// the storage path or the backup target (markers of plain volumes are, which shows the scan works).
// GALLEON_FUZZ_SEED replays a run (a failure prints its seed and the steps so far);
// GALLEON_FUZZ_STEPS sets the steps per run; GALLEON_FUZZ_SCAN_EVERY_STEP=1 scans for plaintext after
// every step (to find the step that leaked). The defects it found are pinned by focused tests at
// the end of this file.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  ExternalKeyProvider, GalleonError, GalleonFS, InternalKeyProvider, PassphraseKeyProvider, WriteConcern,
  commandKeyProvider, type GalleonErrorCode, type KeyProvider, type OpenOptions
} from '../src/index.js'
import { generateKey, unwrapKey, wrapKey } from '../src/crypto/keys.js'
import { seededRandom } from '../src/seeded-random.js'
import { MARKER_BYTES, markerText, markersIn, markersUnder, randomFill, writeKmsScript } from './support/crypto-fuzz-support.js'

const SEED = process.env.GALLEON_FUZZ_SEED === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.GALLEON_FUZZ_SEED)
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 150)
if (!Number.isSafeInteger(SEED) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

const dirs: string[] = []
after(async () => { for (const dir of dirs) await rm(dir, { recursive: true, force: true }) })
async function place (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-crypto-fuzz-'))
  dirs.push(dir)
  return dir
}

const SEALED = 'sealed'
const PLAIN = 'fast-local-ssd'
const MAX_VOLUMES = 6
const MIN_BLOCKS = 4
const MAX_BLOCKS = 20
const LIMIT_BLOCKS = 40
const PASSPHRASE_COST = 1024
/** Data-key rotations per volume (each leaves a retired backup key that KEK rotations re-wrap). */
const MAX_ROTATIONS = 4

type Mode = 'internal' | 'passphrase' | 'command' | 'external'
const MODES: readonly Mode[] = ['internal', 'passphrase', 'command', 'external']
const providerName = (mode: Mode): string => mode === 'command' ? 'external' : mode

interface ModelVolume {
  readonly name: string
  id: string
  encrypted: boolean
  data: Uint8Array
  /** The snapshots this test took (backups' and clones' own snapshots are not compared). */
  readonly snapshots: Map<string, Uint8Array>
  /** Version of the DEK sealing new writes (0: plain). */
  keyVersion: number
  /** Names the volume's key record: a new one comes with each create, clone, restore and move into encryption. */
  keyEpoch: number
  /** DEK rotations since the key record was made (each retires a backup key, kept in the record). */
  rotations: number
  /**
   * Rotations begun (without waiting) since the volume last had a single key: while above 0 a
   * re-encryption may still run (also one resumed at an open), and that many older keys may remain.
   */
  pending: number
  /** The next incremental backup must be a full one (a DEK rotation gave the volume a new backup key). */
  newBackupKey: boolean
  /** A clone: what it reads through to until it has its own copy. */
  source: { volume: string, snapshot?: string } | undefined
}

interface ModelBackup {
  readonly id: string
  readonly volumeId: string
  readonly volumeName: string
  readonly encrypted: boolean
  readonly image: Uint8Array
  /** The model KEK that wrapped the backup key the manifest carries. */
  readonly kek: string | undefined
  readonly keyEpoch: number
  /** The backup it builds on (incremental), as createBackup reported it. */
  readonly baseId: string | null
}

/** A KEK lineage that keeps its retired keys: the master key file, or the passphrase salt file. */
interface Lineage { current: string, readonly holds: Set<string> }

/** A misconfigured reopen: what is wrong, what must be refused and with what, and how to fix it. */
interface Misconfiguration {
  readonly what: string
  readonly options: OpenOptions
  /** open() itself is refused with this code. */
  readonly openCode?: GalleonErrorCode
  /** Else: reads and writes of encrypted volumes are refused with this code. */
  readonly useCode?: GalleonErrorCode
  /** And a new encrypted volume is refused with one of these. */
  readonly createCodes?: readonly GalleonErrorCode[]
  readonly check?: () => Promise<void>
  readonly fix: () => Promise<void>
}

class EncryptionFuzz {
  g: GalleonFS | undefined
  readonly random: () => number
  readonly log: string[] = []
  readonly stats = new Map<string, number>()
  readonly volumes = new Map<string, ModelVolume>()
  readonly backups: ModelBackup[] = []
  /** Markers written to encrypted volumes and never exposed (a move to a plain class exposes a volume's). */
  readonly secret = new Set<string>()
  readonly plain = new Set<string>()
  storagePath = ''
  target = ''
  kmsDir = ''
  kmsScript = ''
  mode: Mode
  /** The model KEK wrapping every key now, and the provider's key id for each model KEK seen. */
  current = ''
  readonly kekIds = new Map<string, string>()
  internal: Lineage | undefined
  pass: (Lineage & { passphrase: string }) | undefined
  command: { keyFile: string, keyId: string } | undefined
  external: { kek: Uint8Array, keyId: string } | undefined
  #names = 0
  #labels = 0
  #epochs = 0
  #markers: number

  constructor (seed: number, readonly run: number, readonly backend: 'file' | 'level', readonly bs: number, mode: Mode) {
    this.random = seededRandom(seed)
    this.mode = mode
    this.#markers = run * 0x1000000
  }

  get fs (): GalleonFS { return this.g as GalleonFS }
  int (below: number): number { return Math.floor(this.random() * below) }
  chance (p: number): boolean { return this.random() < p }
  pick<T> (items: readonly T[]): T | undefined { return items.length === 0 ? undefined : items[this.int(items.length)] }
  name (prefix: string): string { return `${prefix}${++this.#names}` }
  label (prefix: string): string { return `${prefix}${++this.#labels}` }
  epoch (): number { return ++this.#epochs }
  count (what: string): void { this.stats.set(what, (this.stats.get(what) ?? 0) + 1) }
  say (line: string): void { this.log.push(line) }
  get masterPath (): string { return join(this.storagePath, 'master.key') }
  get saltPath (): string { return join(this.storagePath, 'passphrase.salt') }

  // ---------------------------------------------------------------- key providers

  commandProvider (keyFile: string, keyId: string): KeyProvider {
    return commandKeyProvider({ keyId, command: process.execPath, args: [this.kmsScript, keyFile] })
  }

  externalProvider (kek: Uint8Array, keyId: string): KeyProvider {
    return new ExternalKeyProvider({ keyId, wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
  }

  async newCommandKey (): Promise<{ keyFile: string, keyId: string, label: string }> {
    const label = this.label('c')
    const keyFile = join(this.kmsDir, `${label}.key`)
    await writeFile(keyFile, randomBytes(32).toString('hex') + '\n')
    this.kekIds.set(label, `kms-${label}`)
    return { keyFile, keyId: `kms-${label}`, label }
  }

  newExternalKey (): { kek: Uint8Array, keyId: string, label: string } {
    const label = this.label('e')
    this.kekIds.set(label, `ext-${label}`)
    return { kek: generateKey(), keyId: `ext-${label}`, label }
  }

  /** What open() takes for the current provider. */
  options (): OpenOptions {
    const base: OpenOptions = { storagePath: this.storagePath, backend: this.backend, blockSize: this.bs, backupTarget: this.target }
    switch (this.mode) {
      case 'internal': return base
      case 'passphrase': return { ...base, passphrase: (this.pass as { passphrase: string }).passphrase, passphraseCost: PASSPHRASE_COST }
      case 'command': return { ...base, keyProvider: this.commandProvider((this.command as { keyFile: string }).keyFile, (this.command as { keyId: string }).keyId) }
      case 'external': return { ...base, keyProvider: this.externalProvider((this.external as { kek: Uint8Array }).kek, (this.external as { keyId: string }).keyId) }
    }
  }

  /** Whether the current provider can unwrap what model KEK `label` wrapped. */
  holds (label: string | undefined): boolean {
    if (label === undefined) return false
    if (this.mode === 'internal') return this.internal?.holds.has(label) === true
    if (this.mode === 'passphrase') return this.pass?.holds.has(label) === true
    return label === this.current
  }

  async open (): Promise<void> {
    this.storagePath = await place()
    this.target = await place()
    this.kmsDir = await place()
    this.kmsScript = await writeKmsScript(this.kmsDir)
    if (this.mode === 'internal') this.internal = { current: this.label('i'), holds: new Set() }
    if (this.mode === 'passphrase') this.pass = { passphrase: 'fuzz passphrase 0', current: this.label('p'), holds: new Set() }
    if (this.mode === 'command') this.command = await this.newCommandKey()
    if (this.mode === 'external') this.external = this.newExternalKey()
    this.current = this.internal?.current ?? this.pass?.current ?? [...this.kekIds.keys()][0] as string
    this.internal?.holds.add(this.current)
    this.pass?.holds.add(this.current)
    this.say(`open ${this.backend}, ${this.bs}-byte blocks, ${this.mode} provider (${this.current})`)
    this.g = await GalleonFS.open(this.options())
    await this.fs.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
    await this.create(true)
    await this.create(false)
  }

  // ---------------------------------------------------------------- data

  /** Random bytes for [offset, offset + length) of `volume`, with a new marker in each block the range covers enough of. */
  data (volume: ModelVolume, offset: number, length: number): Uint8Array {
    const out = randomFill(new Uint8Array(length), this.random)
    const end = offset + length
    for (let block = Math.floor(offset / this.bs); block * this.bs < end; block++) {
      const from = Math.max(offset, block * this.bs)
      const to = Math.min(end, (block + 1) * this.bs)
      if (to - from < MARKER_BYTES) continue
      const marker = markerText(++this.#markers)
      out.set(Buffer.from(marker, 'latin1'), from - offset + this.int(to - from - MARKER_BYTES + 1))
      ;(volume.encrypted ? this.secret : this.plain).add(marker)
    }
    return out
  }

  /**
   * Markers a volume may hold now: in its live data, its snapshots, and the snapshots its backups
   * keep as their bases (the image of any of its backups, to be safe).
   */
  held (volume: ModelVolume): Set<string> {
    const found = markersIn(volume.data)
    for (const snapshot of volume.snapshots.values()) markersIn(snapshot, found)
    for (const backup of this.backups) if (backup.volumeId === volume.id) markersIn(backup.image, found)
    return found
  }

  // ---------------------------------------------------------------- checks

  async checkVolume (volume: ModelVolume, snapshots = false): Promise<void> {
    const info = await this.fs.getVolume(volume.name)
    assert.equal(info.id, volume.id, `${volume.name}: id`)
    assert.equal(info.sizeBytes, volume.data.byteLength, `${volume.name}: size`)
    assert.equal(info.encrypted, volume.encrypted, `${volume.name}: encrypted`)
    assert.ok(Buffer.from(await this.fs.read(volume.name, 0, volume.data.byteLength)).equals(volume.data), `${volume.name} reads as the model`)
    if (!snapshots) return
    const listed = (await this.fs.listSnapshots(volume.name)).filter((s) => s.name.startsWith('snap'))
    assert.deepEqual(listed.map((s) => s.name).sort(), [...volume.snapshots.keys()].sort(), `${volume.name}: snapshots`)
    for (const [name, image] of volume.snapshots) {
      assert.ok(Buffer.from(await this.fs.read({ volume: volume.name, snapshot: name }, 0, image.byteLength)).equals(image), `${volume.name}@${name} reads as the model`)
    }
  }

  /** getVolumeEncryption says what the model does: encrypted or not, key version, provider and KEK. */
  async checkEncryption (volume: ModelVolume): Promise<void> {
    const info = await this.fs.getVolumeEncryption(volume.name)
    if (!volume.encrypted) {
      assert.deepEqual(info, { encrypted: false }, `${volume.name}: plain`)
      return
    }
    assert.equal(info.encrypted, true, `${volume.name}: encrypted`)
    assert.equal(info.algorithm, 'AES-256-GCM')
    assert.equal(info.unavailable, undefined, `${volume.name}: keys available`)
    assert.equal(info.keyVersion, volume.keyVersion, `${volume.name}: key version`)
    assert.equal(info.provider, providerName(this.mode), `${volume.name}: provider`)
    const kekId = this.kekIds.get(this.current)
    if (kekId === undefined) this.kekIds.set(this.current, info.kekId as string)
    else assert.equal(info.kekId, kekId, `${volume.name}: KEK ${this.current}`)
    assert.ok(info.keyVersions?.includes(volume.keyVersion), `${volume.name}: key versions ${String(info.keyVersions)}`)
    if (info.rotation === undefined) assert.deepEqual(info.keyVersions, [volume.keyVersion], `${volume.name}: one key once the rotation is over`)
    else assert.ok(volume.pending > 0, `${volume.name}: a re-encryption runs that the model did not start`)
    assert.ok((info.keyVersions?.length ?? 0) <= 1 + volume.pending, `${volume.name}: key versions ${String(info.keyVersions)}`)
  }

  async checkAll (): Promise<void> {
    this.say('check all')
    // The key files keep every KEK of their lineage: the current one first, then the retired ones.
    if (this.internal !== undefined && this.internal.holds.size > 0) {
      const lines = (await readFile(this.masterPath, 'utf8')).trim().split('\n')
      assert.equal(lines.length, this.internal.holds.size, 'master.key holds the current and every retired master key')
      assert.equal((await stat(this.masterPath)).mode & 0o777, 0o600)
    }
    if (this.pass !== undefined) {
      const record = JSON.parse(await readFile(this.saltPath, 'utf8')) as { retired?: unknown[] }
      assert.equal(record.retired?.length ?? 0, this.pass.holds.size - 1, 'passphrase.salt keeps the KEK of every earlier passphrase')
    }
    const listed = (await this.fs.listVolumes()).map((v) => v.name).sort()
    assert.deepEqual(listed, [...this.volumes.keys()].sort(), 'the volumes')
    for (const volume of this.volumes.values()) {
      await this.checkVolume(volume, true)
      await this.checkEncryption(volume)
    }
  }

  /** No secret marker in any file under the storage path or on the backup target. */
  async scan (control = false): Promise<void> {
    this.count('scan')
    for (const dir of [this.storagePath, this.target]) {
      const found = await markersUnder(dir)
      const leaked = [...found].filter(([marker]) => this.secret.has(marker)).map(([marker, files]) => `${marker} in ${files.join(', ')}`)
      assert.deepEqual(leaked, [], `plaintext of an encrypted volume under ${dir === this.target ? 'the backup target' : 'the storage path'}`)
      if (control && dir === this.storagePath) {
        const live = new Set<string>()
        for (const volume of this.volumes.values()) if (!volume.encrypted) markersIn(volume.data, live)
        if (live.size > 0) assert.ok([...live].some((marker) => found.has(marker)), 'the scan finds markers of plain volumes (control)')
      }
    }
  }

  /** Waits (polling, with a deadline) until a volume's re-encryption is over. */
  async settle (volume: ModelVolume): Promise<void> {
    if (volume.pending === 0) return
    const deadline = Date.now() + 60_000
    for (;;) {
      const info = await this.fs.getVolumeEncryption(volume.name)
      if (info.rotation === undefined) break
      assert.ok(Date.now() < deadline, `${volume.name}: the re-encryption did not end (${JSON.stringify(info.rotation)})`)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    volume.pending = 0
  }

  async settleAll (): Promise<void> {
    for (const volume of this.volumes.values()) await this.settle(volume)
  }

  /** `run` is refused with `code` (a GalleonError), and the volume still reads as the model. */
  async refused (what: string, code: GalleonErrorCode, run: () => Promise<unknown>, volume?: ModelVolume): Promise<void> {
    this.say(`refused? ${what} -> ${code}`)
    this.count(`refused ${code}`)
    let error: unknown
    try {
      await run()
    } catch (err) {
      error = err
    }
    assert.ok(error instanceof GalleonError, `${what}: expected ${code}, got ${error === undefined ? 'success' : String(error)}`)
    assert.equal(error.code, code, `${what}: ${error.message}`)
    assert.ok(error.message.length > 20, `${what}: the message explains`)
    if (volume !== undefined) await this.checkVolume(volume)
  }

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
    const first = this.#markers + 1
    const data = zeroes ? new Uint8Array(length) : this.data(volume, offset, length)
    volume.data.set(data, offset)
    const asBlock = aligned && length === this.bs && this.chance(0.5)
    const markers = this.#markers < first ? '' : ` markers ${markerText(first)}..${markerText(this.#markers)}`
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
      const passphrase = `fuzz passphrase ${this.#labels + 1}`
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
      const lineage = this.pass ?? { passphrase: `fuzz passphrase ${this.#labels + 1}`, current: this.label('p'), holds: new Set<string>() }
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
    const first = this.#markers + 1
    const writes = abort > 1 && this.chance(0.4) ? Array.from({ length: 1 + this.int(3) }, () => this.startWrite(volume)) : []
    for (let n = first; n <= this.#markers; n++) exposed.add(markerText(n))
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

  // ---------------------------------------------------------------- close and reopen

  async reopen (): Promise<void> {
    this.say(`close and reopen (${this.mode})`)
    await this.fs.close()
    this.g = undefined
    this.g = await GalleonFS.open(this.options())
    this.count('reopen')
    // A re-encryption cut short by the close resumes now.
    await this.checkAll()
  }

  /** The ways the current provider can be misconfigured at an open: each prepares the files and says how to fix them. */
  misconfigurations (): Array<() => Promise<Misconfiguration>> {
    const right = this.options()
    const aside = async (path: string): Promise<() => Promise<void>> => {
      await rename(path, `${path}.aside`)
      return async () => { await rename(`${path}.aside`, path) }
    }
    const nothing = async (): Promise<void> => {}
    const stranger = async (): Promise<Misconfiguration> => {
      const other = this.newExternalKey()
      return { what: 'another KMS key', options: { ...right, passphrase: undefined, passphraseCost: undefined, keyProvider: this.externalProvider(other.kek, other.keyId) }, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'], fix: nothing }
    }
    const internal = async (): Promise<Misconfiguration> => ({ what: 'no key provider (internal)', options: { ...right, passphrase: undefined, passphraseCost: undefined, keyProvider: undefined }, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'], fix: nothing })
    const master = this.masterPath
    switch (this.mode) {
      case 'internal':
        return [
          async () => ({
            what: 'master.key missing', options: right, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'],
            check: async () => { await assert.rejects(stat(master), { code: 'ENOENT' }, 'no new master.key is made') },
            fix: await aside(master)
          }),
          async () => {
            const saved = await readFile(master, 'utf8')
            const wrong = randomBytes(32).toString('hex') + '\n'
            await rm(master)
            await writeFile(master, wrong, { mode: 0o600 })
            return {
              what: 'another master.key', options: right, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'],
              check: async () => { assert.equal(await readFile(master, 'utf8'), wrong, 'nothing rotated the wrong key file') },
              fix: async () => { await rm(master); await writeFile(master, saved, { mode: 0o600 }); await chmod(master, 0o600) }
            }
          },
          async () => {
            await chmod(master, 0o644)
            return { what: 'master.key readable by others', options: right, useCode: 'INVALID_ARGUMENT', createCodes: ['INVALID_ARGUMENT'], fix: async () => { await chmod(master, 0o600) } }
          },
          stranger
        ]
      case 'passphrase':
        return [
          async () => ({ what: 'wrong passphrase', options: { ...right, passphrase: 'not the fuzz passphrase' }, openCode: 'DECRYPTION_FAILED', fix: nothing }),
          async () => ({ what: 'passphrase.salt missing', options: right, openCode: 'DECRYPTION_FAILED', fix: await aside(this.saltPath) }),
          internal,
          stranger
        ]
      case 'command': {
        const { keyFile, keyId } = this.command as { keyFile: string, keyId: string }
        return [
          // A KMS that cannot wrap at all makes a new key BACKEND_UNAVAILABLE; one that holds another key, DECRYPTION_FAILED.
          async () => ({ what: 'the KMS key file missing', options: right, useCode: 'DECRYPTION_FAILED', createCodes: ['BACKEND_UNAVAILABLE'], fix: await aside(keyFile) }),
          async () => {
            const wrongFile = join(this.kmsDir, 'wrong.key')
            await writeFile(wrongFile, randomBytes(32).toString('hex') + '\n')
            return { what: 'the KMS with another key', options: { ...right, keyProvider: this.commandProvider(wrongFile, keyId) }, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'], fix: nothing }
          },
          internal
        ]
      }
      case 'external':
        return [stranger, internal]
    }
  }

  /**
   * Closes, reopens with the key configuration wrong in one way (refused as documented: nothing of
   * an encrypted volume is read or written, plain volumes work, nothing new is wrapped under the
   * wrong key), then with it put right: every byte reads back.
   */
  async misconfiguredReopen (): Promise<void> {
    const encrypted = [...this.volumes.values()].filter((v) => v.encrypted)
    // A storage without encrypted volumes takes any key: nothing to refuse.
    if (encrypted.length === 0) return
    await this.fs.close()
    this.g = undefined
    const wrong = await (this.pick(this.misconfigurations()) as () => Promise<Misconfiguration>)()
    this.say(`reopen with ${wrong.what} (${this.mode})`)
    this.count(`misconfigured: ${wrong.what}`)
    if (wrong.openCode !== undefined) {
      await this.refused(`open with ${wrong.what}`, wrong.openCode, async () => { const g = await GalleonFS.open(wrong.options); await g.close() })
    } else {
      const g = await GalleonFS.open(wrong.options)
      this.g = g
      try {
        for (const volume of this.volumes.values()) {
          if (!volume.encrypted) {
            await this.checkVolume(volume)
            continue
          }
          const code = wrong.useCode as GalleonErrorCode
          // Blocks holding data are refused (a block never written reads as zeros: no key is needed to know that).
          const written = (image: Uint8Array): number | undefined => {
            const at = image.findIndex((byte) => byte !== 0)
            return at < 0 ? undefined : Math.floor(at / this.bs)
          }
          const block = written(volume.data)
          if (block !== undefined) {
            await this.refused(`read ${volume.name} with ${wrong.what}`, code, async () => await g.read(volume.name, 0, volume.data.byteLength))
            await this.refused(`readBlock ${volume.name} ${block} with ${wrong.what}`, code, async () => await g.readBlock(volume.name, block))
          }
          await this.refused(`write ${volume.name} with ${wrong.what}`, code, async () => await g.writeBlock(volume.name, 0, new Uint8Array(this.bs).fill(7)))
          if (this.chance(0.3)) await this.refused(`rotateVolumeKey ${volume.name} with ${wrong.what}`, code, async () => await g.rotateVolumeKey(volume.name, { wait: true }))
          for (const [snapshot, image] of volume.snapshots) {
            const at = written(image)
            if (at === undefined) continue
            await this.refused(`read ${volume.name}@${snapshot} with ${wrong.what}`, code, async () => await g.read({ volume: volume.name, snapshot }, at * this.bs, this.bs))
            break
          }
          const info = await g.getVolumeEncryption(volume.name)
          assert.equal(typeof info.unavailable, 'string', `${volume.name}: getVolumeEncryption says why its keys are unavailable`)
        }
        // A plain volume still takes writes.
        const plain = [...this.volumes.values()].find((v) => !v.encrypted)
        if (plain !== undefined) {
          await this.startWrite(plain)
          await this.checkVolume(plain)
        }
        const names = (await g.listVolumes()).map((v) => v.name).sort()
        let error: unknown
        try {
          await g.createVolume({ name: 'never', sizeBytes: 4 * this.bs, storageClass: SEALED })
        } catch (err) {
          error = err
        }
        assert.ok(error instanceof GalleonError && (wrong.createCodes ?? []).includes(error.code), `a new encrypted volume with ${wrong.what}: expected ${String(wrong.createCodes)}, got ${String(error)}`)
        assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), names, 'a refused create leaves no volume')
        // Nor are the keys moved away from the right KEK by a provider that cannot open them.
        const elsewhere = this.newExternalKey()
        error = undefined
        try {
          await g.rotateKeyEncryptionKey({ keyProvider: this.externalProvider(elsewhere.kek, elsewhere.keyId) })
        } catch (err) {
          error = err
        }
        assert.ok(error instanceof GalleonError && (wrong.createCodes ?? []).includes(error.code), `a KEK move with ${wrong.what}: expected ${String(wrong.createCodes)}, got ${String(error)}`)
        await wrong.check?.()
      } finally {
        this.g = undefined
        await g.close()
      }
    }
    await wrong.fix()
    this.say('reopen with the configuration put right')
    this.g = await GalleonFS.open(this.options())
    await this.checkAll()
  }

  // ---------------------------------------------------------------- bad requests

  async badRequest (volume: ModelVolume): Promise<void> {
    const cases: Array<() => Promise<void>> = [
      async () => { await this.refused('a WriteReplicated write without replication', 'WRITE_CONCERN_UNSATISFIED', async () => await this.fs.writeBlock(volume.name, 0, new Uint8Array(this.bs).fill(9), WriteConcern.WriteReplicated), volume) },
      async () => { await this.refused('a WriteDistributed write without replication', 'WRITE_CONCERN_UNSATISFIED', async () => await this.fs.write(volume.name, 1, new Uint8Array(10).fill(9), WriteConcern.WriteDistributed), volume) },
      async () => { await this.refused('rotateKeyEncryptionKey with a keyProvider that is not one', 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ keyProvider: { name: 'x' } as never })) },
      async () => { await this.refused('rotateKeyEncryptionKey with a keyProvider and a passphrase', 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ keyProvider: this.externalProvider(generateKey(), 'both'), passphrase: 'long enough passphrase' })) },
      async () => {
        // A KMS that wraps but may not unwrap: refused before anything is re-wrapped.
        const kek = generateKey()
        const encryptOnly = new ExternalKeyProvider({ keyId: 'encrypt-only', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async () => { throw new Error('AccessDenied: kms:Decrypt') } })
        await this.settleAll()
        await this.refused('rotateKeyEncryptionKey to a provider that cannot unwrap', 'BACKEND_UNAVAILABLE', async () => await this.fs.rotateKeyEncryptionKey({ keyProvider: encryptOnly }))
      },
      async () => {
        if (this.mode === 'passphrase') await this.refused('a passphrase change to a short passphrase', 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ passphrase: 'short' }))
        else await this.refused(`a passphrase change with the ${this.mode} provider`, 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ passphrase: 'long enough passphrase' }))
      },
      async () => {
        if (this.mode === 'command' || this.mode === 'external') await this.refused(`a KEK rotation of the ${this.mode} provider without a new provider`, 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey())
      },
      async () => {
        const backup = this.pick(this.backups.filter((b) => b.encrypted && this.restorable(b)))
        const plain = backup === undefined ? undefined : this.pick([...this.volumes.values()].filter((v) => !v.encrypted && v.data.byteLength >= backup.image.byteLength))
        if (backup !== undefined && plain !== undefined) await this.refused(`restore encrypted ${backup.id} over plain ${plain.name}`, 'INVALID_ARGUMENT', async () => await this.fs.restoreBackup(backup.id, { volume: plain.name }), plain)
      }
    ]
    await (this.pick(cases) as () => Promise<void>)()
    for (const v of this.volumes.values()) await this.checkEncryption(v)
  }

  // ---------------------------------------------------------------- the run

  /** Milliseconds spent per kind of step (reported as a diagnostic: where a run's time goes). */
  readonly times = new Map<string, number>()

  async step (): Promise<void> {
    const started = Date.now()
    const roll = this.int(100)
    await this.#step(roll)
    const kind = ['write', 'trim', 'read', 'expand', 'snapshot', 'deleteSnapshot', 'revert', 'clone', 'deleteVolume', 'create', 'rotateVolumeKey', 'rotateKek', 'backup', 'restore', 'migrate', 'reopen', 'misconfigured', 'bad'][[20, 25, 30, 33, 39, 42, 45, 50, 53, 57, 66, 71, 78, 83, 88, 91, 95, 100].findIndex((limit) => roll < limit)] as string
    this.times.set(kind, (this.times.get(kind) ?? 0) + Date.now() - started)
  }

  async #step (roll: number): Promise<void> {
    const volume = this.pick([...this.volumes.values()]) as ModelVolume
    let check = true
    if (roll < 20) await this.write(volume)
    else if (roll < 25) await this.trim(volume)
    else if (roll < 30) { await this.read(volume); check = false } else if (roll < 33) await this.expand(volume)
    else if (roll < 39) await this.snapshot(volume)
    else if (roll < 42) await this.deleteSnapshot(volume)
    else if (roll < 45) await this.revert(volume)
    else if (roll < 50) await this.clone(volume)
    else if (roll < 53) { await this.deleteVolume(volume); check = false } else if (roll < 57) {
      if (this.volumes.size < MAX_VOLUMES) await this.create(this.chance(0.6))
      check = false
    } else if (roll < 66) await this.rotateVolumeKey(volume)
    else if (roll < 71) await this.rotateKek()
    else if (roll < 78) await this.backup(volume)
    else if (roll < 83) {
      const backup = this.pick(this.backups)
      if (backup !== undefined) await this.restore(backup, this.chance(0.4))
    } else if (roll < 88) await this.migrate(volume)
    else if (roll < 91) await this.reopen()
    else if (roll < 95) await this.misconfiguredReopen()
    else await this.badRequest(volume)
    if (check && this.volumes.has(volume.name)) await this.checkVolume(volume, roll >= 33)
  }

  async finish (): Promise<void> {
    this.say('finish')
    await this.settleAll()
    await this.checkAll()
    for (const backup of this.backups) await this.restore(backup, false)
    await this.scan()
    await this.fs.close()
    this.g = undefined
    // Everything is on disk now: no secret marker, and the plain volumes' markers are found.
    await this.scan(true)
  }
}

describe('encryption at rest and key management against a model (seeded random operations)', () => {
  const runs = [
    [0, 'file', 4096, 'internal'],
    [1, 'level', 512, 'passphrase'],
    [2, 'file', 1024, 'command'],
    [3, 'level', 4096, 'external']
  ] as const
  for (const [run, backend, blockSize, mode] of runs) {
    const seed = SEED + run
    it(`run ${run}: ${backend} backend, ${blockSize}-byte blocks, starting with the ${mode} provider, seed ${seed}, ${STEPS} steps`, { timeout: 300_000 }, async (t) => {
      const fuzz = new EncryptionFuzz(seed, run, backend, blockSize, mode)
      try {
        await fuzz.open()
        for (let step = 0; step < STEPS; step++) {
          fuzz.say(`-- step ${step}`)
          await fuzz.step()
          if (step % 10 === 9) await fuzz.checkAll()
          if (step % 25 === 24 || process.env.GALLEON_FUZZ_SCAN_EVERY_STEP === '1') await fuzz.scan()
        }
        await fuzz.finish()
        t.diagnostic([...fuzz.stats].sort().map(([what, n]) => `${what}: ${n}`).join(', '))
        t.diagnostic(`ms per kind of step: ${[...fuzz.times].sort((a, b) => b[1] - a[1]).map(([what, ms]) => `${what} ${ms}`).join(', ')}`)
      } catch (err) {
        console.error(`encryption model fuzz failed: GALLEON_FUZZ_SEED=${SEED} (run ${run}, seed ${seed}) GALLEON_FUZZ_STEPS=${STEPS}; steps so far:\n${fuzz.log.join('\n')}`)
        throw err
      } finally {
        await fuzz.g?.close()
      }
    })
  }
})

describe('key management: defects the fuzz found', () => {
  it('a KEK move to a provider that cannot unwrap is refused also while no volume is encrypted, and the old provider stays', async () => {
    const storagePath = await place()
    const kek = generateKey()
    const working = new ExternalKeyProvider({ keyId: 'working', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
    const g = await GalleonFS.open({ storagePath, keyProvider: working })
    try {
      await g.createVolume({ name: 'plain', sizeBytes: 4096 * 4 })
      const other = generateKey()
      const encryptOnly = new ExternalKeyProvider({ keyId: 'encrypt-only', wrap: async (dek, context) => wrapKey(other, dek, context), unwrap: async () => { throw new Error('AccessDenied: kms:Decrypt') } })
      await assert.rejects(g.rotateKeyEncryptionKey({ keyProvider: encryptOnly }), (err: unknown) => err instanceof GalleonError && err.code === 'BACKEND_UNAVAILABLE' && /unwrap/.test(err.message))
      // The provider in use still wraps the keys of new encrypted volumes.
      await g.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'secret', sizeBytes: 4096 * 4, storageClass: SEALED })
      assert.equal((await g.getVolumeEncryption('secret')).kekId, 'working')
    } finally {
      await g.close()
    }
  })
})

describe('key management: defects the fuzz found in backups', () => {
  it('an incremental backup taken after a KEK move to another provider restores and verifies with that provider once its volume is gone, though its full base was taken under the old one', async () => {
    const storagePath = await place()
    const provider = (keyId: string, kek: Uint8Array): ExternalKeyProvider => new ExternalKeyProvider({ keyId, wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async (wrapped, context) => unwrapKey(kek, wrapped, context) })
    const before = provider('kms-old', generateKey())
    const now = provider('kms-new', generateKey())
    const g = await GalleonFS.open({ storagePath, keyProvider: before, backupTarget: await place() })
    try {
      await g.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      await g.createVolume({ name: 'secret', sizeBytes: 4096 * 4, storageClass: SEALED })
      await g.writeBlock('secret', 0, new Uint8Array(4096).fill(1))
      const full = await g.createBackup('secret', { strategy: 'full' })
      // The old KMS key is retired: every key moves to the new one.
      await g.rotateKeyEncryptionKey({ keyProvider: now })
      await g.writeBlock('secret', 1, new Uint8Array(4096).fill(2))
      const incremental = await g.createBackup('secret', { strategy: 'incremental' })
      assert.equal(incremental.baseId, full.id)
      await g.deleteVolume('secret', { force: true })
      // Taken under the new provider: it restores with it (the full alone, taken under the old one, does not).
      assert.deepEqual((await g.verifyBackup(incremental.id)).problems, [])
      const restored = await g.restoreBackup(incremental.id, { name: 'back' })
      assert.deepEqual(await g.readBlock(restored, 0), new Uint8Array(4096).fill(1))
      assert.deepEqual(await g.readBlock(restored, 1), new Uint8Array(4096).fill(2))
      await assert.rejects(g.restoreBackup(full.id, { name: 'old' }), (err: unknown) => err instanceof GalleonError && err.code === 'DECRYPTION_FAILED')
    } finally {
      await g.close()
    }
  })
})

describe('key management: a revert during a re-encryption', () => {
  it('is not refused as if the user were writing: it succeeds, or is refused with BUSY saying the volume is re-encrypting', async () => {
    const storagePath = await place()
    const g = await GalleonFS.open({ storagePath, blockSize: 512 })
    try {
      await g.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
      const size = 4096 * 512
      await g.createVolume({ name: 'secret', sizeBytes: size, storageClass: SEALED })
      const base = new Uint8Array(randomBytes(size))
      await g.write('secret', 0, base)
      await g.createSnapshot('secret', 'base')
      await g.write('secret', 0, new Uint8Array(512 * 64).fill(5))
      await g.rotateVolumeKey('secret')
      const refusals: string[] = []
      let tried = 0
      let reverted = false
      // Reverts again and again while the re-encryption runs (each finds the volume at the snapshot
      // after the first): some come while it holds block locks.
      while (tried < 500 && (await g.getVolumeEncryption('secret')).rotation !== undefined) {
        tried++
        try {
          await g.restoreSnapshot('secret', 'base')
          reverted = true
        } catch (err) {
          assert.ok(err instanceof GalleonError && err.code === 'BUSY', String(err))
          refusals.push(err.message)
        }
      }
      assert.ok(tried > 0, 'the revert was tried while the volume re-encrypted')
      // Once the re-encryption is over (it may still be retiring the old key), the revert goes through.
      for (const deadline = Date.now() + 30_000; !reverted;) {
        try {
          await g.restoreSnapshot('secret', 'base')
          reverted = true
        } catch (err) {
          assert.ok(err instanceof GalleonError && err.code === 'BUSY' && Date.now() < deadline, String(err))
          refusals.push(err.message)
          await new Promise((resolve) => setTimeout(resolve, 5))
        }
      }
      for (const message of refusals) assert.match(message, /re-?encrypt/, 'a refusal names the re-encryption, not writers to stop')
      assert.ok(Buffer.from(await g.read('secret', 0, size)).equals(base), 'the volume reads as the snapshot')
    } finally {
      await g.close()
    }
  })
})
