// The NBD server's edges from an audit against doc/proto.md and what qemu and nbdkit do: clients
// that send without reading (option floods, data after NBD_CMD_DISC), clients that shut down their
// sending side, meta contexts chosen for another export, and frames the protocol does not allow
// arriving behind requests still in flight. Raw sockets, so that the client can misbehave.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import {
  CMD_BLOCK_STATUS, CMD_DISC, CMD_READ, CMD_WRITE_ZEROES, EINVAL, FUA, NO_HOLE, NbdClient, OPT_EXPORT_NAME, OPT_GO, OPT_LIST,
  OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_UNSUP, REP_META_CONTEXT, REP_SERVER, infoRequestData, metaContextData
} from './support/nbd-client.js'

const MiB = 1 << 20
/** Raw clients here wait up to 10 s for bytes and for the server to close the connection. */
const clientTimeouts = { readTimeoutMs: 10_000, closeTimeoutMs: 10_000 }

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

      // Once it reads, the server has some 180 MiB to answer and take in: on a loaded machine a
      // reply can be seconds behind the one before, so this client waits up to a minute for each.
      const client = await NbdClient.connect(own.port, { ...clientTimeouts, readTimeoutMs: 60_000 })
      await client.hello()
      client.socket.pause() // reads nothing from now on
      // About 50 MiB of NBD_OPT_LIST replies asked for (each option 16 bytes), then 128 MiB of
      // options the server does not know (answered NBD_REP_ERR_UNSUP, 64 KiB of data each).
      const LISTS = 12_000
      client.socket.write(Buffer.concat(Array.from({ length: LISTS }, () => NbdClient.optionFrame(OPT_LIST))))
      const unknown = NbdClient.optionFrame(4242, Buffer.alloc(64 * 1024, 0x5a))
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
      const read = await client.replyIfAny(4096)
      assert.deepEqual([read?.handle, read?.error], [9, 0])
      client.socket.destroy()
    } finally {
      await own.close()
      await h.close()
    }
  })

  it('option haggling corners are answered as proto.md says, and the session goes on after each error', async () => {
    const client = await NbdClient.connect(server.port, clientTimeouts)
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
    const info = infoRequestData('alpha')
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
    assert.deepEqual(await types(6, Buffer.concat([infoRequestData('alpha'), Buffer.from([0])])), [0x80000003]) // a byte too many
    const runaway = infoRequestData('alpha')
    runaway.writeUInt32BE(0xffffffff, 0)
    assert.deepEqual(await types(OPT_GO, runaway), [0x80000003]) // a name longer than the option
    assert.deepEqual(await types(OPT_STRUCTURED_REPLY, Buffer.from([0])), [0x80000003])
    assert.deepEqual(await types(OPT_LIST, Buffer.from([0])), [0x80000003])
    // No TLS here: NBD_OPT_STARTTLS is refused (UNSUP) and the session goes on in the clear.
    assert.deepEqual(await types(5), [REP_ERR_UNSUP])
    await client.structuredReplies()
    // Meta contexts: an empty list or "base:" lists base:allocation, another namespace nothing; an
    // empty SET chooses none.
    const metaQuery = (queries: string[]): Buffer => metaContextData('alpha', queries)
    const listed = async (queries: string[]): Promise<string[]> => (await answers(9, metaQuery(queries))).filter(([type]) => type === REP_META_CONTEXT).map(([, data]) => data.subarray(4).toString())
    assert.deepEqual(await listed([]), ['base:allocation'])
    assert.deepEqual(await listed(['base:']), ['base:allocation'])
    assert.deepEqual(await listed(['x-other:thing']), [])
    assert.deepEqual(await types(OPT_SET_META_CONTEXT, metaQuery([])), [REP_ACK])
    assert.equal((await client.go('alpha')).flags & 0x80, 0x80, 'DF with structured replies')
    client.request(CMD_BLOCK_STATUS, 3, 0, 4096)
    assert.equal((await client.chunk()).error, EINVAL, 'no context chosen')
    client.socket.destroy()
  })

  it('a client that shuts down its sending side after NBD_CMD_DISC, or without it, gets the replies to every request it sent', async () => {
    for (const disc of [true, false]) {
      const client = await NbdClient.connect(server.port, { ...clientTimeouts, allowHalfOpen: true })
      await client.hello()
      await client.go('alpha')
      const COUNT = 16
      for (let i = 0; i < COUNT; i++) client.request(CMD_READ, 100 + i, (i % 4) * 4 * MiB, 4 * MiB)
      if (disc) client.request(CMD_DISC, 999, 0, 0)
      client.socket.end() // FIN: nothing more from the client, which still reads
      const handles: number[] = []
      for (let i = 0; i < COUNT; i++) {
        const reply = await client.replyIfAny(4 * MiB)
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
    const client = await NbdClient.connect(server.port, { ...clientTimeouts, allowHalfOpen: true })
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
    const status = async (client: NbdClient): Promise<number> => {
      client.request(CMD_BLOCK_STATUS, 5, 0, 4096)
      const reply = await client.chunk()
      assert.equal(reply.handle, 5)
      return reply.error
    }
    // The same export (by another name for it, its id): base:allocation applies.
    const same = await NbdClient.connect(server.port, clientTimeouts)
    await same.hello()
    await same.structuredReplies()
    assert.deepEqual(await same.setAllocationContext('alpha'), ['base:allocation'])
    await same.go((await g.getVolume('alpha')).id)
    assert.equal(await status(same), 0)
    same.socket.destroy()

    const other = await NbdClient.connect(server.port, clientTimeouts)
    await other.hello()
    await other.structuredReplies()
    assert.deepEqual(await other.setAllocationContext('beta'), ['base:allocation'])
    await other.go('alpha')
    assert.equal(await status(other), EINVAL)
    other.socket.destroy()

    const byName = await NbdClient.connect(server.port, clientTimeouts)
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
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    assert.equal((await client.go('gamma')).flags & 2, 0, 'writable')
    // A long request: zeros written (NO_HOLE) over the whole volume, 1 MiB at a time, durably
    // (FUA); then a bad magic.
    const zeroes = NbdClient.requestFrame(CMD_WRITE_ZEROES, 77, 0, SIZE, NO_HOLE | FUA)
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
    const reply = await client.replyIfAny()
    assert.deepEqual([reply?.handle, reply?.error], [77, 0], 'and answered')
    assert.equal(await client.closedByServer(), true, 'then the connection ends')
  })
})
