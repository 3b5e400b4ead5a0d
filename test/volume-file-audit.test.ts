// VolumeFile judged as a Node.js file handle, on the memory backend and the on-disk default: a
// model-based run of read/write/seek/pread/pwrite (a Uint8Array model of the volume), streams with
// pipeline() both ways (backpressure measured in buffered bytes), errors inside a pipeline, handles
// that are read-only, on snapshots, several at once, across a revert, a forced deletion and an
// expansion, under a principal, and concurrent overlapping writes.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { GalleonFS } from '../src/index.js'
import { seededRandom } from '../src/seeded-random.js'
import { expectCode, rejectsWithCode } from './support/assertions.js'
import { blockPattern } from './support/patterns.js'

const KiB = 1024
const MiB = 1024 * KiB
const BLOCK = 4096

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-vfile-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const backends: Array<{ name: string, options: () => Parameters<typeof GalleonFS.open>[0] }> = [
  { name: 'memory', options: () => ({ inMemory: true }) },
  { name: 'on-disk default', options: () => ({ storagePath: join(root, `d${++counter}`) }) }
]

async function withInstance (options: Parameters<typeof GalleonFS.open>[0], task: (g: GalleonFS) => Promise<void>): Promise<void> {
  const g = await GalleonFS.open(options)
  try {
    await task(g)
  } finally {
    await g.close()
  }
}

/** The code a call failed with, or 'ok'. */
async function outcome (attempt: Promise<unknown>): Promise<string> {
  return await attempt.then(() => 'ok', (err: { code?: string }) => err.code ?? String(err))
}

function syncOutcome (attempt: () => unknown): string {
  try {
    attempt()
    return 'ok'
  } catch (err) {
    return (err as { code?: string }).code ?? String(err)
  }
}

/**
 * Whether the bytes of [from, to) equal some serial order of `writes` (each a fill of its own id):
 * every byte holds the id of a write covering it, and "the writer seen over the others covering
 * the same byte" has no cycle.
 */
function serializable (writes: ReadonlyArray<{ at: number, length: number, id: number }>, bytes: Uint8Array, from: number, to: number): boolean {
  const later = new Map<number, Set<number>>()
  for (let i = from; i < to; i++) {
    const covering = writes.filter((w) => w.at <= i && i < w.at + w.length)
    const seen = bytes[i]
    if (covering.length === 0) { if (seen !== 0) return false; continue }
    if (!covering.some((w) => w.id === seen)) return false
    for (const w of covering) {
      if (w.id === seen) continue
      let set = later.get(w.id)
      if (set === undefined) later.set(w.id, set = new Set())
      set.add(seen as number)
    }
  }
  const state = new Map<number, 'visiting' | 'done'>()
  const acyclic = (node: number): boolean => {
    if (state.get(node) === 'done') return true
    if (state.get(node) === 'visiting') return false
    state.set(node, 'visiting')
    for (const next of later.get(node) ?? []) if (!acyclic(next)) return false
    state.set(node, 'done')
    return true
  }
  return [...later.keys()].every(acyclic)
}

for (const backend of backends) {
  describe(`VolumeFile on the ${backend.name} backend`, () => {
    it('follows a Uint8Array model through random reads, writes, seeks, preads and pwrites (at and past the end) and an expansion while open', async () => {
      const options = backend.options()
      const random = seededRandom(23)
      const int = (below: number): number => Math.floor(random() * below)
      const model = { bytes: new Uint8Array(256 * KiB), position: 0 }
      await withInstance(options, async (g) => {
        await g.createVolume({ name: 'm', sizeBytes: model.bytes.byteLength })
        const file = await g.mounts.openVolumeFile('m')
        const expandAt = 200
        for (let step = 0; step < 400; step++) {
          if (step === expandAt) {
            await g.expandVolume('m', 384 * KiB)
            const grown = new Uint8Array(384 * KiB)
            grown.set(model.bytes)
            model.bytes = grown
          }
          const size = model.bytes.byteLength
          assert.equal(file.size, size)
          // Odd lengths that cross blocks, positions up to two blocks past the end.
          const length = 1 + int(3 * BLOCK + 7)
          const somewhere = int(size + 2 * BLOCK)
          const what = `step ${step}`
          switch (int(6)) {
            case 0: {
              const data = new Uint8Array(length).map(() => int(256))
              const fits = model.position + length <= size
              assert.equal(await outcome(file.write(data)), fits ? 'ok' : 'OUT_OF_RANGE', what)
              if (fits) { model.bytes.set(data, model.position); model.position += length }
              break
            }
            case 1: {
              const bufferOffset = int(5)
              const buffer = new Uint8Array(length + bufferOffset)
              const n = await file.read(buffer, length, bufferOffset)
              const expected = Math.max(0, Math.min(length, size - model.position))
              assert.equal(n, expected, what)
              assert.deepEqual(buffer.subarray(bufferOffset, bufferOffset + n), model.bytes.subarray(model.position, model.position + n), what)
              model.position += n
              break
            }
            case 2: {
              const data = new Uint8Array(length).map(() => int(256))
              const fits = somewhere + length <= size
              assert.equal(await outcome(file.pwrite(data, somewhere)), fits ? 'ok' : 'OUT_OF_RANGE', what)
              if (fits) model.bytes.set(data, somewhere)
              break
            }
            case 3: {
              const buffer = new Uint8Array(length)
              const n = await file.pread(buffer, somewhere)
              // Past the end: short, then nothing (a block device, not an error).
              const expected = Math.max(0, Math.min(length, size - somewhere))
              assert.equal(n, expected, what)
              assert.deepEqual(buffer.subarray(0, n), model.bytes.subarray(somewhere, somewhere + n), what)
              assert.ok(buffer.subarray(n).every((b) => b === 0), 'the rest of the buffer is left as it was')
              break
            }
            case 4: {
              const whence = (['set', 'cur', 'end', 0, 1, 2] as const)[int(6)] as 'set' | 'cur' | 'end' | 0 | 1 | 2
              const base = whence === 'set' || whence === 0 ? 0 : whence === 'cur' || whence === 1 ? model.position : size
              const offset = int(size + 2 * BLOCK) - (base === 0 ? BLOCK : base)
              const target = base + offset
              assert.equal(syncOutcome(() => file.seek(offset, whence)), target < 0 ? 'INVALID_ARGUMENT' : 'ok', what)
              if (target >= 0) model.position = target
              break
            }
            default:
              await file.flush()
          }
          assert.equal(file.position, model.position, what)
        }
        // The whole volume, three ways: a plain read, async iteration from an odd position, a stream
        // with an odd chunk size.
        assert.deepEqual(await g.read('m', 0, model.bytes.byteLength), model.bytes)
        file.seek(12_345)
        const iterated: Uint8Array[] = []
        for await (const chunk of file) iterated.push(chunk)
        assert.deepEqual(new Uint8Array(Buffer.concat(iterated)), model.bytes.subarray(12_345))
        assert.equal(file.position, model.bytes.byteLength, 'iteration moves the position to the end')
        const streamed: Buffer[] = []
        for await (const chunk of file.createReadStream({ start: 3, end: model.bytes.byteLength - 2, highWaterMark: 4097 })) streamed.push(chunk as Buffer)
        assert.ok(streamed.every((chunk) => chunk.byteLength <= 4097))
        assert.deepEqual(new Uint8Array(Buffer.concat(streamed)), model.bytes.subarray(3, model.bytes.byteLength - 1))
        await file.close()
      })
      if (!('storagePath' in options)) return
      // close() flushed: a new instance on the same directory reads the model back.
      await withInstance(options, async (g) => {
        assert.deepEqual(await g.read('m', 0, model.bytes.byteLength), model.bytes)
      })
    })

    it('refuses bad input with INVALID_ARGUMENT, closes twice, and answers NOT_OPEN to every call after close', async () => {
      await withInstance(backend.options(), async (g) => {
        await g.createVolume({ name: 'v', sizeBytes: '1M' })
        const file = await g.mounts.openVolumeFile('v')
        for (const [offset, whence] of [[Number.NaN, 'set'], [1.5, 'set'], ['5', 'set'], [0, 3], [0, 'SEEK_END'], [0, null], [-1, 'set'], [-(1 << 20) - 1, 'end'], [Number.MAX_SAFE_INTEGER, 'end']] as const) {
          assert.throws(() => file.seek(offset as number, whence as 'set'), rejectsWithCode('INVALID_ARGUMENT'), `seek(${String(offset)}, ${String(whence)})`)
        }
        assert.equal(file.position, 0, 'a refused seek leaves the position')
        await assert.rejects(file.read(new Uint8Array(4), -1), rejectsWithCode('INVALID_ARGUMENT'))
        await assert.rejects(file.read(new Uint8Array(4), 8), rejectsWithCode('INVALID_ARGUMENT'))
        await assert.rejects(file.read(new Uint8Array(4), undefined, 5), rejectsWithCode('INVALID_ARGUMENT'))
        await assert.rejects(file.write('text' as never), rejectsWithCode('INVALID_ARGUMENT'))
        await assert.rejects(file.pwrite(new Uint8Array(1), -1), rejectsWithCode('INVALID_ARGUMENT'))
        await assert.rejects(file.pread(new Uint8Array(1), 0.5), rejectsWithCode('INVALID_ARGUMENT'))
        assert.equal(file.position, 0, 'a refused read or write leaves the position')
        // A zero-byte write at the very end is fine; one byte there is not.
        assert.equal(await file.pwrite(new Uint8Array(0), 1 << 20), 0)
        await assert.rejects(file.pwrite(new Uint8Array(1), 1 << 20), rejectsWithCode('OUT_OF_RANGE'))

        const closing = [file.close(), file.close()]
        await Promise.all(closing)
        await file.close()
        assert.equal(file.closed, true)
        const after: Array<[string, () => Promise<unknown>]> = [
          ['read', async () => await file.read(new Uint8Array(1))],
          ['write', async () => await file.write(new Uint8Array(1))],
          ['pread', async () => await file.pread(new Uint8Array(1), 0)],
          ['pwrite', async () => await file.pwrite(new Uint8Array(1), 0)],
          ['flush', async () => { await file.flush() }],
          ['seek', async () => file.seek(0)],
          ['createReadStream', async () => file.createReadStream()],
          ['createWriteStream', async () => file.createWriteStream()],
          ['iteration', async () => { for await (const chunk of file) void chunk }]
        ]
        for (const [name, call] of after) await assert.rejects(call(), rejectsWithCode('NOT_OPEN'), name)
      })
    })

    it('pipes both ways with pipeline(), holding a bounded number of bytes whatever the speed of the other side', async () => {
      await withInstance(backend.options(), async (g) => {
        const size = 4 * MiB
        const original = blockPattern(size / BLOCK, 6)
        await g.createVolume({ name: 'p', sizeBytes: size })
        await g.mounts.mountVolume('p', '/vfile/p')
        const file = await g.mounts.openVolumeFile('/vfile/p')

        // Into the volume: a producer that pushes odd-sized chunks as fast as it is let.
        let produced = 0
        const chunkBytes = 4099
        let into!: Writable
        let mostWaiting = 0
        const source = new Readable({
          read () {
            while (produced < size) {
              const chunk = Buffer.from(original.subarray(produced, produced + chunkBytes))
              produced += chunk.byteLength
              mostWaiting = Math.max(mostWaiting, into.writableLength)
              if (!this.push(chunk)) return
            }
            this.push(null)
          }
        })
        into = file.createWriteStream({ start: 0 })
        await pipeline(source, into)
        assert.deepEqual(await g.read('p', 0, size), original)
        // The Writable's own limit (16 KiB) plus a chunk, not the 4 MiB the producer had to give.
        assert.ok(mostWaiting <= into.writableHighWaterMark + chunkBytes, `${mostWaiting} bytes waited to be written`)

        // Out of the volume into a consumer that takes one chunk per turn of the event loop.
        const readHighWater = 65_537
        const out = file.createReadStream({ highWaterMark: readHighWater })
        const received: Buffer[] = []
        let mostBuffered = 0
        const slow = new Writable({
          highWaterMark: 8 * KiB,
          write (chunk: Buffer, _encoding, callback) {
            received.push(chunk)
            mostBuffered = Math.max(mostBuffered, out.readableLength + slow.writableLength)
            setImmediate(callback)
          }
        })
        await pipeline(out, slow)
        assert.deepEqual(new Uint8Array(Buffer.concat(received)), original)
        assert.ok(mostBuffered <= 2 * readHighWater + 8 * KiB, `${mostBuffered} bytes were buffered for the slow consumer`)
        await file.close()
        await g.mounts.unmountVolume('/vfile/p')
      })
    })

    it('fails a pipeline cleanly (destroying the other side) and, once the file is closed, leaves the volume free to unmount and delete', async () => {
      await withInstance(backend.options(), async (g) => {
        await g.createVolume({ name: 'e', sizeBytes: '24M' })
        await g.mounts.mountVolume('e', '/vfile/e')
        const file = await g.mounts.openVolumeFile('/vfile/e')

        // The source fails while a large chunk is still being written.
        let sent = false
        const failing = new Readable({
          read () {
            if (sent) return
            sent = true
            this.push(Buffer.alloc(20 * MiB, 3))
            setImmediate(() => this.destroy(new Error('source failed')))
          }
        })
        await assert.rejects(pipeline(failing, file.createWriteStream()), /source failed/)
        // Past the end: the volume refuses, and the source is destroyed.
        const endless = new Readable({ read () { this.push(Buffer.alloc(MiB, 4)) } })
        await assert.rejects(pipeline(endless, file.createWriteStream({ start: 20 * MiB })), rejectsWithCode('OUT_OF_RANGE'))
        assert.equal(endless.destroyed, true)
        // The consumer fails: the volume's read stream is destroyed.
        const reading = file.createReadStream()
        await assert.rejects(pipeline(reading, new Writable({ write (_chunk, _encoding, callback) { callback(new Error('sink failed')) } })), /sink failed/)
        assert.equal(reading.destroyed, true)

        await expectCode(g.mounts.unmountVolume('/vfile/e'), 'BUSY')
        // close() waits for the write the failed pipeline left running, then flushes.
        await file.close()
        assert.deepEqual(await g.read('e', 20 * MiB - 1, 1), new Uint8Array([3]))
        await g.mounts.unmountVolume('/vfile/e')
        await g.deleteVolume('e')
        assert.deepEqual(await g.listVolumes(), [])
      })
    })

    it('many pwrites at once at overlapping offsets leave every block as some serial order of them wrote it', async () => {
      await withInstance(backend.options(), async (g) => {
        const size = 64 * KiB
        await g.createVolume({ name: 'c', sizeBytes: size })
        const file = await g.mounts.openVolumeFile('c')
        const random = seededRandom(6)
        const writes = Array.from({ length: 150 }, (_, i) => {
          const at = Math.floor(random() * (size - 1))
          return { at, length: 1 + Math.floor(random() * Math.min(20_000, size - at)), id: i + 1 }
        })
        await Promise.all(writes.map(async (w) => await file.pwrite(new Uint8Array(w.length).fill(w.id), w.at)))
        const bytes = await g.read('c', 0, size)
        for (let block = 0; block < size / BLOCK; block++) {
          assert.ok(serializable(writes, bytes, block * BLOCK, (block + 1) * BLOCK), `block ${block} matches no serial order of the writes`)
        }
        // write() and read() at the position: concurrent calls take consecutive ranges.
        file.seek(0)
        const parts = [1, 2, 3, 4].map((n) => new Uint8Array(1000 + n).fill(n))
        assert.deepEqual(await Promise.all(parts.map(async (part) => await file.write(part))), parts.map((part) => part.byteLength))
        assert.equal(file.position, 4010)
        file.seek(0)
        const buffers = parts.map((part) => new Uint8Array(part.byteLength))
        await Promise.all(buffers.map(async (buffer) => await file.read(buffer)))
        assert.deepEqual(buffers, parts)
        await file.close()
      })
    })

    it('a pwrite or pread longer than a piece (8 MiB) racing an overlapping write moves each block whole, never half of each', async () => {
      await withInstance(backend.options(), async (g) => {
        await g.createVolume({ name: 'big', sizeBytes: '20M' })
        const file = await g.mounts.openVolumeFile('big')
        // 16 MiB from byte 100: the block at 8 MiB lies across the boundary of the first piece.
        await Promise.all([file.pwrite(new Uint8Array(16 * MiB).fill(1), 100), file.pwrite(new Uint8Array(BLOCK).fill(2), 8 * MiB)])
        const block = await g.read('big', 8 * MiB, BLOCK)
        assert.equal(new Set(block).size, 1, `the block at 8 MiB holds ${[...new Set(block)].join(' and ')}: half of one write, half of the other`)
        // What fits in a piece is one call, wherever it starts: a write of the two blocks around 8 MiB
        // racing the instance's own write of them leaves both as one of the two wrote them.
        await Promise.all([file.pwrite(new Uint8Array(2 * BLOCK).fill(4), 8 * MiB - BLOCK), g.write('big', 8 * MiB - BLOCK, new Uint8Array(2 * BLOCK).fill(5))])
        const pair = await g.read('big', 8 * MiB - BLOCK, 2 * BLOCK)
        assert.equal(new Set(pair).size, 1, `the two blocks around 8 MiB hold ${[...new Set(pair)].join(' and ')}: the writes interleaved`)
        // The same for a long pread racing a write of that block: it sees the block before or after.
        const out = new Uint8Array(16 * MiB)
        await Promise.all([file.pread(out, 100), file.pwrite(new Uint8Array(BLOCK).fill(3), 8 * MiB)])
        const seen = out.subarray(8 * MiB - 100, 8 * MiB - 100 + BLOCK)
        assert.equal(new Set(seen).size, 1, `the read saw the block at 8 MiB holding ${[...new Set(seen)].join(' and ')}: torn by the write`)
        await file.close()
      })
    })

    it('read-only, snapshot and several handles; a handle across a revert, an expansion and a forced deletion', async () => {
      await withInstance(backend.options(), async (g) => {
        await g.createVolume({ name: 'h', sizeBytes: '1M' })
        await g.write('h', 0, new Uint8Array(BLOCK).fill(1))
        await g.createSnapshot('h', 's1')
        await g.write('h', 0, new Uint8Array(BLOCK).fill(2))
        const writer = await g.mounts.openVolumeFile('h')
        const reader = await g.mounts.openVolumeFile('h', { readOnly: true })
        const snapshot = await g.mounts.openVolumeFile({ volume: 'h', snapshot: 's1' })
        assert.equal(snapshot.readOnly, true)
        for (const file of [reader, snapshot]) {
          await assert.rejects(file.write(new Uint8Array(1)), rejectsWithCode('READ_ONLY'))
          await assert.rejects(file.pwrite(new Uint8Array(1), 0), rejectsWithCode('READ_ONLY'))
          assert.equal(file.position, 0)
          // Refused when the stream is made, not after the source gave its first chunk.
          assert.throws(() => file.createWriteStream(), rejectsWithCode('READ_ONLY'))
          await file.flush()
        }
        // Several handles see one another's writes at once; the snapshot's does not move.
        await writer.pwrite(new Uint8Array([9, 9]), 10)
        const seen = new Uint8Array(2)
        await reader.pread(seen, 10)
        assert.deepEqual(seen, new Uint8Array([9, 9]))
        await snapshot.pread(seen, 10)
        assert.deepEqual(seen, new Uint8Array([1, 1]))

        // An expansion while open: every handle on the volume sees the new size.
        await g.expandVolume('h', '2M')
        assert.deepEqual([writer.size, reader.size, snapshot.size], [2 * MiB, 2 * MiB, MiB])
        writer.seek(-BLOCK, 'end')
        await writer.write(new Uint8Array(BLOCK).fill(7))
        reader.seek(-3, 'end')
        const tail: Uint8Array[] = []
        for await (const chunk of reader) tail.push(chunk)
        assert.deepEqual(tail, [new Uint8Array(3).fill(7)])

        // A revert waits for the writer to go; a reader kept across it reads the snapshot's data.
        await expectCode(g.restoreSnapshot('h', 's1'), 'BUSY')
        await writer.close()
        await g.restoreSnapshot('h', 's1')
        const first = new Uint8Array(1)
        await reader.pread(first, 0)
        assert.equal(first[0], 1)

        // A forced deletion: the next I/O fails, and the handles still close.
        const late = await g.mounts.openVolumeFile('h')
        await late.pwrite(new Uint8Array([5]), 0)
        await expectCode(g.deleteVolume('h'), 'BUSY')
        await g.deleteVolume('h', { force: true })
        await expectCode(late.pwrite(new Uint8Array(1), 0), 'VOLUME_NOT_FOUND')
        await expectCode(reader.pread(new Uint8Array(1), 0), 'VOLUME_NOT_FOUND')
        await late.close()
        await reader.close()
        await snapshot.close()
        assert.deepEqual([late.closed, reader.closed, snapshot.closed], [true, true, true])
        // Nothing of the old volume holds its name.
        await g.createVolume({ name: 'h', sizeBytes: '1M' })
        await (await g.mounts.openVolumeFile('h')).close()
      })
    })
  })
}

describe('VolumeFile options and references', () => {
  it('refuses unknown openVolumeFile options (a misspelt readOnly would open a writable file)', async () => {
    await withInstance({ inMemory: true }, async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await expectCode(g.mounts.openVolumeFile('v', { readonly: true } as never), 'INVALID_ARGUMENT', 'readonly')
      // No writer was left holding the ReadWriteOnce volume.
      await g.mounts.mountVolume('v', '/vfile/v')
      assert.deepEqual(g.mounts.listMounts().map((m) => m.readOnly), [false])
    })
  })

  it('says that nothing is mounted at a path, rather than that no volume has that name', async () => {
    await withInstance({ inMemory: true }, async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await expectCode(g.mounts.openVolumeFile('/vfile/nothing'), 'INVALID_ARGUMENT', '/vfile/nothing')
      await expectCode(g.mounts.openVolumeFile('./nothing'), 'INVALID_ARGUMENT')
      await expectCode(g.mounts.openVolumeFile('missing'), 'VOLUME_NOT_FOUND')
    })
  })

  it('refuses stream options it does not have, and non-objects, with INVALID_ARGUMENT', async () => {
    await withInstance({ inMemory: true }, async (g) => {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const file = await g.mounts.openVolumeFile('v')
      for (const options of [null, 'start', { encoding: 'utf8' }, { start: 0, autoClose: false }, { start: -1 }, { start: 10, end: 9 }, { highWaterMark: 0 }]) {
        assert.throws(() => file.createReadStream(options as never), rejectsWithCode('INVALID_ARGUMENT'), JSON.stringify(options))
      }
      for (const options of [null, 7, { flags: 'a' }, { start: 0, end: 100 }, { start: 1.5 }]) {
        assert.throws(() => file.createWriteStream(options as never), rejectsWithCode('INVALID_ARGUMENT'), JSON.stringify(options))
      }
      await file.close()
    })
  })

  it('a principal opens only what its policies allow; its file keeps the mode it was opened with', async () => {
    await withInstance({ inMemory: true }, async (g) => {
      await g.createAccessPolicy({ name: 'readers', principals: ['user:rita'], verbs: ['volume:read', 'snapshot:read'], namespaces: ['a'] })
      await g.createAccessPolicy({ name: 'writers', principals: ['user:will'], verbs: ['volume:read', 'volume:write'], namespaces: ['a'] })
      await g.createVolume({ name: 'db', namespace: 'a', sizeBytes: '1M' })
      await g.createVolume({ name: 'db', namespace: 'b', sizeBytes: '1M' })
      await g.createSnapshot('a/db', 's')
      const rita = g.as({ id: 'rita', namespace: 'a' })
      const will = g.as({ id: 'will', namespace: 'a' })
      await expectCode(rita.mounts.openVolumeFile('db'), 'PERMISSION_DENIED')
      await expectCode(will.mounts.openVolumeFile('b/db', { readOnly: true }), 'PERMISSION_DENIED')
      const written = await will.mounts.openVolumeFile('db')
      await written.pwrite(new Uint8Array([4, 2]), 0)
      await written.close()
      const read = await rita.mounts.openVolumeFile('db', { readOnly: true })
      const snapshot = await rita.mounts.openVolumeFile({ volume: 'db', snapshot: 's' })
      const two = new Uint8Array(2)
      await read.pread(two, 0)
      assert.deepEqual(two, new Uint8Array([4, 2]))
      await expectCode(read.pwrite(new Uint8Array(1), 0), 'READ_ONLY')
      await expectCode(snapshot.pwrite(new Uint8Array(1), 0), 'READ_ONLY')
      // On the application's read-write mount, the reader gets a file only by asking for a read-only one.
      await g.mounts.mountVolume('a/db', '/vfile/a-db')
      await expectCode(rita.mounts.openVolumeFile('/vfile/a-db'), 'PERMISSION_DENIED')
      const onMount = await rita.mounts.openVolumeFile('/vfile/a-db', { readOnly: true })
      assert.equal(onMount.readOnly, true)
      for (const file of [read, snapshot, onMount]) await file.close()
      await g.mounts.unmountVolume('/vfile/a-db')
    })
  })
})
