// Resource leaks under NBD churn: a server listening and closing many times with clients on it, and
// one long-lived server whose clients connect, negotiate, read and write, and disconnect, cleanly or
// by vanishing before the greeting, in the middle of an option, after NBD_OPT_GO, in the middle of
// a write's payload and with a read's reply unread. After each churn the process holds the
// descriptors and handles it held before, the instance has no more listeners, the server counts no
// connection, the volume is not held by any export (it can be deleted without force), and the heap
// did not grow by more than a generous bound per cycle.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { CMD_DISC, CMD_READ, NbdClient, OPT_GO, infoRequestData } from './support/nbd-client.js'
import { leftoversAfter, listenerTotal, settledHeap, takeResources } from './support/h47-resources.js'
import { until } from './support/wait.js'

const CMD_WRITE = 1
const CMD_FLUSH = 3
const HEAP_BYTES_PER_CYCLE = 64 * 1024

let root = ''
let g: GalleonFS
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-h47-nbd-'))
  g = await GalleonFS.open({ storagePath: join(root, 'data') })
  await g.createVolume({ name: 'disk', sizeBytes: '4M' })
})
after(async () => {
  await g.close()
  await rm(root, { recursive: true, force: true })
})

/** One round of every kind of client against the server on `port`; returns when they all ran. */
async function clientRound (port: number, i: number): Promise<void> {
  // A clean client: negotiate, write, read it back, flush, disconnect.
  const clean = await NbdClient.connect(port)
  await clean.hello()
  const { size } = await clean.go('disk')
  assert.equal(size, 4 * 1024 * 1024)
  const offset = (i % 512) * 4096
  clean.request(CMD_WRITE, 1, offset, 4096, 0, new Uint8Array(4096).fill(i & 0xff))
  assert.equal((await clean.replyIfAny())?.error, 0)
  clean.request(CMD_READ, 2, offset, 4096)
  const read = await clean.replyIfAny(4096)
  assert.equal(read?.error, 0)
  assert.equal(read?.data[4095], i & 0xff)
  clean.request(CMD_FLUSH, 3, 0, 0)
  assert.equal((await clean.replyIfAny())?.error, 0)
  clean.request(CMD_DISC, 4, 0, 0)
  assert.equal(await clean.closedByServer(), true, 'the server closes after NBD_CMD_DISC')

  // Gone before reading the greeting.
  const early = await NbdClient.connect(port)
  early.socket.destroy()

  // Gone in the middle of an option (half its header sent).
  const midOption = await NbdClient.connect(port)
  await midOption.hello()
  midOption.socket.write(NbdClient.optionFrame(OPT_GO, infoRequestData('disk')).subarray(0, 10))
  midOption.socket.destroy()

  // Gone right after NBD_OPT_GO, before any request.
  const afterGo = await NbdClient.connect(port)
  await afterGo.hello()
  await afterGo.go('disk')
  afterGo.socket.destroy()

  // Gone in the middle of a write's payload.
  const midWrite = await NbdClient.connect(port)
  await midWrite.hello()
  await midWrite.go('disk')
  midWrite.socket.write(NbdClient.requestFrame(CMD_WRITE, 9, 0, 65_536, 0, new Uint8Array(65_536)).subarray(0, 28 + 10_000))
  midWrite.socket.destroy()

  // Gone with a large read's reply unread.
  const unread = await NbdClient.connect(port)
  await unread.hello()
  await unread.go('disk')
  unread.request(CMD_READ, 10, 0, 1024 * 1024)
  unread.socket.destroy()
  await new Promise((resolve) => unread.socket.once('close', resolve))
}

describe('NBD churn', () => {
  it('one long-lived server: 60 rounds of clean and vanishing clients leave no connection, descriptor, handle or heap behind', async () => {
    const srv = await NbdServer.listen(g, { port: 0 })
    try {
      const listenersBefore = listenerTotal(g)
      const round = async (i: number): Promise<void> => {
        await clientRound(srv.port, i)
        await until('the server has let go of every client', () => srv.connections === 0, 10_000)
      }
      for (let i = 0; i < 3; i++) await round(i)
      const baseline = takeResources()
      const heapBefore = await settledHeap()
      const cycles = 60
      for (let i = 3; i < 3 + cycles; i++) await round(i)
      const left = await leftoversAfter(baseline)
      assert.deepEqual(left.fds, [], 'descriptors left after the client rounds')
      assert.deepEqual(left.handles, [], 'handles left after the client rounds')
      const growth = (await settledHeap()) - heapBefore
      assert.ok(growth < HEAP_BYTES_PER_CYCLE * cycles, `heap grew by ${growth} bytes over ${cycles} rounds (${Math.round(growth / cycles)} per round)`)
      assert.equal(listenerTotal(g), listenersBefore, 'listeners on the instance')
      assert.equal(srv.lastError, undefined)
    } finally {
      await srv.close()
    }
  })

  it('listen/close of a server 40 times, with clients on it when it closes, leaves nothing behind and the volume free', async () => {
    const listenersBefore = listenerTotal(g)
    const cycle = async (i: number): Promise<void> => {
      const srv = await NbdServer.listen(g, { port: 0 })
      await clientRound(srv.port, i)
      // Clients still attached when the server closes: one negotiated and idle, one in the handshake.
      const idle = await NbdClient.connect(srv.port)
      await idle.hello()
      await idle.go('disk')
      const negotiating = await NbdClient.connect(srv.port)
      await negotiating.hello()
      await srv.close()
      assert.equal(await idle.closedByServer(), true)
      assert.equal(await negotiating.closedByServer(), true)
      await until('the closed server counts no connection', () => srv.connections === 0, 10_000)
    }
    for (let i = 0; i < 3; i++) await cycle(i)
    const baseline = takeResources()
    const heapBefore = await settledHeap()
    const cycles = 40
    for (let i = 3; i < 3 + cycles; i++) await cycle(i)
    const left = await leftoversAfter(baseline)
    assert.deepEqual(left.fds, [], 'descriptors left after listen/close cycles')
    assert.deepEqual(left.handles, [], 'handles left after listen/close cycles')
    const growth = (await settledHeap()) - heapBefore
    assert.ok(growth < HEAP_BYTES_PER_CYCLE * cycles, `heap grew by ${growth} bytes over ${cycles} cycles (${Math.round(growth / cycles)} per cycle)`)
    assert.equal(listenerTotal(g), listenersBefore, 'listeners on the instance')
    // No export still holds the volume: it goes without force.
    await g.deleteVolume('disk')
    await g.createVolume({ name: 'disk', sizeBytes: '4M' })
  })
})
