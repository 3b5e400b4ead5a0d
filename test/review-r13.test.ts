// Review r13: buffer reuse on the read paths. g.read(..., into) on encrypted volumes (blocks opened
// straight into the caller's buffer), clones, snapshots and grown volumes, into views at an offset
// of their ArrayBuffer; the NBD server's reused reply buffers with structured replies, error
// replies among the reads, TLS, and a client that goes away with replies queued; the FUSE
// read-ahead with parallel readers, writes that clear windows in flight, and reads that finish
// out of order.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { ReadAhead } from '../backends/fuse/read-ahead.js'
import { countingSource } from './support/read-ahead-source.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { BlockEngine } from '../src/engine/engine.js'
import { WriteConcern } from '../src/types.js'
import { CMD_READ, NbdClient, OPT_STARTTLS, REPLY_TYPE_ERROR, REP_ACK } from './support/nbd-client.js'
import { seededRandom } from './conformance/fixtures.js'
import { expectCode } from './support/assertions.js'
import { until } from './support/wait.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'

const KiB = 1024
const MiB = 1024 * KiB
const SENTINEL = 0xee

let root: string
let g: GalleonFS
/** What the volume 'enc' (encrypted) holds. */
let encImage: Uint8Array
/** What the snapshot 'enc@s' holds. */
let snapImage: Uint8Array

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-review-r13-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
  await g.createVolume({ name: 'enc', sizeBytes: 4 * MiB, storageClass: 'sealed' })
  encImage = new Uint8Array(4 * MiB)
  // Data with holes between: blocks never written must read as zeros whatever the buffer held.
  for (const [at, length] of [[0, 1 * MiB], [1 * MiB + 64 * KiB, 512 * KiB], [3 * MiB - 4 * KiB, 12 * KiB]] as const) {
    const bytes = new Uint8Array(randomBytes(length))
    await g.write('enc', at, bytes)
    encImage.set(bytes, at)
  }
  await g.createSnapshot('enc', 's')
  snapImage = new Uint8Array(encImage)
  const later = new Uint8Array(randomBytes(256 * KiB))
  await g.write('enc', 128 * KiB, later)
  encImage.set(later, 128 * KiB)
})
after(async () => {
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

/** A view of `length` bytes at byteOffset `at` of a sentinel-filled ArrayBuffer with room around it. */
function viewIn (length: number, at: number): { view: Uint8Array, whole: Uint8Array } {
  const whole = new Uint8Array(at + length + 4096 + 3).fill(SENTINEL)
  return { view: whole.subarray(at, at + length + 4096), whole }
}

function assertOnlyViewWritten (whole: Uint8Array, at: number, length: number, label: string): void {
  const before = whole.subarray(0, at).findIndex((b) => b !== SENTINEL)
  assert.equal(before, -1, `${label}: byte ${before} before the view was written`)
  const past = whole.subarray(at + length).findIndex((b) => b !== SENTINEL)
  assert.equal(past, -1, `${label}: byte ${past} past the read's length was written`)
}

describe('review r13: read into a buffer', () => {
  it('encrypted volume: large and unaligned reads into views at an offset of their buffer equal a fresh read, holes as zeros, nothing outside written', async () => {
    const cases: Array<[number, number]> = [
      [0, 1 * MiB], // 256 whole blocks: native batch, split with a pool thread
      [4096, 512 * KiB],
      [1000, 300 * KiB + 17], // unaligned both ends
      [900 * KiB + 5, 400 * KiB], // data, hole, data
      [2 * MiB, 256 * KiB], // all hole
      [3 * MiB - 6 * KiB, 16 * KiB]
    ]
    for (const [offset, length] of cases) {
      for (const at of [0, 1, 4096 + 13]) {
        const { view, whole } = viewIn(length, at)
        // Twice into the same buffer: the second read lands on the first one's bytes.
        for (let pass = 0; pass < 2; pass++) {
          const got = await g.read('enc', offset, length, view)
          const label = `enc ${offset}+${length} at ${at}, pass ${pass}`
          assert.equal(got.buffer, whole.buffer, label)
          assert.equal(got.byteOffset, at, label)
          assert.equal(got.byteLength, length, label)
          assert.ok(Buffer.from(got).equals(encImage.subarray(offset, offset + length)), label)
          assertOnlyViewWritten(whole, at, length, label)
        }
        // Stale bytes of another range in the buffer: a read of holes must still be zeros.
        view.fill(0x5a, 0, length)
        const got = await g.read('enc', offset, length, view)
        assert.ok(Buffer.from(got).equals(encImage.subarray(offset, offset + length)), `enc ${offset}+${length} over stale bytes`)
      }
    }
  })

  it('snapshot and clone of an encrypted volume, and a Buffer from the pool, read into reused buffers', async () => {
    await g.cloneVolume({ volume: 'enc', snapshot: 's' }, 'enc-clone')
    const reused = new Uint8Array(2 * MiB).fill(SENTINEL)
    for (const [offset, length] of [[0, 1 * MiB], [777, 600 * KiB], [1 * MiB, 1 * MiB]] as const) {
      const fromSnap = await g.read({ volume: 'enc', snapshot: 's' }, offset, length, reused)
      assert.ok(Buffer.from(fromSnap).equals(snapImage.subarray(offset, offset + length)), `snapshot ${offset}+${length}`)
      const fromClone = await g.read('enc-clone', offset, length, reused)
      assert.ok(Buffer.from(fromClone).equals(snapImage.subarray(offset, offset + length)), `clone ${offset}+${length}`)
    }
    // Node's small Buffers share one pool ArrayBuffer at an offset.
    const pooled = Buffer.allocUnsafe(3 * 4096)
    const neighbour = Buffer.allocUnsafe(64).fill(0x11)
    const got = await g.read('enc', 4096 * 5, 3 * 4096, pooled)
    assert.ok(Buffer.from(got).equals(encImage.subarray(4096 * 5, 4096 * 8)))
    assert.ok(neighbour.equals(Buffer.alloc(64, 0x11)), 'a Buffer beside it in the pool untouched')
    await g.deleteVolume('enc-clone')
  })

  it('a volume grown since it was written reads its new tail as zeros into a dirty buffer', async () => {
    await g.createVolume({ name: 'grow', sizeBytes: 1 * MiB, storageClass: 'sealed' })
    const tail = new Uint8Array(randomBytes(256 * KiB))
    await g.write('grow', 1 * MiB - 256 * KiB, tail)
    await g.expandVolume('grow', 2 * MiB)
    const dirty = new Uint8Array(1 * MiB).fill(0x77)
    const got = await g.read('grow', 1 * MiB - 256 * KiB, 512 * KiB, dirty)
    assert.ok(Buffer.from(got.subarray(0, 256 * KiB)).equals(tail))
    assert.equal(got.subarray(256 * KiB).findIndex((b) => b !== 0), -1, 'the grown part reads as zeros')
    await g.deleteVolume('grow')
  })

  it('into validation: a typed array other than bytes, null, a too-small view at an offset, are refused and leave the buffer as it was', async () => {
    await expectCode(g.read('enc', 0, 4096, new Uint16Array(4096) as unknown as Uint8Array), 'INVALID_ARGUMENT', 'into')
    await expectCode(g.read('enc', 0, 4096, null as unknown as Uint8Array), 'INVALID_ARGUMENT', 'into')
    const { view, whole } = viewIn(4096, 7)
    await expectCode(g.read('enc', 0, view.byteLength + 1, view), 'INVALID_ARGUMENT', `${view.byteLength} bytes`)
    assert.equal(whole.findIndex((b) => b !== SENTINEL), -1)
    // Past the end of the volume: refused before anything is cleared.
    await expectCode(g.read('enc', 4 * MiB - 4096, 8192, view), 'OUT_OF_RANGE')
    assert.equal(whole.findIndex((b) => b !== SENTINEL), -1, 'a refused read leaves the buffer untouched')
  })

  it('a bad length given with a buffer is reported as a bad length, not blamed on the buffer', async () => {
    const into = new Uint8Array(64 * KiB)
    for (const length of [1.5, Number.NaN, '4096' as unknown as number]) {
      await expectCode(g.read('enc', 0, length, into), 'INVALID_ARGUMENT', 'length must be a non-negative integer')
    }
  })
})

describe('review r13: NBD reply buffers', () => {
  let server: NbdServer
  const pskKey = randomBytes(32).toString('hex')
  before(async () => {
    server = await NbdServer.listen(g, { port: 0 })
  })
  after(async () => { await server?.close() })

  /** Runs 64 reads (some past the end, answered with errors) held back by a paused client, then checks every reply. */
  async function heldBack (client: NbdClient, structured: boolean, seed: number): Promise<void> {
    const random = seededRandom(seed)
    const lengths = [64 * KiB, 128 * KiB, 256 * KiB, 1 * MiB]
    const asked = new Map<number, { offset: number, length: number, bad: boolean }>()
    client.socket.pause()
    for (let handle = 1; handle <= 64; handle++) {
      const length = lengths[Math.floor(random() * lengths.length)] as number
      const bad = random() < 0.15
      const offset = bad ? 4 * MiB - 4096 : Math.floor(random() * ((4 * MiB - length) / 4096)) * 4096
      asked.set(handle, { offset, length, bad })
      client.socket.write(NbdClient.requestFrame(CMD_READ, handle, offset, length))
    }
    await new Promise((resolve) => setTimeout(resolve, 300))
    client.socket.resume()
    for (let i = 0; i < asked.size; i++) {
      let handle: number
      let data: Buffer | undefined
      let error: number
      if (structured) {
        const chunk = await client.chunk()
        handle = chunk.handle
        error = chunk.error
        if (chunk.type !== REPLY_TYPE_ERROR) data = chunk.body.subarray(8)
      } else {
        // A simple reply's length is known only from its request: read the header first.
        const head = await client.read(16) as Buffer
        handle = Number(head.readBigUInt64BE(8))
        error = head.readUInt32BE(4)
        const request = asked.get(handle)
        assert.ok(request !== undefined, `reply to an unknown handle ${handle}`)
        if (error === 0) data = await client.read(request.length)
      }
      const request = asked.get(handle)
      assert.ok(request !== undefined, `reply to an unknown handle ${handle}`)
      if (request.bad) { assert.notEqual(error, 0, `handle ${handle}: a read past the end fails`); continue }
      assert.equal(error, 0, `handle ${handle}`)
      const want = encImage.subarray(request.offset, request.offset + request.length)
      assert.ok(data !== undefined && Buffer.from(data).equals(want), `seed ${seed}, handle ${handle}: reply bytes of ${request.offset}+${request.length} differ`)
    }
  }

  it('structured replies held back, with error replies among them, carry their own bytes', async () => {
    for (let round = 0; round < 2; round++) {
      const client = await NbdClient.connect(server.port, { readTimeoutMs: 30_000 })
      try {
        await client.hello()
        await client.structuredReplies()
        await client.go('enc')
        await heldBack(client, true, 100 + round)
      } finally { client.socket.destroy() }
    }
  })

  it('simple replies over TLS held back carry their own bytes', async () => {
    const tlsServer = await NbdServer.listen(g, { port: 0, tls: { psk: { alice: pskKey } } })
    try {
      for (let round = 0; round < 2; round++) {
        const raw = await NbdClient.connect(tlsServer.port, { readTimeoutMs: 30_000 })
        await raw.hello()
        raw.option(OPT_STARTTLS)
        assert.equal((await raw.optionReply()).type, REP_ACK)
        const client = await raw.startTls({ pskCallback: () => ({ identity: 'alice', psk: Buffer.from(pskKey, 'hex') }), checkServerIdentity: () => undefined })
        try {
          if (round === 1) await client.structuredReplies()
          await client.go('enc')
          await heldBack(client, round === 1, 200 + round)
        } finally { client.socket.destroy() }
      }
    } finally {
      await tlsServer.close()
    }
  })

  it('a client that goes away with replies queued leaves the server serving others correctly', async () => {
    for (let round = 0; round < 3; round++) {
      const quitter = await NbdClient.connect(server.port)
      await quitter.hello()
      await quitter.go('enc')
      quitter.socket.pause()
      for (let handle = 1; handle <= 64; handle++) quitter.socket.write(NbdClient.requestFrame(CMD_READ, handle, (handle % 12) * 256 * KiB, 1 * MiB))
      await new Promise((resolve) => setTimeout(resolve, 50 + round * 50))
      quitter.socket.destroy()
    }
    const client = await NbdClient.connect(server.port, { readTimeoutMs: 30_000 })
    try {
      await client.hello()
      await client.go('enc')
      await heldBack(client, false, 7)
    } finally { client.socket.destroy() }
  })
})

describe('review r13: FUSE read-ahead buffers', () => {
  it('two sequential readers at once, writes clearing windows in flight, reads finishing out of order: every answer is what the volume held', async () => {
    const store = new MemoryBlockStore()
    await store.open()
    const engine = new BlockEngine(store, { blockSize: 4096, cacheBlocks: 0 })
    try {
      const size = 8 * MiB
      const REQUEST = 128 * KiB
      const volume = engine.attach(1, size)
      const model = new Uint8Array(size)
      const random = seededRandom(13)
      // Bytes that differ from place to place: an answer with another window's bytes shows.
      const fillRange = async (at: number, length: number): Promise<void> => {
        const bytes = new Uint8Array(randomBytes(length))
        await engine.write(volume, at, bytes, WriteConcern.WriteAcknowledged)
        model.set(bytes, at)
      }
      for (let mib = 0; mib < 8; mib += 2) await fillRange(mib * MiB, MiB)
      // Reads start after a random delay (a window's read now and then a slow one), so they finish out of order.
      const { source, reused } = countingSource(engine, volume, size, async (into) => {
        await new Promise((resolve) => setTimeout(resolve, into !== undefined && random() < 0.25 ? 15 : Math.floor(random() * 2)))
      })
      const ahead = new ReadAhead(source)
      // As the FUSE driver does: copied into the kernel's buffer as soon as the answer comes.
      const ask = async (at: number): Promise<void> => {
        const answer = await ahead.read(at, REQUEST).then((bytes) => new Uint8Array(bytes))
        assert.ok(Buffer.from(answer).equals(model.subarray(at, at + REQUEST)), `answer at ${at}`)
      }
      for (let pass = 0; pass < 10; pass++) {
        // Stretches of one reader (read-ahead runs), then both at once (windows cleared by jumps).
        for (let at = 0; at < size / 2; at += REQUEST) {
          const other = size / 2 + at
          if ((at / REQUEST) % 8 < 5) {
            await ask(at)
          } else {
            await Promise.all([ask(at), ask(other)])
          }
          const dice = random()
          if (dice < 0.1) {
            // A write through the mount: windows (maybe still reading) are dropped; the write then
            // lands where they would have been.
            ahead.clear()
            const where = Math.floor(random() * (size / 4096 - 64)) * 4096
            await fillRange(where, 64 * 4096)
          } else if (dice < 0.35) {
            // A write elsewhere (still to reach the volume): windows still reading are dropped, and
            // the reader goes on at once, so new windows start while the dropped reads run.
            ahead.clear()
          }
          await new Promise((resolve) => setImmediate(resolve))
        }
      }
      assert.ok(ahead.hits > 10, `requests answered from windows (${ahead.hits})`)
      assert.ok(reused() > 10, `windows read into reused buffers (${reused()})`)
      ahead.close()
    } finally {
      await engine.close()
      await store.close()
    }
  })
})

describe('review r13: reads forwarded to the primary', () => {
  it('a replica node reads into a view at an offset (copied from the primary\'s payload), and its NBD export answers held-back reads with their own bytes', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const nodes: GalleonFS[] = []
    const dirs: string[] = []
    let nbd: NbdServer | undefined
    try {
      for (const id of ['n1', 'n2']) {
        const dir = await mkdtemp(join(tmpdir(), `galleon-review-r13-${id}-`))
        dirs.push(dir)
        nodes.push(await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } }))
      }
      const [n1, n2] = nodes as [GalleonFS, GalleonFS]
      await until('both nodes see each other', () => nodes.every((n) => n.cluster?.members.filter((m) => m.healthy).length === 2))
      await n1.createVolume({ name: 'pair', sizeBytes: 4 * MiB, replicas: 2 })
      const image = new Uint8Array(randomBytes(4 * MiB))
      image.fill(0, 2 * MiB, 3 * MiB) // a hole, never written
      await n1.write('pair', 0, image.subarray(0, 2 * MiB), WriteConcern.WriteReplicated)
      await n1.write('pair', 3 * MiB, image.subarray(3 * MiB), WriteConcern.WriteReplicated)
      assert.equal((await n2.replicationStatus('pair')).role, 'replica')
      const primaryReads = (await n1.getVolumeMetrics('pair')).readOps
      for (const [offset, length] of [[0, 1 * MiB], [1 * MiB + 77, 1536 * KiB], [2 * MiB, 64 * KiB]] as const) {
        const at = 3
        const { view, whole } = viewIn(length, at)
        view.fill(0x5a)
        const got = await n2.read('pair', offset, length, view)
        assert.equal(got.buffer, whole.buffer)
        assert.equal(got.byteOffset, at)
        assert.ok(Buffer.from(got).equals(image.subarray(offset, offset + length)), `forwarded ${offset}+${length}`)
      }
      assert.ok((await n1.getVolumeMetrics('pair')).readOps >= primaryReads + 3, 'the replica\'s reads were served by the primary')
      await expectCode(n2.read('pair', 0, 8192, new Uint8Array(4096)), 'INVALID_ARGUMENT', '4096 bytes')
      nbd = await NbdServer.listen(n2, { port: 0 })
      const client = await NbdClient.connect(nbd.port, { readTimeoutMs: 30_000 })
      try {
        await client.hello()
        await client.go('pair')
        client.socket.pause()
        const asked = new Map<number, number>()
        for (let handle = 1; handle <= 32; handle++) {
          const offset = (handle % 12) * 256 * KiB
          asked.set(handle, offset)
          client.socket.write(NbdClient.requestFrame(CMD_READ, handle, offset, 1 * MiB))
        }
        await new Promise((resolve) => setTimeout(resolve, 300))
        client.socket.resume()
        for (let i = 0; i < asked.size; i++) {
          const reply = await client.reply(1 * MiB)
          assert.equal(reply.error, 0)
          const offset = asked.get(reply.handle) as number
          assert.ok(Buffer.from(reply.data).equals(image.subarray(offset, offset + MiB)), `forwarded NBD read of handle ${reply.handle}`)
        }
      } finally { client.socket.destroy() }
    } finally {
      await nbd?.close()
      for (const node of nodes.reverse()) await node.close().catch(() => {})
      for (const dir of dirs) await rm(dir, { recursive: true, force: true })
    }
  })
})
