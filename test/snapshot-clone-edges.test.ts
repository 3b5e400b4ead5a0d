// Edge cases of snapshots, clones, reverts and expansion on the file backend: a failed revert whose
// snapshot must outlive it, snapshot names that look like ids, implicit snapshot names of long clone
// names, space a clone's trims held after its source went, deep clone chains, and snapshots taken
// while writes and expansions are in flight.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileBlockStore } from '../backends/file/index.js'
import { GalleonError, GalleonFS, addressKey } from '../src/index.js'
import type { BlockAddress } from '../src/index.js'
import type { BlockReadOptions } from '../src/drivers.js'

const BS = 4096
const fill = (value: number, blocks = 1): Uint8Array => new Uint8Array(blocks * BS).fill(value)
/** The documented shape of a snapshot name (see checkSnapshotName). */
const SNAPSHOT_NAME = /^[A-Za-z0-9]([A-Za-z0-9_.:@-]{0,61}[A-Za-z0-9])?$/

const dirs: string[] = []
after(async () => { for (const dir of dirs) await rm(dir, { recursive: true, force: true }) })
async function place (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-snapshot-edges-'))
  dirs.push(dir)
  return dir
}

/** Reads of this block address fail (in every store opened on the directory) while set. */
let failingRead: string | undefined

/** The file block store, with reads of one address failing on demand (a damaged block in a snapshot). */
class FailingFileStore extends FileBlockStore {
  override async get (address: BlockAddress, options?: BlockReadOptions): Promise<Uint8Array | undefined> {
    if (failingRead !== undefined && addressKey(address) === failingRead) throw new GalleonError('IO_ERROR', 'injected read failure')
    return await super.get(address, options)
  }
}

async function openFailing (dir: string): Promise<GalleonFS> {
  return await GalleonFS.open({ storagePath: dir, blockStore: new FailingFileStore({ location: join(dir, 'blocks') }) })
}

/** Each block's first byte: the value the test filled it with. */
async function firstBytes (g: GalleonFS, source: Parameters<GalleonFS['read']>[0], blocks: number): Promise<number[]> {
  const bytes = await g.read(source, 0, blocks * BS)
  const out: number[] = []
  for (let i = 0; i < blocks; i++) {
    const block = bytes.subarray(i * BS, (i + 1) * BS)
    assert.ok(block.every((byte) => byte === block[0]), `block ${i} is not one whole write`)
    out.push(block[0] as number)
  }
  return out
}

describe('a failed revert keeps the snapshot it needs', () => {
  // 100 changed blocks: a revert copies 64 per batch, so a failure in block 80 leaves the volume part reverted.
  const BLOCKS = 100

  it('deleting the snapshot of an unfinished revert is refused, and the volume stays fenced across a reopen', async () => {
    const dir = await place()
    let g = await openFailing(dir)
    try {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, fill(1, BLOCKS))
      await g.createSnapshot('v', 's')
      await g.write('v', 0, fill(2, BLOCKS))
      // The snapshot's version of block 80: storage id 1, written by the first write (gens 1..100).
      failingRead = addressKey({ volume: 1, index: 80, gen: 81 })
      await assert.rejects(g.restoreSnapshot('v', 's'), { code: 'IO_ERROR' })
      await assert.rejects(g.readBlock('v', 0), { code: 'BUSY' })
      await assert.rejects(g.deleteSnapshot('v', 's'), { code: 'BUSY' })
      await assert.rejects(g.deleteSnapshot('v', 's', { force: true }), { code: 'BUSY' })
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), ['s'])
      await g.close()
      // Still failing at the next open: the revert cannot be finished, so the volume stays fenced.
      g = await openFailing(dir)
      await assert.rejects(g.readBlock('v', 0), { code: 'BUSY' })
      failingRead = undefined
      await g.restoreSnapshot('v', 's')
      assert.deepEqual(await firstBytes(g, 'v', BLOCKS), new Array(BLOCKS).fill(1))
      await g.deleteSnapshot('v', 's')
      assert.deepEqual(await g.listSnapshots('v'), [])
    } finally {
      failingRead = undefined
      await g.close()
    }
  })

  it('the implicit snapshot of an unfinished revert outlives its last clone, and goes once the revert succeeds', async () => {
    const dir = await place()
    let g = await openFailing(dir)
    try {
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      await g.write('v', 0, fill(1, BLOCKS))
      await g.cloneVolume('v', 'c')
      await g.write('v', 0, fill(2, BLOCKS))
      failingRead = addressKey({ volume: 1, index: 80, gen: 81 })
      await assert.rejects(g.restoreSnapshot('v', 'clone-c'), { code: 'IO_ERROR' })
      // The clone may go; the snapshot it was made from stays for the revert.
      await g.deleteVolume('c')
      assert.deepEqual((await g.listSnapshots('v')).map((s) => [s.name, s.implicit, s.clones.length]), [['clone-c', true, 0]])
      await g.close()
      g = await openFailing(dir)
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), ['clone-c'])
      await assert.rejects(g.readBlock('v', 0), { code: 'BUSY' })
      failingRead = undefined
      await g.restoreSnapshot('v', 'clone-c')
      assert.deepEqual(await firstBytes(g, 'v', BLOCKS), new Array(BLOCKS).fill(1))
      // With no clone left and no revert needing it, it goes as an implicit snapshot does.
      assert.deepEqual(await g.listSnapshots('v'), [])
      await g.writeBlock('v', 0, fill(3))
      await g.close()
      g = await GalleonFS.open({ storagePath: dir })
      assert.equal((await g.readBlock('v', 0))[0], 3)
      assert.equal((await g.readBlock('v', 99))[0], 1)
    } finally {
      failingRead = undefined
      await g.close()
    }
  })
})

describe('snapshot names', () => {
  it('a snapshot name shaped like a snapshot id is refused, so an id always names one snapshot', async () => {
    const g = await GalleonFS.open({ storagePath: await place() })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 4 * BS })
      await g.writeBlock('v', 0, fill(1))
      const first = await g.createSnapshot('v', 'first')
      await assert.rejects(g.createSnapshot('v', first.id), { code: 'INVALID_ARGUMENT' })
      await assert.rejects(g.createSnapshot('v', first.id.toUpperCase()), { code: 'INVALID_ARGUMENT' })
      // Names that merely contain one are fine.
      await g.createSnapshot('v', `pre-${first.id}`)
      await g.deleteSnapshot('v', first.id)
      assert.deepEqual((await g.listSnapshots('v')).map((s) => s.name), [`pre-${first.id}`])
    } finally {
      await g.close()
    }
  })

  it('the implicit snapshot of a clone with a long name has a valid snapshot name', async () => {
    const g = await GalleonFS.open({ storagePath: await place() })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 4 * BS })
      await g.writeBlock('v', 0, fill(1))
      // 'clone-' and the name cut to 56 characters would end with '-' (or '.', '_').
      for (const name of ['a'.repeat(49) + '-' + 'b'.repeat(13), 'a'.repeat(48) + '._' + 'b'.repeat(13), 'a'.repeat(49) + '-' + 'c'.repeat(13)]) {
        const clone = await g.cloneVolume('v', name)
        const implicit = (await g.listSnapshots('v')).find((s) => s.clones.includes(clone.id))
        assert.ok(implicit?.implicit)
        assert.match(implicit.name, SNAPSHOT_NAME)
        assert.equal((await g.readBlock(clone, 0))[0], 1)
      }
      assert.equal(new Set((await g.listSnapshots('v')).map((s) => s.name)).size, 3)
    } finally {
      await g.close()
    }
  })
})

describe('space of clones whose source goes', () => {
  it('a force-deleted source leaves no trim tombstone behind in its clones, and they read back byte-exact', async () => {
    const dir = await place()
    let g = await GalleonFS.open({ storagePath: dir })
    try {
      await g.createVolume({ name: 'src', sizeBytes: 8 * BS })
      for (let i = 0; i < 8; i++) await g.writeBlock('src', i, fill(10 + i))
      await g.cloneVolume('src', 'c')
      await g.trim('c', 0, 2 * BS)
      // A snapshot of the clone before a trim keeps reading the source's data; one after reads zeros.
      await g.createSnapshot('c', 'before-trim-of-2')
      await g.trim('c', 2 * BS, BS)
      await g.createSnapshot('c', 'after')
      await g.writeBlock('c', 5, fill(99))
      await g.deleteVolume('src', { force: true })
      const expected = {
        live: [0, 0, 0, 13, 14, 99, 16, 17],
        before: [0, 0, 12, 13, 14, 15, 16, 17],
        after: [0, 0, 0, 13, 14, 15, 16, 17]
      }
      const check = async (): Promise<void> => {
        assert.deepEqual(await firstBytes(g, 'c', 8), expected.live)
        assert.deepEqual(await firstBytes(g, { volume: 'c', snapshot: 'before-trim-of-2' }, 8), expected.before)
        assert.deepEqual(await firstBytes(g, { volume: 'c', snapshot: 'after' }, 8), expected.after)
        assert.deepEqual((await g.scrub('c')).badBlocks, [])
      }
      await check()
      await g.flush()
      const usage = await g.getVolumeUsageDetails('c')
      // Every stored version is one the clone's views read: 5 live blocks, and for the snapshots block 2
      // (the source's data, under a tombstone that still hides it) and block 5.
      assert.deepEqual({ live: usage.liveBytes / BS, held: usage.snapshotBytes / BS }, { live: 5, held: 2 })
      assert.equal((await g.getStorageStats()).blocks, 5 + 2 + 1, 'the tombstone over block 2 only')
      await g.close()
      g = await GalleonFS.open({ storagePath: dir })
      await check()
      assert.equal((await g.getStorageStats()).blocks, 8)
      await g.deleteSnapshot('c', 'before-trim-of-2')
      await g.deleteSnapshot('c', 'after')
      await g.flush()
      assert.deepEqual(await firstBytes(g, 'c', 8), expected.live)
      assert.equal((await g.getStorageStats()).blocks, 5)
    } finally {
      await g.close()
    }
  })

  it('a force-deleted snapshot leaves no trim tombstone behind in its clones', async () => {
    const g = await GalleonFS.open({ storagePath: await place() })
    try {
      await g.createVolume({ name: 'src', sizeBytes: 4 * BS })
      await g.write('src', 0, fill(1, 4))
      await g.createSnapshot('src', 's')
      await g.cloneVolume({ volume: 'src', snapshot: 's' }, 'c')
      await g.trim('c', BS, 2 * BS)
      await g.deleteSnapshot('src', 's', { force: true })
      await g.flush()
      assert.deepEqual(await firstBytes(g, 'c', 4), [1, 0, 0, 1])
      assert.deepEqual(await firstBytes(g, 'src', 4), [1, 1, 1, 1])
      // The source's 4 blocks and the clone's own copies of blocks 0 and 3: nothing else.
      assert.equal((await g.getStorageStats()).blocks, 6)
      assert.equal((await g.getVolumeUsage('c')) / BS, 2)
    } finally {
      await g.close()
    }
  })
})

describe('clone chains', () => {
  it('a chain of 10 clones reads back byte-exact while sources in the middle are force-deleted, and after a reopen', async () => {
    const dir = await place()
    let g = await GalleonFS.open({ storagePath: dir })
    const BLOCKS = 16
    try {
      await g.createVolume({ name: 'c0', sizeBytes: BLOCKS * BS })
      await g.write('c0', 0, fill(1, BLOCKS))
      const live = new Map<string, number[]>([['c0', new Array(BLOCKS).fill(1)]])
      const snapshots = new Map<string, number[]>()
      for (let depth = 1; depth <= 10; depth++) {
        const name = `c${depth}`
        const parent = `c${depth - 1}`
        await g.cloneVolume(parent, name)
        const model = [...live.get(parent) as number[]]
        await g.writeBlock(name, depth, fill(10 + depth)); model[depth] = 10 + depth
        await g.createSnapshot(name, 's')
        snapshots.set(name, [...model])
        await g.trim(name, (depth + 1) * BS, BS); model[depth + 1] = 0
        live.set(name, model)
        // The parent moves on; the clone must not see it.
        await g.writeBlock(parent, 15, fill(200 + depth))
        const parentModel = live.get(parent) as number[]
        parentModel[15] = 200 + depth
      }
      const check = async (step: string): Promise<void> => {
        for (const [name, model] of live) {
          assert.deepEqual(await firstBytes(g, name, BLOCKS), model, `${step}: ${name}`)
          const frozen = snapshots.get(name)
          if (frozen !== undefined) assert.deepEqual(await firstBytes(g, { volume: name, snapshot: 's' }, BLOCKS), frozen, `${step}: ${name}@s`)
        }
      }
      await check('chain')
      for (const victim of ['c5', 'c0', 'c9', 'c3']) {
        await g.deleteVolume(victim, { force: true })
        live.delete(victim)
        snapshots.delete(victim)
        await check(`after deleting ${victim}`)
      }
      await g.close()
      g = await GalleonFS.open({ storagePath: dir })
      await check('after reopen')
      for (const name of live.keys()) assert.deepEqual((await g.scrub(name)).badBlocks, [], name)
      for (const name of [...live.keys()].reverse()) await g.deleteVolume(name, { force: true })
      await g.flush()
      assert.equal((await g.getStorageStats()).blocks, 0, 'every block of the chain is freed')
    } finally {
      await g.close()
    }
  })
})

describe('snapshots and expansion under concurrent operations', () => {
  it('a snapshot taken among multi-block writes holds each write wholly or not at all', async () => {
    const g = await GalleonFS.open({ storagePath: await place() })
    try {
      const BLOCKS = 32
      await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BS })
      const stamp = (id: number, length: number): Uint8Array => {
        const bytes = new Uint8Array(length)
        const view = new DataView(bytes.buffer)
        for (let at = 0; at + 4 <= length; at += 4) view.setUint32(at, id, true)
        return bytes
      }
      const writes: Array<{ id: number, offset: number, length: number }> = []
      const pending: Array<Promise<unknown>> = []
      let seed = 7
      const random = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x80000000 }
      for (let round = 0; round < 20; round++) {
        for (let k = 0; k < 6; k++) {
          const offset = Math.floor(random() * (BLOCKS - 8) * BS) & ~3
          const length = (4 + Math.floor(random() * 6 * BS)) & ~3
          const write = { id: writes.length + 1, offset, length }
          writes.push(write)
          pending.push(g.write('v', offset, stamp(write.id, length)))
        }
        pending.push(g.createSnapshot('v', `s${round}`))
      }
      await Promise.all(pending)
      for (let round = 0; round < 20; round++) {
        const bytes = await g.read({ volume: 'v', snapshot: `s${round}` }, 0, BLOCKS * BS)
        const view = new DataView(bytes.buffer, bytes.byteOffset)
        for (const write of writes) {
          let seen = 0
          let total = 0
          for (let at = write.offset; at < write.offset + write.length; at += 4) {
            if (writes.some((later) => later.id > write.id && at >= later.offset && at < later.offset + later.length)) continue
            total++
            if (view.getUint32(at, true) === write.id) seen++
          }
          assert.ok(seen === 0 || seen === total, `snapshot s${round} holds ${seen} of ${total} words of write ${write.id}`)
        }
      }
    } finally {
      await g.close()
    }
  })

  it('a snapshot keeps the size the volume had when it was taken, whatever expansion runs beside it', async () => {
    const g = await GalleonFS.open({ storagePath: await place() })
    try {
      await g.createVolume({ name: 'v', sizeBytes: 4 * BS })
      await g.write('v', 0, fill(1, 4))
      const [before, grown, afterwards] = await Promise.all([g.createSnapshot('v', 'before'), g.expandVolume('v', 8 * BS), g.createSnapshot('v', 'after')])
      assert.equal(before.sizeBytes, 4 * BS)
      assert.equal(grown.sizeBytes, 8 * BS)
      assert.equal(afterwards.sizeBytes, 8 * BS)
      await g.write('v', 4 * BS, fill(2, 4))
      await assert.rejects(g.read({ volume: 'v', snapshot: 'before' }, 4 * BS, BS), { code: 'OUT_OF_RANGE' })
      const clone = await g.cloneVolume({ volume: 'v', snapshot: 'before' }, 'c')
      assert.equal(clone.sizeBytes, 4 * BS)
      await g.restoreSnapshot('v', 'after')
      assert.deepEqual(await firstBytes(g, 'v', 8), [1, 1, 1, 1, 0, 0, 0, 0])
      assert.equal((await g.getVolume('v')).sizeBytes, 8 * BS)
    } finally {
      await g.close()
    }
  })
})
