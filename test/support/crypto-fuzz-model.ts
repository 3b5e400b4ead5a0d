// The model behind test/encryption-model-fuzz.test.ts: the plain byte model of every volume,
// snapshot and backup, the key-encryption-key lineages and providers the run has used, the markers
// written, and the checks against the library (reads, getVolumeEncryption, key files, a plaintext scan).

import assert from 'node:assert/strict'
import { readFile, stat, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import {
  ExternalKeyProvider, GalleonError, type GalleonFS,
  commandKeyProvider, type GalleonErrorCode, type KeyProvider, type OpenOptions
} from '../../src/index.js'
import { generateKey, unwrapKey, wrapKey } from '../../src/crypto/keys.js'
import { seededRandom } from '../../src/seeded-random.js'
import { MARKER_BYTES, markerText, markersIn, markersUnder, randomFill } from './crypto-fuzz-support.js'
import { ClassicLevel } from 'classic-level'

/** Markers in the values of the LevelDB databases under `dir` (blocks-level, metadata), as LevelDB returns them (decompressed); only while no instance has them open. */
async function markersInLevelValues (dir: string): Promise<Map<string, string[]>> {
  const found = new Map<string, string[]>()
  for (const name of ['blocks-level', 'metadata']) {
    const db = new ClassicLevel<Uint8Array, Uint8Array>(join(dir, name), { keyEncoding: 'view', valueEncoding: 'view', createIfMissing: false })
    await db.open()
    try {
      for await (const value of db.values()) for (const marker of markersIn(value)) found.set(marker, [...found.get(marker) ?? [], `${name} (a value)`])
    } finally {
      await db.close()
    }
  }
  return found
}

export const SEALED = 'sealed'
export const PLAIN = 'fast-local-ssd'
export const MAX_VOLUMES = 6
export const MIN_BLOCKS = 4
export const MAX_BLOCKS = 20
export const LIMIT_BLOCKS = 40
export const PASSPHRASE_COST = 1024
/** Data-key rotations per volume (each leaves a retired backup key that KEK rotations re-wrap). */
export const MAX_ROTATIONS = 4

export type Mode = 'internal' | 'passphrase' | 'command' | 'external'
export const MODES: readonly Mode[] = ['internal', 'passphrase', 'command', 'external']
export const providerName = (mode: Mode): string => mode === 'command' ? 'external' : mode

export interface ModelVolume {
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

export interface ModelBackup {
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
export interface Lineage { current: string, readonly holds: Set<string> }

/** A misconfigured reopen: what is wrong, what must be refused and with what, and how to fix it. */
export interface Misconfiguration {
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

/** The state of a run, what the model expects, and the checks of the library against it. */
export class CryptoFuzzModel {
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
  #epochs = 0
  /** Labels of the model KEKs made so far (also numbers the passphrases). */
  protected labels = 0
  /** The number of the last marker written (the markers of run n are numbered from n * 0x1000000). */
  protected markers: number

  /** `place` makes a temporary directory (the test file removes them after the tests). */
  constructor (seed: number, readonly run: number, readonly backend: 'file' | 'level', readonly bs: number, mode: Mode, readonly place: () => Promise<string>) {
    this.random = seededRandom(seed)
    this.mode = mode
    this.markers = run * 0x1000000
  }

  get fs (): GalleonFS { return this.g as GalleonFS }
  int (below: number): number { return Math.floor(this.random() * below) }
  chance (p: number): boolean { return this.random() < p }
  pick<T> (items: readonly T[]): T | undefined { return items.length === 0 ? undefined : items[this.int(items.length)] }
  name (prefix: string): string { return `${prefix}${++this.#names}` }
  label (prefix: string): string { return `${prefix}${++this.labels}` }
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

  // ---------------------------------------------------------------- data

  /** Random bytes for [offset, offset + length) of `volume`, with a new marker in each block the range covers enough of. */
  data (volume: ModelVolume, offset: number, length: number): Uint8Array {
    const out = randomFill(new Uint8Array(length), this.random)
    const end = offset + length
    for (let block = Math.floor(offset / this.bs); block * this.bs < end; block++) {
      const from = Math.max(offset, block * this.bs)
      const to = Math.min(end, (block + 1) * this.bs)
      if (to - from < MARKER_BYTES) continue
      const marker = markerText(++this.markers)
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
      // LevelDB compresses its table files with snappy, which stores a marker sharing a prefix with
      // an earlier one in the same table block as a back-reference: not verbatim in any file. Once
      // the instance is closed, the level stores' values are read back (decompressed) and scanned too.
      if (control && dir === this.storagePath && this.backend === 'level') {
        for (const [marker, places] of await markersInLevelValues(dir)) found.set(marker, [...found.get(marker) ?? [], ...places])
      }
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
}
