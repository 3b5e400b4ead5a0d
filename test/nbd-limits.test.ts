// The NBD server's limits on what a client can hold and how the server survives its own socket's
// errors: the handshake time limit (qemu-nbd's --handshake-limit, after CVE-2024-7409) for clients
// that connect and never finish the handshake, and an 'error' of the listening socket (an accept
// failing with EMFILE) that must not end the process. Raw sockets, so that the client can stall.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { mkdtemp, rm } from 'node:fs/promises'
import type { Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type GalleonError } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { IHAVEOPT, NbdClient, OPT_GO, OPT_STRUCTURED_REPLY } from './support/nbd-client.js'

/** The handshake limit of the servers below: short, so that the tests are quick. */
const LIMIT_MS = 300

let root: string
let g: GalleonFS

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-nbd-limits-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  await g.createVolume({ name: 'alpha', sizeBytes: '1M' })
  await g.write('alpha', 0, new Uint8Array(4096).fill(7))
})
after(async () => {
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** Polls `condition` every 20 ms until it holds or `timeoutMs` passes; resolves to whether it held. */
async function eventually (condition: () => boolean, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (!condition() && Date.now() < deadline) await sleep(20)
  return condition()
}

describe('NBD handshake time limit', () => {
  let server: NbdServer
  before(async () => { server = await NbdServer.listen(g, { port: 0, handshakeTimeoutMs: LIMIT_MS }) })
  after(async () => { await server?.close() })

  it('disconnects a client that connects and sends nothing', async () => {
    const wire = await NbdClient.connect(server.port)
    assert.ok(await wire.closedByServer(), `a silent client is disconnected after the ${LIMIT_MS} ms limit`)
    assert.ok(await eventually(() => server.connections === 0), 'the server let the connection go')
  })

  it('disconnects a client that stops in the middle of an option', async () => {
    const wire = await NbdClient.connect(server.port)
    await wire.hello()
    const head = Buffer.alloc(16)
    head.writeBigUInt64BE(IHAVEOPT, 0)
    head.writeUInt32BE(OPT_GO, 8)
    head.writeUInt32BE(100, 12) // 100 bytes announced, 10 sent
    wire.socket.write(Buffer.concat([head, Buffer.alloc(10)]))
    assert.ok(await wire.closedByServer())
  })

  it('limits the whole handshake, not silence: a client that keeps sending options is cut off too', async () => {
    const wire = await NbdClient.connect(server.port)
    await wire.hello()
    const deadline = Date.now() + 5_000
    while (!wire.closed && Date.now() < deadline) {
      wire.option(OPT_STRUCTURED_REPLY)
      await sleep(50)
    }
    assert.ok(wire.closed, 'a client haggling for ever is disconnected')
  })

  it('leaves a client that finished the handshake in time alone', async () => {
    // A limit a loaded machine still meets for one handshake, and a wait well past it.
    const limit = 1_000
    const own = await NbdServer.listen(g, { port: 0, handshakeTimeoutMs: limit })
    try {
      const connected = Date.now()
      const wire = await NbdClient.connect(own.port)
      await wire.hello()
      await wire.go('alpha')
      await sleep(connected + limit * 2 - Date.now())
      assert.equal(wire.closed, false, 'in transmission past the limit: still connected')
      const data = await wire.readBlock(0, 4096)
      assert.ok(data !== undefined, 'the read was answered')
      assert.equal(data[0], 7)
      wire.socket.destroy()
    } finally {
      await own.close()
    }
  })

  it('refuses a bad handshakeTimeoutMs', async () => {
    for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, '10000']) {
      // A server that starts anyway is closed, so that it cannot hold the test process open.
      await assert.rejects(NbdServer.listen(g, { port: 0, handshakeTimeoutMs: bad as never }).then(async (srv) => { await srv.close() }), { code: 'INVALID_ARGUMENT' }, `handshakeTimeoutMs: ${String(bad)}`)
    }
  })

  it('takes 0 as no limit, and close() ends a connection still in the handshake', async () => {
    const unlimited = await NbdServer.listen(g, { port: 0, handshakeTimeoutMs: 0 })
    try {
      const wire = await NbdClient.connect(unlimited.port)
      await wire.hello()
      await sleep(LIMIT_MS * 2)
      assert.equal(wire.closed, false, 'no limit: still connected')
      await unlimited.close()
      assert.ok(await wire.closedByServer())
    } finally {
      await unlimited.close()
    }
  })

  it('never holds the process open with its timer', async () => {
    const long = await NbdServer.listen(g, { port: 0, handshakeTimeoutMs: 60_000 })
    try {
      // Timers that keep the event loop alive (unref'd ones are not listed).
      const timers = (): number => process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length
      await sleep(10)
      const before = timers()
      const wire = await NbdClient.connect(long.port)
      assert.ok(await eventually(() => long.connections === 1))
      assert.equal(timers(), before, 'the handshake timer does not keep the event loop alive')
      await long.close()
      assert.ok(await wire.closedByServer())
    } finally {
      await long.close()
    }
  })
})

describe('NbdServer.close() time limit', () => {
  it('resolves after closeTimeoutMs although requests still wait inside the library (a QoS limit)', async () => {
    const h = await GalleonFS.open({ storagePath: join(root, 'close-limit') })
    // One write a second: 20 pipelined writes would hold close() for about 19 s without the limit.
    await h.createVolume({ name: 'slow', sizeBytes: '1M', qos: { limits: { iops: 1 } } })
    const own = await NbdServer.listen(h, { port: 0, closeTimeoutMs: 300 })
    const wire = await NbdClient.connect(own.port)
    try {
      await wire.hello()
      await wire.go('slow')
      const writes = 20
      for (let k = 0; k < writes; k++) wire.request(1 /* NBD_CMD_WRITE */, k + 1, k * 4096, 4096, 0, new Uint8Array(4096).fill(k + 1))
      const throttled = new Promise<void>((resolve) => { h.once('qos:throttled', () => { resolve() }) })
      await throttled
      await own.close()
      const { writeOps } = await h.getVolumeMetrics('slow')
      assert.ok(writeOps < writes, `close() resolved while writes still waited for the limit (${writeOps} of ${writes} done)`)
      assert.ok(await wire.closedByServer(), 'the client was disconnected')
      assert.equal(own.connections, 0)
    } finally {
      wire.socket.destroy()
      await own.close()
      // The writes still waiting go on; removing the limit lets them finish, so the instance closes at once.
      await h.setQoSPolicy('slow', null)
      await h.close()
    }
  })

  it('refuses a bad closeTimeoutMs', async () => {
    for (const bad of [-1, 0.5, Number.NaN, 2 ** 31, '300']) {
      await assert.rejects(NbdServer.listen(g, { port: 0, closeTimeoutMs: bad as never }).then(async (srv) => { await srv.close() }), { code: 'INVALID_ARGUMENT' }, `closeTimeoutMs: ${String(bad)}`)
    }
  })
})

describe('NBD server socket errors', () => {
  /** The net.Server behind each NbdServer started from now on (Node publishes it when it listens). */
  const listening: Server[] = []
  const onListen = (message: unknown): void => { listening.push((message as { server: Server }).server) }
  before(() => { subscribe('tracing:net.server.listen:asyncEnd', onListen) })
  after(() => { unsubscribe('tracing:net.server.listen:asyncEnd', onListen) })
  const underlying = (srv: NbdServer): Server | undefined => listening.find((s) => (s.address() as { port?: number } | null)?.port === srv.port)

  // Node 20's libuv sheds connections itself when accept() fails with EMFILE and no longer hands
  // accept errors to Node, so a real one cannot be produced here; other versions and platforms
  // (Windows) emit them as 'error' on the server, which is what is emitted below.
  const acceptError = (): Error => Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', errno: -24, syscall: 'accept' })

  it('keeps listening after accept errors and hands them to onError', async (t) => {
    const reported: GalleonError[] = []
    const srv = await NbdServer.listen(g, { port: 0, onError: (err) => { reported.push(err) } })
    try {
      const net = underlying(srv)
      if (net === undefined) { t.skip('this Node does not publish tracing:net.server.listen:asyncEnd'); return }
      const first = acceptError()
      assert.doesNotThrow(() => { net.emit('error', first); net.emit('error', acceptError()) })
      assert.equal(reported.length, 2)
      assert.equal(reported[0]?.code, 'IO_ERROR')
      assert.equal(reported[0]?.cause, first)
      assert.equal(srv.lastError, undefined)
      // Still serving.
      const wire = await NbdClient.connect(srv.port)
      await wire.hello()
      await wire.go('alpha')
      assert.equal((await wire.readBlock(0, 4096))?.[0], 7)
      wire.socket.destroy()
    } finally {
      await srv.close()
    }
  })

  it('keeps the error in lastError without onError, or when onError throws', async (t) => {
    const quiet = await NbdServer.listen(g, { port: 0 })
    const throwing = await NbdServer.listen(g, { port: 0, onError: () => { throw new Error('listener failed') } })
    try {
      for (const srv of [quiet, throwing]) {
        const net = underlying(srv)
        if (net === undefined) { t.skip('this Node does not publish tracing:net.server.listen:asyncEnd'); return }
        assert.doesNotThrow(() => { net.emit('error', acceptError()); net.emit('error', acceptError()) })
        assert.equal(srv.lastError?.code, 'IO_ERROR')
      }
    } finally {
      await quiet.close()
      await throwing.close()
    }
  })

  it('refuses an onError that is not a function', async () => {
    await assert.rejects(NbdServer.listen(g, { port: 0, onError: 'log' as never }).then(async (srv) => { await srv.close() }), { code: 'INVALID_ARGUMENT' })
  })
})
