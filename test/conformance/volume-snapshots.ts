// Snapshot, clone, revert, expansion and thin-provisioning behaviour of a whole GalleonFS instance,
// run unchanged on every block-store backend (snapshots.test.ts). A third-party block store proves
// it carries copy-on-write volumes by passing this as well as blockStoreSuite.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { GalleonFS } from '../../src/index.js'
import { WriteConcern } from '../../src/index.js'
import { bytesOf, seededRandom } from './fixtures.js'

export interface SnapshotSuiteOptions {
  /** Shown in test names. */
  readonly name: string
  /** Opens an instance on `location` (a fresh directory per test; reopening it must find the same data when `persistent`). */
  readonly open: (location: string) => Promise<GalleonFS>
  /** Whether data survives close() and open() of the same location. */
  readonly persistent: boolean
  /** Operations of the randomized model test (default 400). */
  readonly randomOps?: number
}

const BS = 4096
const BLOCKS = 64
const SIZE = BS * BLOCKS

/** A block whose bytes name a token (0 = zeros). */
function block (token: number): Uint8Array {
  return token === 0 ? new Uint8Array(BS) : bytesOf(BS, token)
}

/** Reads every block of a volume or snapshot and returns the tokens found (by matching the patterns). */
async function tokens (g: GalleonFS, source: Parameters<GalleonFS['read']>[0], blocks = BLOCKS): Promise<number[]> {
  const bytes = await g.read(source, 0, blocks * BS)
  const out: number[] = []
  for (let i = 0; i < blocks; i++) out.push(tokenOf(bytes.subarray(i * BS, (i + 1) * BS)))
  return out
}

const known = new Map<string, number>()
function tokenOf (bytes: Uint8Array): number {
  if (bytes.every((b) => b === 0)) return 0
  const key = Buffer.from(bytes.subarray(0, 16)).toString('hex')
  const token = known.get(key)
  if (token === undefined || !Buffer.from(block(token)).equals(Buffer.from(bytes))) return -1
  return token
}

let nextToken = 1
function fresh (): number {
  const token = nextToken++
  known.set(Buffer.from(block(token).subarray(0, 16)).toString('hex'), token)
  return token
}

async function write (g: GalleonFS, vol: string, index: number, concern = WriteConcern.WriteAcknowledged): Promise<number> {
  const token = fresh()
  await g.writeBlock(vol, index, block(token), concern)
  return token
}

export function snapshotSuite (options: SnapshotSuiteOptions): void {
  const { name, persistent } = options
  describe(`snapshots and clones: ${name}`, () => {
    let root: string
    let count = 0
    before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-snap-')) })
    after(async () => { await rm(root, { recursive: true, force: true }) })
    const place = (): string => join(root, String(count++))

    async function withInstance (fn: (g: GalleonFS, location: string) => Promise<void>): Promise<void> {
      const location = place()
      const g = await options.open(location)
      try { await fn(g, location) } finally { await g.close() }
    }

    it('a snapshot reads as at its creation while the volume keeps changing, by name, id or object', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        const before = [await write(g, 'v', 0), await write(g, 'v', 1), 0, await write(g, 'v', 3)]
        const snap = await g.createSnapshot('v', 's1')
        assert.equal(snap.name, 's1')
        assert.equal(snap.sizeBytes, SIZE)
        assert.equal(snap.implicit, false)
        await write(g, 'v', 0)
        await write(g, 'v', 2)
        await g.trim('v', 3 * BS, BS)
        await g.write('v', BS + 100, new Uint8Array(10).fill(7))
        const viaName = await tokens(g, { volume: 'v', snapshot: 's1' }, 4)
        assert.deepEqual(viaName, before)
        const volume = await g.getVolume('v')
        assert.deepEqual(await tokens(g, { volume: volume.id, snapshot: snap.id }, 4), before)
        assert.deepEqual(await tokens(g, snap, 4), before)
        for (let i = 0; i < 4; i++) assert.equal(tokenOf(await g.readBlock({ volume: 'v', snapshot: 's1' }, i)), before[i])
        // Partial reads of a snapshot and the live view differ where the volume changed.
        const live = await g.read('v', BS + 100, 10)
        assert.deepEqual(live, new Uint8Array(10).fill(7))
        assert.deepEqual(await g.read({ volume: 'v', snapshot: 's1' }, BS + 100, 10), block(before[1] as number).subarray(100, 110))
        assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), ['s1'])
        assert.equal((await g.getSnapshot('v', snap.id)).name, 's1')
      })
    })

    it('refuses bad input with stable codes and changes nothing', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        const token = await write(g, 'v', 0)
        await g.createSnapshot('v', 's1')
        await assert.rejects(g.createSnapshot('v', 's1'), { code: 'SNAPSHOT_EXISTS' })
        await assert.rejects(g.createSnapshot('nope', 's1'), { code: 'VOLUME_NOT_FOUND' })
        for (const bad of ['', '-x', 'a b', 'x'.repeat(64), 42, undefined]) {
          await assert.rejects(g.createSnapshot('v', bad as string), { code: 'INVALID_ARGUMENT' })
        }
        await assert.rejects(g.getSnapshot('v', 'nope'), { code: 'SNAPSHOT_NOT_FOUND' })
        await assert.rejects(g.deleteSnapshot('v', 'nope'), { code: 'SNAPSHOT_NOT_FOUND' })
        await assert.rejects(g.restoreSnapshot('v', 'nope'), { code: 'SNAPSHOT_NOT_FOUND' })
        await assert.rejects(g.readBlock({ volume: 'v', snapshot: 'nope' }, 0), { code: 'SNAPSHOT_NOT_FOUND' })
        await assert.rejects(g.readBlock({ volume: 'v', snapshot: 's1' }, BLOCKS), { code: 'OUT_OF_RANGE' })
        const snapshotRef = { volume: 'v', snapshot: 's1' } as never
        await assert.rejects(g.writeBlock(snapshotRef, 0, block(1)), { code: 'READ_ONLY' })
        await assert.rejects(g.write(snapshotRef, 0, block(1)), { code: 'READ_ONLY' })
        await assert.rejects(g.trim(snapshotRef, 0, BS), { code: 'READ_ONLY' })
        await g.createVolume({ name: 'taken', sizeBytes: BS })
        await assert.rejects(g.cloneVolume('v', 'taken'), { code: 'VOLUME_EXISTS' })
        await assert.rejects(g.cloneVolume({ volume: 'v', snapshot: 'nope' }, 'c'), { code: 'SNAPSHOT_NOT_FOUND' })
        await assert.rejects(g.cloneVolume('v', 'bad name'), { code: 'INVALID_ARGUMENT' })
        await assert.rejects(g.expandVolume('v', SIZE - BS), { code: 'INVALID_ARGUMENT' })
        await assert.rejects(g.expandVolume('v', SIZE + 1), { code: 'INVALID_ARGUMENT' })
        await assert.rejects(g.listChangedBlocks('v', { from: 'nope' }), { code: 'SNAPSHOT_NOT_FOUND' })
        // Nothing changed: the snapshot and the volume are intact, no clone appeared.
        assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), ['s1'])
        assert.equal(tokenOf(await g.readBlock({ volume: 'v', snapshot: 's1' }, 0)), token)
        assert.equal(tokenOf(await g.readBlock('v', 0)), token)
        assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), ['taken', 'v'])
        assert.equal((await g.getVolume('v')).sizeBytes, SIZE)
      })
    })

    it('restoreSnapshot reverts in place; later snapshots stay usable; refused while writes are in flight', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        const a = [await write(g, 'v', 0), await write(g, 'v', 1), 0, 0]
        await g.createSnapshot('v', 'a')
        await write(g, 'v', 0)
        await g.trim('v', BS, BS)
        await write(g, 'v', 2)
        const b = (await tokens(g, 'v')).slice(0, 4)
        await g.createSnapshot('v', 'b')
        await write(g, 'v', 3)
        const restored: string[] = []
        g.on('snapshot:restored', (volume, snapshot) => restored.push(`${volume.name}@${snapshot.name}`))
        await g.restoreSnapshot('v', 'a')
        assert.deepEqual((await tokens(g, 'v')).slice(0, 4), a)
        assert.deepEqual((await tokens(g, { volume: 'v', snapshot: 'b' })).slice(0, 4), b)
        assert.deepEqual((await tokens(g, { volume: 'v', snapshot: 'a' })).slice(0, 4), a)
        await g.restoreSnapshot('v', 'b')
        assert.deepEqual((await tokens(g, 'v')).slice(0, 4), b)
        await g.restoreSnapshot('v', 'a')
        assert.deepEqual((await tokens(g, 'v')).slice(0, 4), a)
        assert.deepEqual(restored, ['v@a', 'v@b', 'v@a'])
        // Being written: refused, nothing changes.
        const writing = g.writeBlock('v', 5, block(fresh()))
        await assert.rejects(g.restoreSnapshot('v', 'b'), { code: 'BUSY' })
        await writing
        assert.deepEqual((await tokens(g, 'v')).slice(0, 4), a)
      })
    })

    it('reverting to a snapshot taken before an expansion zeroes the space added since', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        const t0 = await write(g, 'v', 0)
        await g.createSnapshot('v', 'small')
        await g.expandVolume('v', 2 * SIZE)
        await write(g, 'v', BLOCKS + 5)
        assert.equal((await g.getSnapshot('v', 'small')).sizeBytes, SIZE)
        await assert.rejects(g.readBlock({ volume: 'v', snapshot: 'small' }, BLOCKS), { code: 'OUT_OF_RANGE' })
        await g.restoreSnapshot('v', 'small')
        assert.equal((await g.getVolume('v')).sizeBytes, 2 * SIZE)
        assert.equal(tokenOf(await g.readBlock('v', 0)), t0)
        assert.equal(tokenOf(await g.readBlock('v', BLOCKS + 5)), 0)
      })
    })

    it('clones share blocks, and writes on either side never show on the other; chains of clones work', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'src', sizeBytes: SIZE, labels: { app: 'db' } })
        const base = [await write(g, 'src', 0), await write(g, 'src', 1), await write(g, 'src', 2)]
        const clone = await g.cloneVolume('src', 'c1')
        assert.deepEqual(clone.source?.volumeId, (await g.getVolume('src')).id)
        assert.deepEqual(clone.labels, { app: 'db' })
        assert.equal(clone.sizeBytes, SIZE)
        const implicit = await g.listSnapshots('src')
        assert.equal(implicit.length, 1)
        assert.equal(implicit[0]?.implicit, true)
        assert.deepEqual(implicit[0]?.clones, [clone.id])
        // A clone costs nothing until it is written.
        assert.equal(await g.getVolumeUsage('c1'), 0)
        assert.deepEqual((await tokens(g, 'c1')).slice(0, 3), base)
        const s1 = await write(g, 'src', 0)
        const c1 = await write(g, 'c1', 1)
        await g.trim('c1', 2 * BS, BS)
        assert.deepEqual((await tokens(g, 'src')).slice(0, 3), [s1, base[1], base[2]])
        assert.deepEqual((await tokens(g, 'c1')).slice(0, 3), [base[0], c1, 0])
        assert.equal(await g.getVolumeUsage('c1'), BS)
        // A clone of a snapshot of the clone, then of that clone: each level sees its own view.
        await g.createSnapshot('c1', 'cs')
        const c1b = await write(g, 'c1', 0)
        const c2 = await g.cloneVolume({ volume: 'c1', snapshot: 'cs' }, 'c2')
        assert.equal((await g.getSnapshot('c1', 'cs')).implicit, false)
        const c3 = await g.cloneVolume('c2', 'c3')
        const c3w = await write(g, 'c3', 3)
        assert.deepEqual((await tokens(g, 'c1')).slice(0, 4), [c1b, c1, 0, 0])
        assert.deepEqual((await tokens(g, c2.name)).slice(0, 4), [base[0], c1, 0, 0])
        assert.deepEqual((await tokens(g, c3.name)).slice(0, 4), [base[0], c1, 0, c3w])
        // A partial write to a clone merges with the data it shares.
        await g.write('c3', 2 * BS - 1, Uint8Array.of(9, 9))
        const edge = await g.read('c3', 2 * BS - 2, 3)
        assert.deepEqual(edge, Uint8Array.of(block(c1)[BS - 2] as number, 9, 9))
        assert.equal(tokenOf(await g.readBlock('c2', 1)), c1)
      })
    })

    it('deleting a source with clones is refused unless forced, then each clone gets its own copy', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'src', sizeBytes: SIZE })
        const t = [await write(g, 'src', 0), await write(g, 'src', 1)]
        await g.createSnapshot('src', 'gold')
        await write(g, 'src', 0)
        await g.cloneVolume({ volume: 'src', snapshot: 'gold' }, 'from-snap')
        await g.cloneVolume('src', 'from-live')
        await g.createSnapshot('from-snap', 'fs1')
        const own = await write(g, 'from-snap', 1)
        await assert.rejects(g.deleteVolume('src'), { code: 'BUSY', message: /from-snap, from-live|from-live, from-snap/ })
        await assert.rejects(g.deleteSnapshot('src', 'gold'), { code: 'BUSY', message: /from-snap/ })
        const liveView = await tokens(g, 'from-live')
        await g.deleteVolume('src', { force: true })
        assert.equal((await g.getVolume('from-snap')).source, undefined)
        assert.deepEqual((await tokens(g, 'from-snap')).slice(0, 2), [t[0], own])
        assert.deepEqual((await tokens(g, { volume: 'from-snap', snapshot: 'fs1' })).slice(0, 2), t)
        assert.deepEqual(await tokens(g, 'from-live'), liveView)
        assert.equal(await g.getVolumeUsage('from-live'), 2 * BS)
      })
    })

    it('deleting a snapshot with clones is refused unless forced; an implicit snapshot goes with its last clone', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'src', sizeBytes: SIZE })
        const t = await write(g, 'src', 0)
        await g.createSnapshot('src', 'gold')
        await g.cloneVolume({ volume: 'src', snapshot: 'gold' }, 'c')
        await write(g, 'src', 0)
        await g.deleteSnapshot('src', 'gold', { force: true })
        assert.deepEqual(await g.listSnapshots('src'), [])
        assert.equal(tokenOf(await g.readBlock('c', 0)), t)
        await g.cloneVolume('src', 'd1')
        await g.cloneVolume('src', 'd2')
        assert.equal((await g.listSnapshots('src')).length, 2)
        await g.deleteVolume('d1')
        assert.equal((await g.listSnapshots('src')).length, 1)
        await g.deleteVolume('d2')
        assert.deepEqual(await g.listSnapshots('src'), [])
      })
    })

    it('expands online while reads and writes are in flight; new space reads as zeros', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        const random = seededRandom(7)
        const io: Array<Promise<unknown>> = []
        const written = new Map<number, number>()
        for (let i = 0; i < 200; i++) {
          const index = Math.floor(random() * BLOCKS)
          const token = fresh()
          written.set(index, token)
          io.push(g.writeBlock('v', index, block(token)))
          io.push(g.readBlock('v', Math.floor(random() * BLOCKS)))
          if (i === 100) io.push(g.expandVolume('v', 4 * SIZE))
        }
        await Promise.all(io)
        assert.equal((await g.getVolume('v')).sizeBytes, 4 * SIZE)
        const all = await tokens(g, 'v', 4 * BLOCKS)
        for (let i = 0; i < 4 * BLOCKS; i++) assert.equal(all[i], written.get(i) ?? 0, `block ${i}`)
        await write(g, 'v', 4 * BLOCKS - 1)
      })
    })

    it('trim frees blocks no snapshot holds; usage reports live and snapshot-held bytes', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        for (let i = 0; i < 10; i++) await write(g, 'v', i)
        assert.deepEqual(await g.getVolumeUsageDetails('v'), { allocatedBytes: 10 * BS, allocatedBlocks: 10, liveBytes: 10 * BS, snapshotBytes: 0, sizeBytes: SIZE })
        await g.createSnapshot('v', 's')
        for (let i = 0; i < 4; i++) await write(g, 'v', i)
        await write(g, 'v', 3) // a second write after the snapshot copies nothing more
        await g.trim('v', 8 * BS, 2 * BS)
        await write(g, 'v', 20)
        await g.trim('v', 20 * BS, BS) // written after the snapshot: freed for real
        assert.deepEqual(await g.getVolumeUsageDetails('v'), { allocatedBytes: 14 * BS, allocatedBlocks: 14, liveBytes: 8 * BS, snapshotBytes: 6 * BS, sizeBytes: SIZE })
        assert.equal(await g.getVolumeUsage('v'), 14 * BS)
        await g.deleteSnapshot('v', 's')
        assert.deepEqual(await g.getVolumeUsageDetails('v'), { allocatedBytes: 8 * BS, allocatedBlocks: 8, liveBytes: 8 * BS, snapshotBytes: 0, sizeBytes: SIZE })
        for (let i = 8; i < 10; i++) assert.equal(tokenOf(await g.readBlock('v', i)), 0)
        const stats = await g.getStorageStats()
        assert.equal(stats.blocks >= 8, true)
      })
    })

    it('lists the blocks changed between snapshots, and between a snapshot and now', async () => {
      await withInstance(async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        for (const i of [1, 2, 3, 10]) await write(g, 'v', i)
        await g.createSnapshot('v', 'a')
        for (const i of [2, 40, 2]) await write(g, 'v', i)
        await g.trim('v', 10 * BS, BS)
        await g.createSnapshot('v', 'b')
        await write(g, 'v', 50)
        await g.trim('v', 40 * BS, BS) // written after a, before b: still differs from a
        await g.createSnapshot('v', 'c')
        assert.deepEqual(await g.listChangedBlocks('v', { from: 'a', to: 'b' }), [2, 10, 40])
        assert.deepEqual(await g.listChangedBlocks('v', { from: 'b', to: 'c' }), [40, 50])
        assert.deepEqual(await g.listChangedBlocks('v', { from: 'a', to: 'c' }), [2, 10, 40, 50])
        assert.deepEqual(await g.listChangedBlocks('v', { from: 'c' }), [])
        await write(g, 'v', 7)
        assert.deepEqual(await g.listChangedBlocks('v', { from: 'c' }), [7])
        assert.deepEqual(await g.listChangedBlocks('v', { from: 'a' }), [2, 7, 10, 40, 50])
        assert.deepEqual(await g.listChangedBlocks('v', { to: 'a' }), [1, 2, 3, 10])
        assert.deepEqual(await g.listChangedBlocks('v'), [1, 2, 3, 7, 50])
        await assert.rejects(g.listChangedBlocks('v', { from: 'c', to: 'a' }), { code: 'INVALID_ARGUMENT' })
        // Deleting the middle snapshot merges its changes into the next interval; block 40, written
        // and trimmed in between, no longer differs once b no longer holds its data.
        await g.deleteSnapshot('v', 'b')
        assert.deepEqual(await g.listChangedBlocks('v', { from: 'a', to: 'c' }), [2, 10, 50])
        assert.deepEqual((await tokens(g, { volume: 'v', snapshot: 'a' })).filter((t) => t !== 0).length, 4)
      })
    })

    it('emits events for snapshots and clones', async () => {
      await withInstance(async (g) => {
        const seen: string[] = []
        g.on('snapshot:created', (s) => seen.push(`created ${s.name}`))
        g.on('snapshot:deleted', (s) => seen.push(`deleted ${s.name}`))
        g.on('volume:cloned', (v, s) => seen.push(`cloned ${v.name} from ${s.name}`))
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        await g.createSnapshot('v', 's')
        await g.cloneVolume({ volume: 'v', snapshot: 's' }, 'c')
        await g.deleteVolume('c')
        await g.deleteSnapshot('v', 's')
        assert.deepEqual(seen, ['created s', 'cloned c from s', 'deleted s'])
      })
    })

    if (persistent) {
      it('snapshots, clones and reverts survive close and reopen', async () => {
        const location = place()
        let g = await options.open(location)
        await g.createVolume({ name: 'v', sizeBytes: SIZE })
        const a = [await write(g, 'v', 0), await write(g, 'v', 1)]
        await g.createSnapshot('v', 'a')
        const b = [await write(g, 'v', 0), a[1]]
        await g.createSnapshot('v', 'b')
        await g.trim('v', BS, BS)
        await g.cloneVolume({ volume: 'v', snapshot: 'a' }, 'c')
        const c = [a[0], await write(g, 'c', 1)]
        await g.close()
        g = await options.open(location)
        try {
          assert.deepEqual((await tokens(g, { volume: 'v', snapshot: 'a' })).slice(0, 2), a)
          assert.deepEqual((await tokens(g, { volume: 'v', snapshot: 'b' })).slice(0, 2), b)
          assert.deepEqual((await tokens(g, 'v')).slice(0, 2), [b[0], 0])
          assert.deepEqual((await tokens(g, 'c')).slice(0, 2), c)
          assert.deepEqual(await g.listChangedBlocks('v', { from: 'a', to: 'b' }), [0])
          assert.deepEqual(await g.listChangedBlocks('v', { from: 'b' }), [1])
          await g.restoreSnapshot('v', 'a')
          const t = await write(g, 'v', 2)
          await g.createSnapshot('v', 'after')
          await g.close()
          g = await options.open(location)
          assert.deepEqual((await tokens(g, 'v')).slice(0, 3), [a[0], a[1], t])
          assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), ['a', 'b', 'after'])
          assert.equal((await g.scrub('v')).badBlocks.length, 0)
          assert.equal((await g.scrub('c')).badBlocks.length, 0)
          // A write after reopen must not land inside an older snapshot.
          await write(g, 'v', 3)
          assert.equal((await tokens(g, { volume: 'v', snapshot: 'after' }))[3], 0)
        } finally {
          await g.close()
        }
      })
    }

    it('matches a simple model under random snapshots, clones, reverts, trims, deletes and writes', async () => {
      const location = place()
      let g = await options.open(location)
      const random = seededRandom(Number(process.env.GALLEON_SNAPSHOT_SEED ?? 4242))
      const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T
      /** Model: per volume its tokens; per volume its snapshots' tokens; which snapshot each clone reads from. */
      const volumes = new Map<string, number[]>([['m0', new Array(BLOCKS).fill(0)]])
      const snapshots = new Map<string, Map<string, number[]>>([['m0', new Map()]])
      const sources = new Map<string, { volume: string, snapshot: string }>()
      /** Blocks touched since each snapshot (listChangedBlocks must cover the real changes and stay within these). */
      const touched = new Map<string, Set<number>>()
      await g.createVolume({ name: 'm0', sizeBytes: SIZE })
      let serial = 1
      const ops = options.randomOps ?? 400
      const check = async (step: string): Promise<void> => {
        for (const [volume, model] of volumes) {
          assert.deepEqual(await tokens(g, volume), model, `${step}: volume ${volume}`)
          for (const [snapshot, frozen] of snapshots.get(volume) as Map<string, number[]>) {
            assert.deepEqual(await tokens(g, { volume, snapshot }), frozen, `${step}: snapshot ${volume}@${snapshot}`)
            const changed = new Set(await g.listChangedBlocks(volume, { from: snapshot }))
            const maybe = touched.get(`${volume}@${snapshot}`) as Set<number>
            for (let i = 0; i < BLOCKS; i++) {
              if (frozen[i] !== model[i]) assert.ok(changed.has(i), `${step}: block ${i} of ${volume} differs from ${snapshot} but is not listed as changed`)
            }
            for (const i of changed) assert.ok(maybe.has(i), `${step}: block ${i} of ${volume} listed as changed since ${snapshot} but never touched`)
          }
        }
      }
      const touch = (volume: string, index: number): void => {
        for (const snapshot of (snapshots.get(volume) as Map<string, number[]>).keys()) touched.get(`${volume}@${snapshot}`)?.add(index)
      }
      try {
        for (let step = 0; step < ops; step++) {
          const choice = random()
          const volume = pick([...volumes.keys()])
          const model = volumes.get(volume) as number[]
          const snaps = snapshots.get(volume) as Map<string, number[]>
          const what = `op ${step}`
          if (choice < 0.45) {
            const index = Math.floor(random() * BLOCKS)
            model[index] = await write(g, volume, index)
            touch(volume, index)
          } else if (choice < 0.55) {
            const index = Math.floor(random() * BLOCKS)
            const count = 1 + Math.floor(random() * 3)
            await g.trim(volume, index * BS, Math.min(count, BLOCKS - index) * BS)
            for (let i = index; i < Math.min(index + count, BLOCKS); i++) { model[i] = 0; touch(volume, i) }
          } else if (choice < 0.67) {
            const name = `s${serial++}`
            await g.createSnapshot(volume, name)
            snaps.set(name, [...model])
            touched.set(`${volume}@${name}`, new Set())
          } else if (choice < 0.75 && snaps.size > 0) {
            const name = pick([...snaps.keys()])
            const clones = [...sources].filter(([, s]) => s.volume === volume && s.snapshot === name).map(([c]) => c)
            if (clones.length > 0) {
              await assert.rejects(g.deleteSnapshot(volume, name), { code: 'BUSY' })
              if (random() < 0.5) continue
              await g.deleteSnapshot(volume, name, { force: true })
              for (const clone of clones) sources.delete(clone)
            } else {
              await g.deleteSnapshot(volume, name)
            }
            snaps.delete(name)
            touched.delete(`${volume}@${name}`)
          } else if (choice < 0.81 && snaps.size > 0) {
            const name = pick([...snaps.keys()])
            await g.restoreSnapshot(volume, name)
            const frozen = snaps.get(name) as number[]
            for (let i = 0; i < BLOCKS; i++) { if (model[i] !== frozen[i]) touch(volume, i); model[i] = frozen[i] as number }
            // A revert rewrites the blocks changed since the snapshot, which other snapshots may list.
            for (const i of await g.listChangedBlocks(volume, { from: name })) touch(volume, i)
          } else if (choice < 0.9 && volumes.size < 6) {
            const clone = `m${serial++}`
            if (snaps.size > 0 && random() < 0.5) {
              const name = pick([...snaps.keys()])
              await g.cloneVolume({ volume, snapshot: name }, clone)
              volumes.set(clone, [...(snaps.get(name) as number[])])
              sources.set(clone, { volume, snapshot: name })
            } else {
              const made = await g.cloneVolume(volume, clone)
              const implicit = (await g.listSnapshots(volume)).find((s) => s.clones.includes(made.id))
              assert.ok(implicit?.implicit)
              snaps.set(implicit.name, [...model])
              touched.set(`${volume}@${implicit.name}`, new Set())
              volumes.set(clone, [...model])
              sources.set(clone, { volume, snapshot: implicit.name })
            }
            snapshots.set(clone, new Map())
          } else if (choice < 0.95 && volumes.size > 1) {
            const clones = [...sources].filter(([, s]) => s.volume === volume).map(([c]) => c)
            if (clones.length > 0) {
              await assert.rejects(g.deleteVolume(volume), { code: 'BUSY' })
              await g.deleteVolume(volume, { force: true })
              for (const clone of clones) sources.delete(clone)
            } else {
              await g.deleteVolume(volume)
            }
            const source = sources.get(volume)
            sources.delete(volume)
            volumes.delete(volume)
            snapshots.delete(volume)
            if (source !== undefined) {
              const snap = (await g.listSnapshots(source.volume)).find((s) => s.name === source.snapshot)
              if (snap?.implicit === true && snap.clones.length === 0) assert.fail(`${what}: implicit snapshot ${snap.name} outlived its clones`)
              if (snap === undefined) { snapshots.get(source.volume)?.delete(source.snapshot); touched.delete(`${source.volume}@${source.snapshot}`) }
            }
          } else if (choice < 0.97 && persistent) {
            await g.close()
            g = await options.open(location)
          } else {
            await check(what)
          }
        }
        await check('end')
        for (const volume of volumes.keys()) assert.deepEqual((await g.scrub(volume)).badBlocks, [], `scrub ${volume}`)
      } finally {
        await g.close()
      }
    })
  })
}
