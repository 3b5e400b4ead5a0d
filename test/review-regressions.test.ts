// Regression tests for bugs found in review of the engine read path (getMany / fallbacks).
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileBlockStore } from '../backends/file/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { BlockEngine, type ChecksumFailure } from '../src/engine/engine.js'
import type { BlockStore } from '../src/drivers.js'
import { WriteConcern } from '../src/types.js'
import { GalleonFS } from '../src/index.js'

const BLOCK = 4096

async function withEngine (kind: 'file' | 'memory', body: (engine: BlockEngine, failures: ChecksumFailure[]) => Promise<void>): Promise<void> {
  const location = await mkdtemp(join(tmpdir(), 'galleonfs-review-'))
  const store: BlockStore = kind === 'file' ? new FileBlockStore({ location, compactionThreshold: 0 }) : new MemoryBlockStore()
  await store.open()
  const failures: ChecksumFailure[] = []
  const engine = new BlockEngine(store, { blockSize: BLOCK, cacheBlocks: 0, onChecksumFailure: (failure) => failures.push(failure) })
  try {
    await body(engine, failures)
  } finally {
    await engine.close().catch(() => {})
    await store.close().catch(() => {})
    await rm(location, { recursive: true, force: true })
  }
}

function settle (promise: Promise<Uint8Array>): Promise<string> {
  return promise.then((bytes) => `ok:${[...new Set(bytes)].join(',')}`, (err: { code?: string }) => `error:${err.code ?? String(err)}`)
}

describe('engine reads racing a trim', () => {
  for (const kind of ['file', 'memory'] as const) {
    it(`${kind}: read(), readBlock() and scrub() during a trim of the same blocks see old data or zeros, never CORRUPTION`, async () => {
      await withEngine(kind, async (engine, failures) => {
        const volume = engine.attach(1, 1 << 20)
        await engine.write(volume, 0, new Uint8Array(4 * BLOCK).fill(9), WriteConcern.WriteAcknowledged)
        // The trim deletes the stored versions at once (the store applies batches at call time)
        // but unmaps the blocks only once its batch has resolved.
        const trimming = engine.trim(volume, 0, 4 * BLOCK, WriteConcern.WriteAcknowledged)
        const reads = [
          settle(engine.read(volume, 0, 4 * BLOCK)), // several blocks: getMany and its fallback
          settle(engine.read(volume, BLOCK, 10)), // one block
          settle(engine.readBlock(volume, 2))
        ]
        const scrubbing = engine.scrub(volume)
        await new Promise((resolve) => setImmediate(resolve))
        reads.push(settle(engine.read(volume, 0, 4 * BLOCK)), settle(engine.readBlock(volume, 3)))
        await trimming
        // A trim is atomic: a read of several blocks sees all of it or none of it.
        for (const result of await Promise.all(reads)) assert.ok(result === 'ok:9' || result === 'ok:0', `a read during the trim gave ${result}`)
        assert.deepEqual((await scrubbing).bad, [], 'scrub during a trim reports no bad blocks')
        assert.deepEqual(failures, [], 'no checksum failure is reported')
        assert.equal(await settle(engine.read(volume, 0, 4 * BLOCK)), 'ok:0', 'trimmed blocks read as zeros afterwards')
      })
    })
  }

  for (const kind of ['file', 'memory'] as const) {
    it(`${kind}: reads of several blocks racing writes and trims of them see each write or trim whole, never half of it`, async () => {
      await withEngine(kind, async (engine) => {
        const volume = engine.attach(1, 1 << 20)
        // Unaligned: partial blocks at both edges, two whole blocks between them.
        const offset = 100
        const length = 3 * BLOCK
        let stop = false
        let torn = 0
        let reads = 0
        const writer = (async () => {
          // At least 600 changes, and on until the readers have read 2,000 times.
          for (let v = 1; v <= 600 || (reads < 2000 && v < 1_000_000); v++) {
            if (v % 4 === 0) await engine.trim(volume, offset, length, WriteConcern.WriteAcknowledged)
            else await engine.write(volume, offset, new Uint8Array(length).fill(v & 0xff), WriteConcern.WriteAcknowledged)
          }
          stop = true
        })()
        const readers = Array.from({ length: 4 }, async () => {
          while (!stop) {
            const bytes = await engine.read(volume, offset, length)
            reads++
            if (!bytes.every((b) => b === bytes[0])) torn++
          }
        })
        await Promise.all([writer, ...readers])
        assert.ok(reads >= 2000, `the readers read ${reads} times`)
        assert.equal(torn, 0, `${torn} of ${reads} reads saw a write or trim half applied`)
      })
    })
  }

  it('a partial-block write over a version missing from the store still fails (no wait on its own claim)', async () => {
    await withEngine('memory', async (engine, failures) => {
      const volume = engine.attach(1, 1 << 20)
      await engine.write(volume, 0, new Uint8Array(BLOCK).fill(1), WriteConcern.WriteAcknowledged)
      // Lose the stored version behind the engine's back: real damage, not a race.
      const gen = volume.map.current(0) as number
      await engine.store.batch([{ type: 'del', address: { volume: 1, index: 0, gen } }])
      const timeout = new Promise<string>((resolve) => setTimeout(() => resolve('timeout'), 5000).unref())
      const outcome = await Promise.race([
        engine.write(volume, 10, Uint8Array.of(2), WriteConcern.WriteAcknowledged).then(() => 'ok', (err: { code?: string }) => `error:${err.code ?? String(err)}`),
        timeout
      ])
      assert.equal(outcome, 'error:CORRUPTION')
      assert.equal(failures.length, 1)
    })
  })
})

describe('file store writer with write calls completing out of order', () => {
  it('acknowledges in call order, only once every earlier byte is written, and a sync batch only after an fdatasync issued once they were', async () => {
    const { open } = await import('node:fs/promises')
    const { HEADER_BYTES } = await import('../backends/file/record.js')
    const probe = await open(tmpdir(), 'r')
    const proto = Object.getPrototypeOf(probe) as { writev: (...args: unknown[]) => Promise<{ bytesWritten: number }>, datasync: () => Promise<void> }
    await probe.close()
    // Groups go out with FileHandle.writev (buffers, position).
    const originalWrite = proto.writev
    const originalDatasync = proto.datasync
    // Per handle: byte ranges whose write call has returned, and the prefix the last finished fdatasync covers.
    const written = new WeakMap<object, Array<[number, number]>>()
    const synced = new WeakMap<object, number>()
    const prefix = (handle: object): number => {
      const ranges = [...(written.get(handle) ?? [])].sort((a, b) => a[0] - b[0])
      let end = 0
      for (const [start, stop] of ranges) if (start <= end) end = Math.max(end, stop)
      return end
    }
    let segmentHandle: object | undefined
    let calls = 0
    proto.writev = async function (this: object, ...args: unknown[]) {
      // Later calls often finish first: delays of 0..3 turns of the event loop, in a fixed pattern.
      const delay = [3, 0, 2, 1, 0, 3, 1][calls++ % 7] as number
      for (let i = 0; i < delay; i++) await new Promise((resolve) => setImmediate(resolve))
      const result = await originalWrite.apply(this, args)
      const [, position] = args as [unknown, number]
      if (typeof position === 'number') {
        segmentHandle ??= this
        const list = written.get(this) ?? []
        list.push([position, position + result.bytesWritten])
        written.set(this, list)
      }
      return result
    }
    proto.datasync = async function (this: object) {
      const covered = prefix(this)
      await originalDatasync.apply(this)
      synced.set(this, Math.max(synced.get(this) ?? 0, covered))
    }
    const location = await mkdtemp(join(tmpdir(), 'galleonfs-review-'))
    // Every group through the thread pool (the mocked async write): small ones are otherwise
    // written synchronously and always complete in order.
    const store = new FileBlockStore({ location, compactionThreshold: 0, syncWriteMaxBytes: 0 })
    try {
      await store.open()
      const problems: string[] = []
      let resolved = -1
      let end = 0
      const batches: Array<Promise<void>> = []
      for (let i = 0; i < 400; i++) {
        const size = 1 + ((i * 7919) % 9000)
        end += HEADER_BYTES + size
        const batchEnd = end
        const sync = i % 9 === 4
        batches.push(store.batch([{ type: 'put', address: { volume: 1, index: i, gen: 1 }, data: new Uint8Array(size).fill(i & 255) }], { sync }).then(() => {
          if (resolved !== i - 1) problems.push(`batch ${i} resolved after ${resolved}`)
          resolved = i
          const handle = segmentHandle as object
          if (prefix(handle) < batchEnd) problems.push(`batch ${i} resolved with only ${prefix(handle)} of ${batchEnd} bytes written`)
          if (sync && (synced.get(handle) ?? 0) < batchEnd) problems.push(`sync batch ${i} resolved with only ${synced.get(handle) ?? 0} of ${batchEnd} bytes synced`)
        }))
        if (i % 50 === 49) await new Promise((resolve) => setImmediate(resolve))
      }
      await Promise.all(batches)
      assert.deepEqual(problems, [])
      const values = await store.getMany(Array.from({ length: 400 }, (_, i) => ({ volume: 1, index: i, gen: 1 })))
      values.forEach((value, i) => assert.ok(value !== undefined && value.byteLength === 1 + ((i * 7919) % 9000) && value.every((byte) => byte === (i & 255)), `block ${i}`))
    } finally {
      proto.writev = originalWrite
      proto.datasync = originalDatasync
      await store.close().catch(() => {})
      await rm(location, { recursive: true, force: true })
    }
  })
})

describe('engine operations in a loop', () => {
  for (const kind of ['file', 'memory'] as const) {
    it(`${kind}: awaiting reads and writes that resolve without I/O (block cache, memory, synchronous groups) in a loop does not hold the event loop`, async () => {
      const location = await mkdtemp(join(tmpdir(), 'galleonfs-review-'))
      const store: BlockStore = kind === 'file' ? new FileBlockStore({ location }) : new MemoryBlockStore()
      await store.open()
      const engine = new BlockEngine(store, { blockSize: BLOCK, cacheBlocks: 64 })
      try {
        const volume = engine.attach(1, 1 << 20)
        await engine.write(volume, 0, new Uint8Array(8 * BLOCK).fill(3), WriteConcern.WriteAcknowledged)
        const turnsDuring = async (loop: () => Promise<void>): Promise<number> => {
          let turns = 0
          let running = true
          const spin = (): void => { if (running) { turns++; setImmediate(spin) } }
          setImmediate(spin)
          await loop()
          running = false
          return turns
        }
        // By count, not by time: each loop runs far longer than the few milliseconds allowed.
        const reading = await turnsDuring(async () => { for (let i = 0; i < 30_000; i++) await engine.readBlock(volume, i % 8) })
        assert.ok(reading > 1, `the event loop turned ${reading} times during 30,000 cached block reads`)
        const ranges = await turnsDuring(async () => { for (let i = 0; i < 20_000; i++) await engine.read(volume, 0, 2 * BLOCK) })
        assert.ok(ranges > 1, `the event loop turned ${ranges} times during 20,000 cached range reads`)
        const writing = await turnsDuring(async () => { for (let i = 0; i < 20_000; i++) await engine.writeBlock(volume, 8 + (i % 8), new Uint8Array(BLOCK).fill(i & 0xff), WriteConcern.WriteAcknowledged) })
        assert.ok(writing > 1, `the event loop turned ${writing} times during 20,000 block writes`)
      } finally {
        await engine.close().catch(() => {})
        await store.close().catch(() => {})
        await rm(location, { recursive: true, force: true })
      }
    })
  }
})

describe('refused calls in a loop', () => {
  it('retrying refused reads, writes and trims in a loop (they reject before any I/O) does not hold the event loop', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      let turns = 0
      let running = true
      const spin = (): void => { if (running) { turns++; setImmediate(spin) } }
      const refusedDuring = async (call: () => Promise<unknown>): Promise<number> => {
        turns = 0
        running = true
        setImmediate(spin)
        let refused = 0
        // By count, not by time: 20,000 refusals take far longer than the few milliseconds allowed.
        for (let i = 0; i < 20_000; i++) await call().catch(() => { refused++ })
        running = false
        assert.equal(refused, 20_000)
        return turns
      }
      for (const [what, call] of [
        ['read of a volume that does not exist', async () => await g.read('nope', 0, 16)],
        ['readBlock past the end', async () => await g.readBlock('v', 1 << 20)],
        ['write with a bad concern', async () => await g.write('v', 0, new Uint8Array(16), 'Sometime' as WriteConcern)],
        ['writeBlock of a non-buffer', async () => await g.writeBlock('v', 0, 'text' as unknown as Uint8Array)],
        ['trim past the end', async () => await g.trim('v', 2 << 20, 4096)]
      ] as const) {
        const seen = await refusedDuring(call)
        assert.ok(seen > 1, `the event loop turned ${seen} times during 20,000 refusals of a ${what}`)
      }
    } finally {
      await g.close()
    }
  })
})
