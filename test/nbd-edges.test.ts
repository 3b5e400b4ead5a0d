// The NBD server's edges from an audit against doc/proto.md and what qemu and nbdkit do: clients
// that send without reading (option floods, data after NBD_CMD_DISC), clients that shut down their
// sending side, meta contexts chosen for another export, and frames the protocol does not allow
// arriving behind requests still in flight. Raw sockets, so that the client can misbehave.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'

const MiB = 1 << 20
const IHAVEOPT = 0x49484156454f5054n
const OPT_EXPORT_NAME = 1
const OPT_LIST = 3
const OPT_GO = 7
const OPT_STRUCTURED_REPLY = 8
const OPT_SET_META_CONTEXT = 10
const REP_ACK = 1
const REP_SERVER = 2
const REP_META_CONTEXT = 4
const REP_ERR_UNSUP = 0x80000001
const CMD_READ = 0
const CMD_DISC = 2
const CMD_WRITE_ZEROES = 6
const CMD_BLOCK_STATUS = 7
const FUA = 1
const NO_HOLE = 2
const EINVAL = 22

let root: string
let g: GalleonFS
let server: NbdServer

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-nbd-edges-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  await g.createVolume({ name: 'alpha', sizeBytes: '16M' })
  await g.write('alpha', 0, new Uint8Array(randomBytes(16 * MiB)))
  await g.createVolume({ name: 'beta', sizeBytes: '4M' })
  server = await NbdServer.listen(g, { port: 0 })
})
after(async () => {
  await server?.close()
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

/** Polls `sample` until it returns the same value `times` times in a row (or the deadline passes). */
async function settled<T> (sample: () => T | Promise<T>, times = 4, everyMs = 250, deadlineMs = 60_000): Promise<T> {
  const deadline = Date.now() + deadlineMs
  let last = await sample()
  for (let same = 0; same < times && Date.now() < deadline;) {
    await new Promise((resolve) => setTimeout(resolve, everyMs))
    const now = await sample()
    same = now === last ? same + 1 : 0
    last = now
  }
  return last
}

/** A raw NBD client whose input is a queue of chunks (it may hold many MiB unread). */
class Wire {
  readonly socket: Socket
  readonly #chunks: Buffer[] = []
  #buffered = 0
  #wake: (() => void) | undefined
  closed = false

  private constructor (socket: Socket) {
    this.socket = socket
    socket.on('data', (chunk: Buffer) => { this.#chunks.push(chunk); this.#buffered += chunk.byteLength; this.#wake?.() })
    socket.on('close', () => { this.closed = true; this.#wake?.() })
    socket.on('error', () => {})
  }

  static async connect (port: number, allowHalfOpen = false): Promise<Wire> {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen })
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
    return new Wire(socket)
  }

  /** Exactly n bytes, or undefined if the connection closed or 10 s passed first. */
  async read (n: number): Promise<Buffer | undefined> {
    const deadline = Date.now() + 10_000
    while (this.#buffered < n) {
      if (this.closed || Date.now() > deadline) return undefined
      await new Promise<void>((resolve) => { this.#wake = resolve; setTimeout(resolve, 100) })
    }
    const out = Buffer.alloc(n)
    for (let at = 0; at < n;) {
      const chunk = this.#chunks[0] as Buffer
      const take = Math.min(chunk.byteLength, n - at)
      chunk.copy(out, at, 0, take)
      at += take
      if (take === chunk.byteLength) this.#chunks.shift()
      else this.#chunks[0] = chunk.subarray(take)
    }
    this.#buffered -= n
    return out
  }

  async closedByServer (timeoutMs = 10_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (!this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    return this.closed
  }

  async hello (): Promise<void> {
    const greeting = await this.read(18)
    assert.ok(greeting !== undefined, 'the greeting')
    assert.equal(greeting.readBigUInt64BE(8), IHAVEOPT)
    this.socket.write(Buffer.from([0, 0, 0, 3])) // fixed newstyle, no zeroes
  }

  static option (option: number, data: Buffer = Buffer.alloc(0)): Buffer {
    const head = Buffer.alloc(16)
    head.writeBigUInt64BE(IHAVEOPT, 0)
    head.writeUInt32BE(option, 8)
    head.writeUInt32BE(data.byteLength, 12)
    return Buffer.concat([head, data])
  }

  option (option: number, data?: Buffer): void { this.socket.write(Wire.option(option, data)) }

  async optionReply (): Promise<{ option: number, type: number, data: Buffer }> {
    const head = await this.read(20)
    assert.ok(head !== undefined, 'an option reply')
    assert.equal(head.readBigUInt64BE(0), 0x3e889045565a9n)
    const data = await this.read(head.readUInt32BE(16))
    assert.ok(data !== undefined, 'the option reply data')
    return { option: head.readUInt32BE(8), type: head.readUInt32BE(12), data }
  }

  /** NBD_OPT_GO: the transmission flags, after the replies up to ACK. */
  async go (name: string): Promise<number> {
    this.option(OPT_GO, nameWithInfoRequests(name))
    let flags = -1
    for (;;) {
      const reply = await this.optionReply()
      if (reply.type === 3 && reply.data.readUInt16BE(0) === 0) flags = reply.data.readUInt16BE(10)
      if (reply.type === REP_ACK) return flags
      assert.ok(reply.type < 0x80000000, `GO ${name} refused: ${reply.data.toString()}`)
    }
  }

  async structuredReplies (): Promise<void> {
    this.option(OPT_STRUCTURED_REPLY)
    assert.equal((await this.optionReply()).type, REP_ACK)
  }

  /** NBD_OPT_SET_META_CONTEXT base:allocation for `name`: resolves to the contexts the server chose. */
  async setAllocationContext (name: string): Promise<string[]> {
    const query = Buffer.from('base:allocation')
    const nameBytes = Buffer.from(name)
    const data = Buffer.alloc(4 + nameBytes.byteLength + 4 + 4 + query.byteLength)
    data.writeUInt32BE(nameBytes.byteLength, 0)
    nameBytes.copy(data, 4)
    data.writeUInt32BE(1, 4 + nameBytes.byteLength)
    data.writeUInt32BE(query.byteLength, 8 + nameBytes.byteLength)
    query.copy(data, 12 + nameBytes.byteLength)
    this.option(OPT_SET_META_CONTEXT, data)
    const chosen: string[] = []
    for (let reply = await this.optionReply(); reply.type !== REP_ACK; reply = await this.optionReply()) {
      assert.equal(reply.type, REP_META_CONTEXT)
      chosen.push(reply.data.subarray(4).toString())
    }
    return chosen
  }

  request (type: number, handle: number, offset: number, length: number, flags = 0, data?: Uint8Array): void {
    const head = Buffer.alloc(28)
    head.writeUInt32BE(0x25609513, 0)
    head.writeUInt16BE(flags, 4)
    head.writeUInt16BE(type, 6)
    head.writeBigUInt64BE(BigInt(handle), 8)
    head.writeBigUInt64BE(BigInt(offset), 16)
    head.writeUInt32BE(length, 24)
    this.socket.write(data === undefined ? head : Buffer.concat([head, data]))
  }

  /** A simple reply; a successful read brings `dataLength` bytes. */
  async reply (dataLength = 0): Promise<{ error: number, handle: number, data: Buffer } | undefined> {
    const head = await this.read(16)
    if (head === undefined) return undefined
    assert.equal(head.readUInt32BE(0), 0x67446698)
    const error = head.readUInt32BE(4)
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0)
    if (data === undefined) return undefined
    return { error, handle: Number(head.readBigUInt64BE(8)), data }
  }

  /** A structured reply chunk: its handle, type and the error of an error chunk. */
  async chunk (): Promise<{ handle: number, type: number, error: number, body: Buffer }> {
    const head = await this.read(20)
    assert.ok(head !== undefined, 'a structured reply')
    assert.equal(head.readUInt32BE(0), 0x668e33ef)
    const body = await this.read(head.readUInt32BE(16))
    assert.ok(body !== undefined)
    const type = head.readUInt16BE(6)
    return { handle: Number(head.readBigUInt64BE(8)), type, error: type === 0x8001 ? body.readUInt32BE(0) : 0, body }
  }
}

/** The data of NBD_OPT_GO/INFO: a name and no information requests. */
function nameWithInfoRequests (name: string): Buffer {
  const nameBytes = Buffer.from(name)
  const data = Buffer.alloc(4 + nameBytes.byteLength + 2)
  data.writeUInt32BE(nameBytes.byteLength, 0)
  nameBytes.copy(data, 4)
  return data
}

describe('NBD server edges', () => {
  it('a client that sends options without reading the replies is neither answered nor read without bound; once it reads, every option is answered', async () => {
    // Its own instance: many volumes with long names make each NBD_OPT_LIST answer about 4 KiB.
    const h = await GalleonFS.open({ inMemory: true })
    // Its handshake lasts as long as answering 12,000 lists takes (about 10 s here): no time limit.
    const own = await NbdServer.listen(h, { port: 0, handshakeTimeoutMs: 0 })
    try {
      const VOLUMES = 50
      for (let i = 0; i < VOLUMES; i++) await h.createVolume({ name: `volume-with-a-long-name-to-make-list-replies-long-${String(i).padStart(4, '0')}`, sizeBytes: '1M' })
      const listVolumes = h.listVolumes.bind(h)
      let lists = 0
      h.listVolumes = async (...args: Parameters<GalleonFS['listVolumes']>) => { lists++; return await listVolumes(...args) }

      const client = await Wire.connect(own.port)
      await client.hello()
      client.socket.pause() // reads nothing from now on
      // About 50 MiB of NBD_OPT_LIST replies asked for (each option 16 bytes), then 128 MiB of
      // options the server does not know (answered NBD_REP_ERR_UNSUP, 64 KiB of data each).
      const LISTS = 12_000
      client.socket.write(Buffer.concat(Array.from({ length: LISTS }, () => Wire.option(OPT_LIST))))
      const unknown = Wire.option(4242, Buffer.alloc(64 * 1024, 0x5a))
      const UNKNOWN = 2048
      for (let i = 0; i < UNKNOWN; i++) client.socket.write(unknown)
      const stalledAt = await settled(() => `${lists}/${client.socket.writableLength}`)
      const [listed, unsent] = stalledAt.split('/').map(Number) as [number, number]
      assert.ok(listed < LISTS / 2, `the server stopped answering a client that reads nothing (${listed} of ${LISTS} lists answered)`)
      assert.ok(unsent > 64 * MiB, `and stopped reading from it (${((UNKNOWN * unknown.byteLength - unsent) / MiB).toFixed(1)} of ${(UNKNOWN * unknown.byteLength / MiB).toFixed(0)} MiB taken)`)

      // Now it reads: every option is answered, in order, and the session goes on.
      client.socket.resume()
      let entries = 0
      for (let i = 0; i < LISTS; i++) {
        for (let reply = await client.optionReply(); reply.type !== REP_ACK; reply = await client.optionReply()) {
          assert.equal(reply.type, REP_SERVER)
          entries++
        }
      }
      assert.equal(entries, LISTS * VOLUMES)
      for (let i = 0; i < UNKNOWN; i++) {
        const reply = await client.optionReply()
        assert.deepEqual([reply.option, reply.type], [4242, REP_ERR_UNSUP])
      }
      assert.equal(lists, LISTS)
      const name = (await h.listVolumes())[0]?.name as string
      await client.go(name)
      client.request(CMD_READ, 9, 0, 4096)
      const read = await client.reply(4096)
      assert.deepEqual([read?.handle, read?.error], [9, 0])
      client.socket.destroy()
    } finally {
      await own.close()
      await h.close()
    }
  })

  it('option haggling corners are answered as proto.md says, and the session goes on after each error', async () => {
    const client = await Wire.connect(server.port)
    await client.hello()
    const answers = async (option: number, data?: Buffer): Promise<Array<[number, Buffer]>> => {
      client.option(option, data)
      const out: Array<[number, Buffer]> = []
      for (;;) {
        const reply = await client.optionReply()
        assert.equal(reply.option, option)
        out.push([reply.type, reply.data])
        if (reply.type === REP_ACK || reply.type >= 0x80000000) return out
      }
    }
    const types = async (option: number, data?: Buffer): Promise<number[]> => (await answers(option, data)).map(([type]) => type)
    // NBD_OPT_INFO asking for its name, description, block sizes and an unknown item (ignored).
    const info = nameWithInfoRequests('alpha')
    const asked = Buffer.alloc(info.byteLength + 8)
    info.copy(asked)
    asked.writeUInt16BE(4, info.byteLength - 2)
    ;[1, 2, 3, 999].forEach((item, i) => asked.writeUInt16BE(item, info.byteLength + 2 * i))
    const items = new Map((await answers(6, asked)).filter(([type]) => type === 3).map(([, data]) => [data.readUInt16BE(0), data.subarray(2)]))
    assert.deepEqual([...items.keys()].sort(), [0, 1, 2, 3])
    assert.equal(Number(items.get(0)?.readBigUInt64BE(0)), 16 * MiB)
    assert.equal(items.get(1)?.toString(), 'alpha')
    assert.match(items.get(2)?.toString() ?? '', /alpha/)
    const sizes = items.get(3) as Buffer
    assert.deepEqual([sizes.readUInt32BE(0), sizes.readUInt32BE(4), sizes.readUInt32BE(8)], [1, g.blockSize, 32 * MiB])
    // Malformed options: NBD_REP_ERR_INVALID, nothing else.
    assert.deepEqual(await types(6, Buffer.concat([nameWithInfoRequests('alpha'), Buffer.from([0])])), [0x80000003]) // a byte too many
    const runaway = nameWithInfoRequests('alpha')
    runaway.writeUInt32BE(0xffffffff, 0)
    assert.deepEqual(await types(OPT_GO, runaway), [0x80000003]) // a name longer than the option
    assert.deepEqual(await types(OPT_STRUCTURED_REPLY, Buffer.from([0])), [0x80000003])
    assert.deepEqual(await types(OPT_LIST, Buffer.from([0])), [0x80000003])
    // No TLS here: NBD_OPT_STARTTLS is refused (UNSUP) and the session goes on in the clear.
    assert.deepEqual(await types(5), [REP_ERR_UNSUP])
    await client.structuredReplies()
    // Meta contexts: an empty list or "base:" lists base:allocation, another namespace nothing; an
    // empty SET chooses none.
    const metaQuery = (queries: string[]): Buffer => {
      const parts = [Buffer.alloc(4), Buffer.from('alpha'), Buffer.alloc(4)]
      parts[0]?.writeUInt32BE(5)
      parts[2]?.writeUInt32BE(queries.length)
      for (const query of queries) {
        const length = Buffer.alloc(4)
        length.writeUInt32BE(Buffer.byteLength(query))
        parts.push(length, Buffer.from(query))
      }
      return Buffer.concat(parts)
    }
    const listed = async (queries: string[]): Promise<string[]> => (await answers(9, metaQuery(queries))).filter(([type]) => type === REP_META_CONTEXT).map(([, data]) => data.subarray(4).toString())
    assert.deepEqual(await listed([]), ['base:allocation'])
    assert.deepEqual(await listed(['base:']), ['base:allocation'])
    assert.deepEqual(await listed(['x-other:thing']), [])
    assert.deepEqual(await types(OPT_SET_META_CONTEXT, metaQuery([])), [REP_ACK])
    assert.equal(await client.go('alpha') & 0x80, 0x80, 'DF with structured replies')
    client.request(CMD_BLOCK_STATUS, 3, 0, 4096)
    assert.equal((await client.chunk()).error, EINVAL, 'no context chosen')
    client.socket.destroy()
  })

  it('a client that shuts down its sending side after NBD_CMD_DISC, or without it, gets the replies to every request it sent', async () => {
    for (const disc of [true, false]) {
      const client = await Wire.connect(server.port, true)
      await client.hello()
      await client.go('alpha')
      const COUNT = 16
      for (let i = 0; i < COUNT; i++) client.request(CMD_READ, 100 + i, (i % 4) * 4 * MiB, 4 * MiB)
      if (disc) client.request(CMD_DISC, 999, 0, 0)
      client.socket.end() // FIN: nothing more from the client, which still reads
      const handles: number[] = []
      for (let i = 0; i < COUNT; i++) {
        const reply = await client.reply(4 * MiB)
        assert.ok(reply !== undefined, `reply ${i + 1} of ${COUNT} arrived (after ${disc ? 'DISC and ' : ''}a half-close)`)
        assert.equal(reply.error, 0)
        assert.deepEqual(new Uint8Array(reply.data), await g.read('alpha', ((reply.handle - 100) % 4) * 4 * MiB, 4 * MiB))
        handles.push(reply.handle)
      }
      assert.deepEqual(handles.sort((a, b) => a - b), Array.from({ length: COUNT }, (_, i) => 100 + i))
      assert.equal(await client.closedByServer(), true, 'then the server closes the connection')
    }
  })

  it('after NBD_CMD_DISC, whatever the client still sends is read and dropped, not held', async () => {
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    const client = await Wire.connect(server.port, true)
    await client.hello()
    await client.go('beta')
    client.request(CMD_DISC, 1, 0, 0)
    // The client breaks the rule that nothing follows NBD_CMD_DISC: 256 MiB more.
    const junk = Buffer.alloc(MiB, 0x41)
    gc()
    const before = process.memoryUsage().arrayBuffers
    for (let i = 0; i < 256; i++) client.socket.write(junk)
    const deadline = Date.now() + 30_000
    while (client.socket.writableLength > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
    assert.equal(client.socket.writableLength, 0, 'the server reads on, so that it sees the client close')
    gc()
    const grown = process.memoryUsage().arrayBuffers - before
    assert.ok(grown < 64 * MiB, `the server kept ${(grown / MiB).toFixed(0)} MiB of what came after DISC`)
    client.socket.end()
    assert.equal(await client.closedByServer(), true)
  })

  it('meta contexts chosen for one export do not apply to a session of another: BLOCK_STATUS is EINVAL there (NBD_OPT_GO and NBD_OPT_EXPORT_NAME)', async () => {
    const status = async (client: Wire): Promise<number> => {
      client.request(CMD_BLOCK_STATUS, 5, 0, 4096)
      const reply = await client.chunk()
      assert.equal(reply.handle, 5)
      return reply.error
    }
    // The same export (by another name for it, its id): base:allocation applies.
    const same = await Wire.connect(server.port)
    await same.hello()
    await same.structuredReplies()
    assert.deepEqual(await same.setAllocationContext('alpha'), ['base:allocation'])
    await same.go((await g.getVolume('alpha')).id)
    assert.equal(await status(same), 0)
    same.socket.destroy()

    const other = await Wire.connect(server.port)
    await other.hello()
    await other.structuredReplies()
    assert.deepEqual(await other.setAllocationContext('beta'), ['base:allocation'])
    await other.go('alpha')
    assert.equal(await status(other), EINVAL)
    other.socket.destroy()

    const byName = await Wire.connect(server.port)
    await byName.hello()
    await byName.structuredReplies()
    assert.deepEqual(await byName.setAllocationContext('beta'), ['base:allocation'])
    byName.option(OPT_EXPORT_NAME, Buffer.from('alpha'))
    const exported = await byName.read(10)
    assert.equal(Number(exported?.readBigUInt64BE(0)), 16 * MiB)
    assert.equal(await status(byName), EINVAL)
    byName.socket.destroy()
  })

  it('a frame the protocol does not allow, behind a request in flight: that request lands and is answered before the session lets its writer\'s place go', async () => {
    const SIZE = 64 * MiB
    await g.createVolume({ name: 'gamma', sizeBytes: SIZE })
    await g.write('gamma', 0, new Uint8Array(randomBytes(SIZE)))
    const client = await Wire.connect(server.port)
    await client.hello()
    assert.equal(await client.go('gamma') & 2, 0, 'writable')
    // A long request: zeros written (NO_HOLE) over the whole volume, 1 MiB at a time, durably
    // (FUA); then a bad magic.
    const zeroes = Buffer.alloc(28)
    zeroes.writeUInt32BE(0x25609513, 0)
    zeroes.writeUInt16BE(NO_HOLE | FUA, 4)
    zeroes.writeUInt16BE(CMD_WRITE_ZEROES, 6)
    zeroes.writeBigUInt64BE(77n, 8)
    zeroes.writeUInt32BE(SIZE, 24)
    client.socket.write(Buffer.concat([zeroes, Buffer.alloc(28, 0x42)]))
    // A read-write mount is refused while the session may write; the moment it is let in, the
    // session's request is done.
    let mountId: string | undefined
    const deadline = Date.now() + 60_000
    while (mountId === undefined) {
      mountId = await g.mounts.mountVolume('gamma', join(root, 'virtual-gamma')).catch((err: { code?: string }) => {
        if (err.code !== 'BUSY') throw err
        return undefined
      })
      assert.ok(Date.now() < deadline, 'the session let the writer\'s place go')
    }
    const landed = await g.read('gamma', 0, SIZE)
    await g.mounts.unmountVolume(mountId)
    assert.ok(landed.every((b) => b === 0), 'the request before the bad frame was done before a mount could write')
    const reply = await client.reply()
    assert.deepEqual([reply?.handle, reply?.error], [77, 0], 'and answered')
    assert.equal(await client.closedByServer(), true, 'then the connection ends')
  })
})
