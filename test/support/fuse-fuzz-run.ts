// Child process of test/fuse-model-fuzz.test.ts: seeded random operations on a volume mounted
// read-write through the real kernel FUSE, checked against a plain in-memory model of its bytes.
// Descriptors on <mount>/data come from a Python process and from this process itself (async fs),
// opened O_RDWR, O_RDONLY, O_WRONLY, with O_DIRECT, O_SYNC, O_DSYNC, O_TRUNC; between them the
// library API writes and reads the volume, snapshots are mounted read-only, the volume grows, and
// it is unmounted and mounted again (with descriptors open, forced or not). Prints `OP ...` for
// every operation, then `PASS ...` or `FAIL ...`. Environment: FUSE_FUZZ_ROOT (a fresh directory),
// FUSE_FUZZ_SEED, FUSE_FUZZ_STEPS.
//
// What the README promises, as checked here:
// - every read through the mount sees every write made before it, through the mount or the API
//   (no page cache: direct_io; pending mount writes are waited for by overlapping reads);
// - the API sees mount writes once they landed: after an fsync/fdatasync or a close through the
//   mount, a snapshot, or an unmount. Until then an API read is checked outside those bytes only,
//   and an API write over them is preceded by an fsync (a page cache's writeback order is not
//   promised either);
// - a write at or past the end fails with ENOSPC, one across it is short; a read past the end
//   returns fewer bytes, or none; ftruncate/truncate to the size or less change nothing, beyond it
//   EFBIG; O_TRUNC changes nothing;
// - a snapshot mount reads the model as of the snapshot, for ever, and refuses changes with EROFS;
// - README.txt and .galleonfs_metadata tell the volume's name and current size; an expansion shows
//   in stat and fstat at once;
// - unmounting with `data` open is BUSY; forced, the old descriptors get EIO (never the volume),
//   and everything the mount acknowledged is in the volume.

import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS, isGalleonError, type BlockStore } from '../../src/index.js'
import { seededRandom } from '../../src/seeded-random.js'
import { ChildClient, SelfClient, type FileClient, type OpenFlag, type Outcome } from './fuse-fuzz-clients.js'

const ROOT = process.env.FUSE_FUZZ_ROOT as string
const SEED = Number(process.env.FUSE_FUZZ_SEED)
const STEPS = Number(process.env.FUSE_FUZZ_STEPS)
const BLOCK = 4096
const START_SIZE = 1 << 20
const SIZE_LIMIT = 3 << 20
const NAME = 'fz'

const random = seededRandom(SEED)
const int = (below: number): number => Math.floor(random() * below)
const chance = (p: number): boolean => random() < p
function pick<T> (items: readonly T[]): T {
  if (items.length === 0) throw new Error('pick from nothing')
  return items[int(items.length)] as T
}
function bytes (length: number): Uint8Array {
  const out = new Uint8Array(length)
  let state = int(2 ** 31) | 1
  for (let i = 0; i < length; i++) {
    state ^= state << 13; state ^= state >>> 17; state ^= state << 5
    out[i] = state & 0xff
  }
  return out
}

const say = (line: string): void => { process.stdout.write(line + '\n') }
const op = (text: string): void => { say(`OP ${text}`) }

function check (condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(what)
}
function outcome<T> (got: Outcome<T>): string {
  return got.ok ? `ok ${got.value instanceof Uint8Array ? `${got.value.byteLength} bytes` : String(got.value)}` : got.errno
}
function expectErrno (got: Outcome<unknown>, errno: string | readonly string[], what: string): void {
  const allowed = typeof errno === 'string' ? [errno] : errno
  check(!got.ok && allowed.includes(got.errno), `${what}: expected ${allowed.join(' or ')}, got ${outcome(got)}`)
}
function expectOk<T> (got: Outcome<T>, what: string): T {
  if (!got.ok) throw new Error(`${what}: expected success, got ${got.errno}`)
  return got.value
}
/** First differing offset of two byte ranges, or -1. */
function firstDifference (a: Uint8Array, b: Uint8Array): number {
  if (a.byteLength !== b.byteLength) return Math.min(a.byteLength, b.byteLength)
  const d = Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength))
  if (d === 0) return -1
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return i
  return -1
}
function expectBytes (got: Uint8Array, want: Uint8Array, what: string): void {
  const at = firstDifference(got, want)
  check(at < 0, `${what}: ${got.byteLength === want.byteLength ? `first difference at +${at} (got ${got[at]}, want ${want[at]})` : `got ${got.byteLength} bytes, want ${want.byteLength}`}`)
}

interface Handle {
  readonly id: number
  readonly client: FileClient
  readonly fd: number
  readonly flags: readonly OpenFlag[]
  readonly readable: boolean
  readonly writable: boolean
  /** Which mount: the read-write one, or the snapshot's. */
  readonly on: 'volume' | 'snapshot'
  /** Its mount was unmounted with force under it: every call gets EIO. */
  stale: boolean
}

interface SnapshotMount {
  readonly name: string
  readonly path: string
  readonly model: Uint8Array
}

/**
 * The file block store, with every batch of writes a few milliseconds late: writes the mount
 * acknowledged stay on their way to the volume long enough for reads and API calls to meet them.
 */
async function slowStore (dir: string): Promise<BlockStore> {
  const { FileBlockStore } = await import('../../backends/file/index.js')
  const inner = new FileBlockStore({ location: join(dir, 'blocks') })
  return new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (...args: Parameters<typeof inner.batch>) => {
          if (args[0].some((entry) => entry.type === 'put')) await new Promise((resolve) => setTimeout(resolve, 3))
          return await target.batch(...args)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}

class FuzzRun {
  g!: GalleonFS
  volumeId = ''
  readonly child = new ChildClient()
  readonly self = new SelfClient()
  readonly mnt = join(ROOT, 'mnt')
  size = START_SIZE
  model = new Uint8Array(START_SIZE)
  /** Byte ranges written through the mount that the API may not see yet. */
  pending: Array<[number, number]> = []
  sync = false
  mounted = false
  handles: Handle[] = []
  snapshot: SnapshotMount | undefined
  directSupported = true
  #ids = 0
  #snapshots = 0
  #busyChecks = 0

  async open (): Promise<void> {
    this.g = await GalleonFS.open({ storagePath: join(ROOT, 'store'), blockStore: await slowStore(join(ROOT, 'store')), mount: 'fuse' })
    this.volumeId = (await this.g.createVolume({ name: NAME, sizeBytes: START_SIZE })).id
    await this.mount()
  }

  async mount (): Promise<void> {
    this.sync = chance(0.25)
    op(`mount ${this.sync ? 'sync' : 'buffered'}`)
    await this.g.mounts.mountVolume(NAME, this.mnt, { sync: this.sync })
    this.mounted = true
  }

  get data (): string { return join(this.mnt, 'data') }

  live (on: 'volume' | 'snapshot' = 'volume'): Handle[] { return this.handles.filter((h) => !h.stale && h.on === on) }

  // ------------------------------------------------------------- the model's rules

  #landed (): void { this.pending = [] }
  #overlapsPending (start: number, end: number): boolean { return this.pending.some(([s, e]) => s < end && start < e) }

  /** A random range: small, aligned, large, at the last byte, across the end, past it, at a 128 KiB request boundary. */
  range (size: number): [number, number] {
    const kind = int(100)
    if (kind < 28) { const length = 1 + int(9000); return [int(Math.max(1, size - length)), length] }
    if (kind < 46) return [BLOCK * int(size / BLOCK), BLOCK * (1 + int(8))]
    if (kind < 60) { const length = 100_000 + int(300_000); return [int(Math.max(1, size - length)), length] }
    if (kind < 67) return [size - 1, 1 + int(3)]
    if (kind < 77) { const k = 1 + int(5000); return [size - k, k + 1 + int(5000)] }
    if (kind < 84) return [size + int(3) * int(10_000), 1 + int(5000)]
    const boundary = 131_072 * int(size / 131_072)
    return [Math.max(0, boundary + int(9) - 4), 1 + int(140_000)]
  }

  // ------------------------------------------------------------- operations

  async openHandle (on: 'volume' | 'snapshot' = 'volume'): Promise<Handle | undefined> {
    const client = this.handles.filter((h) => h.client.kind === 'self').length < 2 && chance(0.3) ? this.self : this.child
    const path = on === 'volume' ? this.data : join((this.snapshot as SnapshotMount).path, 'data')
    const access: OpenFlag = on === 'snapshot' ? 'O_RDONLY' : pick(['O_RDWR', 'O_RDWR', 'O_RDONLY', 'O_WRONLY'] as const)
    const flags: OpenFlag[] = [access]
    if (this.directSupported && chance(0.3)) flags.push('O_DIRECT')
    if (access !== 'O_RDONLY' && chance(0.15)) flags.push('O_SYNC')
    else if (access !== 'O_RDONLY' && chance(0.06)) flags.push('O_DSYNC')
    if (access !== 'O_RDONLY' && chance(0.1)) flags.push('O_TRUNC')
    const got = await client.open(path, flags)
    op(`open ${client.kind} ${on} ${flags.join('|')} -> ${outcome(got)}`)
    if (!got.ok && got.errno === 'EINVAL' && flags.includes('O_DIRECT')) {
      // O_DIRECT is not offered here: said once, then not asked for again.
      this.directSupported = false
      say('NOTE O_DIRECT is refused with EINVAL on this kernel: not tested')
      return undefined
    }
    const handle: Handle = { id: ++this.#ids, client, fd: expectOk(got, `open ${flags.join('|')}`), flags, readable: access !== 'O_WRONLY', writable: access !== 'O_RDONLY', on, stale: false }
    this.handles.push(handle)
    // O_TRUNC changed nothing: the size is the volume's.
    const size = expectOk(await client.fstatSize(handle.fd), 'fstat after open')
    check(size === (on === 'volume' ? this.size : (this.snapshot as SnapshotMount).model.byteLength), `fstat after open: ${size}, expected ${on === 'volume' ? this.size : 'the snapshot size'}`)
    return handle
  }

  async closeHandle (handle: Handle): Promise<void> {
    const got = await handle.client.close(handle.fd)
    op(`close #${handle.id}${handle.stale ? ' (stale)' : ''} -> ${outcome(got)}`)
    this.handles = this.handles.filter((h) => h !== handle)
    expectOk(got, `close #${handle.id}`)
    // close(2) through the read-write mount: what it acknowledged is in the volume now.
    if (!handle.stale && handle.on === 'volume') this.#landed()
  }

  async mountWrite (handle: Handle): Promise<void> {
    const [offset, length] = this.range(this.size)
    const data = bytes(length)
    const got = await handle.client.pwrite(handle.fd, offset, data)
    op(`pwrite #${handle.id} ${offset}+${length} (size ${this.size}) -> ${outcome(got)}`)
    // The kernel refuses by the descriptor's access mode before it asks the mount.
    if (!handle.writable) { expectErrno(got, 'EBADF', 'pwrite on a read-only descriptor'); return }
    if (handle.stale) { expectErrno(got, 'EIO', 'pwrite on a descriptor of a force-unmounted mount'); return }
    if (offset >= this.size) { expectErrno(got, 'ENOSPC', `pwrite at ${offset}, at or past the end (${this.size})`); return }
    const n = Math.min(length, this.size - offset)
    check(got.ok && got.value === n, `pwrite ${offset}+${length}: expected ${n} bytes written, got ${outcome(got)}`)
    this.model.set(data.subarray(0, n), offset)
    if (!this.sync) this.pending.push([offset, offset + n])
  }

  async mountRead (handle: Handle): Promise<void> {
    const model = handle.on === 'volume' ? this.model : (this.snapshot as SnapshotMount).model
    const size = model.byteLength
    const [offset, length] = this.range(size)
    const got = await handle.client.pread(handle.fd, offset, length)
    op(`pread #${handle.id}${handle.on === 'snapshot' ? ' snapshot' : ''} ${offset}+${length} (size ${size}) -> ${outcome(got)}`)
    if (!handle.readable) { expectErrno(got, 'EBADF', 'pread on a write-only descriptor'); return }
    if (handle.stale) { expectErrno(got, 'EIO', 'pread on a descriptor of a force-unmounted mount'); return }
    const want = model.subarray(Math.min(offset, size), Math.min(offset + length, size))
    expectBytes(expectOk(got, 'pread'), want, `pread #${handle.id} ${offset}+${length} on the ${handle.on} mount`)
  }

  async truncate (handle: Handle | undefined): Promise<void> {
    const size = handle?.on === 'snapshot' ? (this.snapshot as SnapshotMount).model.byteLength : this.size
    const to = chance(0.5) ? Math.max(0, size - int(size + 1)) : chance(0.3) ? size : size + 1 + int(1 << 20)
    const got = handle === undefined ? await pick([this.child, this.self]).truncate(this.data, to) : await handle.client.ftruncate(handle.fd, to)
    op(`${handle === undefined ? 'truncate data' : `ftruncate #${handle.id}`} ${to} (size ${size}) -> ${outcome(got)}`)
    if (handle !== undefined && !handle.writable) { expectErrno(got, ['EINVAL', 'EBADF'], 'ftruncate of a read-only descriptor'); return }
    if (handle?.stale === true) { expectErrno(got, 'EIO', 'ftruncate on a descriptor of a force-unmounted mount'); return }
    if (to > size) expectErrno(got, 'EFBIG', `truncating to ${to}, beyond the size ${size}`)
    else expectOk(got, `truncating to ${to}, within the size ${size}`)
  }

  async fsync (handle: Handle): Promise<void> {
    const dataOnly = chance(0.5)
    const got = await handle.client.fsync(handle.fd, dataOnly)
    op(`${dataOnly ? 'fdatasync' : 'fsync'} #${handle.id} -> ${outcome(got)}`)
    if (handle.stale) { expectErrno(got, 'EIO', 'fsync of a descriptor of a force-unmounted mount'); return }
    expectOk(got, 'fsync')
    if (handle.on === 'volume') this.#landed()
  }

  /** Makes the mount's pending writes over [start, end) land (an fsync through it), as a user must before writing there by the API. */
  async settle (start: number, end: number): Promise<void> {
    if (!this.#overlapsPending(start, end)) return
    const handle = this.live('volume')[0]
    check(handle !== undefined, 'writes are pending through the mount with no descriptor open on it (a close or unmount should have landed them)')
    await this.fsync(handle)
  }

  async apiWrite (): Promise<void> {
    const [offset, length] = this.range(this.size)
    const data = bytes(length)
    if (offset + length > this.size) {
      const code = await this.g.write(NAME, offset, data).then(() => 'ok', (err: unknown) => isGalleonError(err) ? err.code : String(err))
      op(`api write ${offset}+${length} (size ${this.size}) -> ${code}`)
      check(code === 'OUT_OF_RANGE', `an API write past the end: expected OUT_OF_RANGE, got ${code}`)
      return
    }
    await this.settle(offset, offset + length)
    await this.g.write(NAME, offset, data)
    op(`api write ${offset}+${length}`)
    this.model.set(data, offset)
  }

  async apiRead (): Promise<void> {
    const [offset, wanted] = this.range(this.size)
    const length = Math.min(wanted, this.size - Math.min(offset, this.size))
    if (length === 0) return
    if (chance(0.3)) await this.settle(offset, offset + length)
    const got = await this.g.read(NAME, offset, length)
    op(`api read ${offset}+${length}${this.pending.length > 0 ? ` (${this.pending.length} mount writes pending)` : ''}`)
    // Bytes the mount wrote that have not landed may read either way: compared outside them.
    const want = this.model.slice(offset, offset + length)
    const seen = got.slice()
    for (const [s, e] of this.pending) {
      for (let i = Math.max(s, offset); i < Math.min(e, offset + length); i++) seen[i - offset] = want[i - offset] as number
    }
    expectBytes(seen, want, `api read ${offset}+${length}`)
  }

  /** A sequential reader (read ahead) across the volume, with an API write ahead of it half way. */
  async sequentialScan (handle: Handle): Promise<void> {
    const chunk = 131_072
    const middle = chunk * int(Math.ceil(this.size / chunk))
    op(`scan #${handle.id} 0..${this.size} in ${chunk}-byte reads, api write after ${middle}`)
    for (let at = 0; at < this.size; at += chunk) {
      if (at === middle) {
        // Into the part a read-ahead may hold by now.
        const offset = at + int(Math.max(1, Math.min(this.size - at, 1 << 20) - 100))
        const length = Math.min(1 + int(5000), this.size - offset)
        if (length > 0) {
          await this.settle(offset, offset + length)
          const data = bytes(length)
          await this.g.write(NAME, offset, data)
          op(`api write ${offset}+${length} (mid-scan)`)
          this.model.set(data, offset)
        }
      }
      const got = await handle.client.pread(handle.fd, at, chunk)
      expectBytes(expectOk(got, `scan read at ${at}`), this.model.subarray(at, Math.min(at + chunk, this.size)), `scan #${handle.id} read at ${at}`)
    }
  }

  async metadata (on: 'volume' | 'snapshot'): Promise<void> {
    const base = on === 'volume' ? this.mnt : (this.snapshot as SnapshotMount).path
    const size = on === 'volume' ? this.size : (this.snapshot as SnapshotMount).model.byteLength
    const client = pick([this.child, this.self])
    const readme = new TextDecoder().decode(expectOk(await client.readFile(join(base, 'README.txt')), 'read README.txt'))
    const json = new TextDecoder().decode(expectOk(await client.readFile(join(base, '.galleonfs_metadata')), 'read .galleonfs_metadata'))
    op(`metadata ${on} (${client.kind})`)
    const facts = JSON.parse(json) as { sizeBytes: number, volume: { id: string, name: string }, snapshot?: { name: string } }
    check(facts.sizeBytes === size && facts.volume.name === NAME && facts.volume.id === this.volumeId, `.galleonfs_metadata of the ${on} mount: ${json}`)
    if (on === 'snapshot') check(facts.snapshot?.name === this.snapshot?.name, `.galleonfs_metadata names snapshot ${facts.snapshot?.name}`)
    const lines = readme.split('\n')
    check(lines[0] === `GalleonFS volume default/${NAME}${on === 'snapshot' ? ` (snapshot ${this.snapshot?.name ?? ''}, read-only)` : ''}`, `README.txt of the ${on} mount starts ${JSON.stringify(lines[0])}`)
    check(lines.includes(`size          ${size} bytes in blocks of ${BLOCK}`), `README.txt of the ${on} mount: ${readme}`)
    check(expectOk(await client.statSize(join(base, 'README.txt')), 'stat README.txt') === Buffer.byteLength(readme), 'README.txt: stat size and content length differ')
    check(expectOk(await client.statSize(join(base, '.galleonfs_metadata')), 'stat .galleonfs_metadata') === Buffer.byteLength(json), '.galleonfs_metadata: stat size and content length differ')
    check(expectOk(await client.statSize(join(base, 'data')), 'stat data') === size, `stat data on the ${on} mount`)
  }

  async expand (): Promise<void> {
    const next = Math.min(SIZE_LIMIT, this.size + BLOCK * (1 + int(64)))
    if (next === this.size) return
    await this.g.expandVolume(NAME, next)
    op(`expand ${this.size} -> ${next}`)
    const grown = new Uint8Array(next)
    grown.set(this.model)
    this.model = grown
    this.size = next
    // At once, on every descriptor open on the read-write mount; the snapshot keeps its size.
    for (const handle of this.handles.filter((h) => !h.stale)) {
      const want = handle.on === 'volume' ? next : (this.snapshot as SnapshotMount).model.byteLength
      const got = await handle.client.fstatSize(handle.fd)
      check(got.ok && got.value === want, `fstat #${handle.id} (${handle.on}) after the expansion: ${outcome(got)}, expected ${want}`)
    }
    const got = await pick([this.child, this.self]).statSize(this.data)
    check(got.ok && got.value === next, `stat data after the expansion: ${outcome(got)}, expected ${next}`)
  }

  async takeSnapshot (): Promise<void> {
    if (this.snapshot !== undefined) {
      for (const handle of this.handles.filter((h) => h.on === 'snapshot')) await this.closeHandle(handle)
      await this.g.mounts.unmountVolume(this.snapshot.path)
      await this.g.deleteSnapshot(NAME, this.snapshot.name)
      op(`unmount and delete snapshot ${this.snapshot.name}`)
    }
    const name = `s${++this.#snapshots}`
    await this.g.createSnapshot(NAME, name)
    // The snapshot waited for every write the mount acknowledged.
    this.#landed()
    const path = join(ROOT, `snap-${name}`)
    await this.g.mounts.mountVolume({ volume: NAME, snapshot: name }, path)
    this.snapshot = { name, path, model: this.model.slice() }
    op(`snapshot ${name} mounted read-only at ${path}`)
    const data = join(path, 'data')
    const client = pick([this.child, this.self])
    for (const flags of [['O_RDWR'], ['O_WRONLY'], ['O_WRONLY', 'O_TRUNC']] as Array<OpenFlag[]>) {
      expectErrno(await client.open(data, flags), 'EROFS', `opening the snapshot's data ${flags.join('|')}`)
    }
    expectErrno(await client.truncate(data, 0), 'EROFS', 'truncating the snapshot\'s data')
    expectErrno(await client.truncate(data, this.size + 4096), 'EROFS', 'growing the snapshot\'s data')
    await this.openHandle('snapshot')
  }

  /** The whole volume through a fresh descriptor, and through the API once the mount's writes landed. */
  async verifyAll (why: string): Promise<void> {
    const client = pick([this.child, this.self])
    const fd = expectOk(await client.open(this.data, ['O_RDONLY']), 'open for the full read')
    const got = expectOk(await client.pread(fd, 0, this.size + 4096), 'full read')
    expectOk(await client.close(fd), 'close after the full read')
    this.#landed()
    op(`verify all (${why}, ${client.kind})`)
    expectBytes(got, this.model, `the whole of data (${why})`)
    expectBytes(await this.g.read(NAME, 0, this.size), this.model, `the whole volume by the API (${why})`)
    if (this.snapshot !== undefined) expectBytes(await this.g.read({ volume: NAME, snapshot: this.snapshot.name }, 0, this.snapshot.model.byteLength), this.snapshot.model, 'the snapshot by the API')
  }

  async remount (): Promise<void> {
    const open = this.live('volume')
    if (open.length > 0 && this.#busyChecks < 1 && chance(0.5)) {
      // Waits about a second for closes in flight before saying BUSY: asked once a run.
      this.#busyChecks++
      const code = await this.g.mounts.unmountVolume(this.mnt).then(() => 'ok', (err: unknown) => isGalleonError(err) ? err.code : String(err))
      op(`unmount with ${open.length} descriptor(s) open -> ${code}`)
      check(code === 'BUSY', `unmounting with data open: expected BUSY, got ${code}`)
    }
    if (open.length > 0 && chance(0.5)) {
      await this.g.mounts.unmountVolume(this.mnt, { force: true })
      op(`unmount forced with ${open.length} descriptor(s) open`)
      for (const handle of open) handle.stale = true
    } else {
      for (const handle of open) await this.closeHandle(handle)
      await this.g.mounts.unmountVolume(this.mnt)
      op('unmount')
    }
    this.mounted = false
    // Every write the mount acknowledged is in the volume.
    this.#landed()
    expectBytes(await this.g.read(NAME, 0, this.size), this.model, 'the volume after the unmount')
    // A descriptor left open gets EIO, and what it tries to write never reaches the volume.
    const stale = this.handles.find((h) => h.stale)
    if (stale !== undefined) await (stale.writable ? this.mountWrite(stale) : this.mountRead(stale))
    await this.mount()
    if (stale !== undefined && chance(0.5)) await (stale.writable ? this.mountWrite(stale) : this.mountRead(stale))
  }

  async step (): Promise<void> {
    const open = this.live('volume')
    const any = this.handles
    const roll = int(100)
    if (open.length === 0 || (roll < 6 && this.handles.length < 6)) { await this.openHandle(); return }
    if (roll < 10 && any.length > 0) { await this.closeHandle(pick(any)); return }
    if (roll < 34) { await this.mountWrite(pick([...open, ...any])); return }
    if (roll < 56) { await this.mountRead(pick([...open, ...any])); return }
    if (roll < 59) { await this.truncate(chance(0.7) ? pick(any) : undefined); return }
    if (roll < 64) { await this.fsync(pick(any)); return }
    if (roll < 73) { await this.apiWrite(); return }
    if (roll < 80) { await this.apiRead(); return }
    if (roll < 82) { const readable = open.filter((h) => h.readable); if (readable.length > 0) await this.sequentialScan(pick(readable)); return }
    if (roll < 84 && this.#snapshots < 3) { await this.takeSnapshot(); return }
    if (roll < 89 && this.snapshot !== undefined) { const h = this.live('snapshot'); if (h.length > 0) await this.mountRead(pick(h)); return }
    if (roll < 91) { await this.metadata(this.snapshot !== undefined && chance(0.4) ? 'snapshot' : 'volume'); return }
    if (roll < 93 && this.size < SIZE_LIMIT) { await this.expand(); return }
    if (roll < 95) { await this.remount(); return }
    if (roll < 97) { await this.verifyAll('random check'); return }
    await this.mountWrite(pick(open))
  }

  /** Closes what is open (errors ignored) and the instance. */
  async end (): Promise<void> {
    await this.self.end()
    await this.child.end()
    await this.g?.close()
  }
}

const run = new FuzzRun()
await mkdir(ROOT, { recursive: true })
let failure: unknown
try {
  await run.open()
  for (let i = 0; i < STEPS; i++) await run.step()
  await run.verifyAll('end of the run')
  // Every snapshot mount read is checked once more, whole.
  if (run.snapshot !== undefined) {
    const handle = run.live('snapshot')[0]
    if (handle !== undefined) expectBytes(expectOk(await handle.client.pread(handle.fd, 0, run.snapshot.model.byteLength + 100), 'snapshot full read'), run.snapshot.model, 'the whole snapshot through its mount')
  }
} catch (err) {
  failure = err
}
try {
  await run.end()
} catch (err) {
  failure ??= err
}
if (failure === undefined) {
  say(`PASS ${STEPS} steps, final size ${run.size}, O_DIRECT ${run.directSupported ? 'tested' : 'not supported'}`)
} else {
  say(`FAIL ${(failure as Error)?.stack ?? String(failure)}`.replace(/\n/g, '\n  '))
  process.exitCode = 1
}
