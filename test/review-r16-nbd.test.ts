// Review r16 of ecdaaa6 (NBD: finish() clears its 60 s cut-off timer when the socket closes; the
// session's stopper goes when its transmission ends). The timer must go for TLS sessions too
// (finish() gets the TLS socket) and for clients that half-close; close() must still stop a
// session that is being served, and wait for the requests it has in flight.

import { after, before, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { CMD_DISC, CMD_READ, NbdClient, OPT_STARTTLS, REP_ACK } from './support/nbd-client.js'
import { until } from './support/wait.js'

const MiB = 1 << 20
let root: string
let g: GalleonFS
const pskKey = randomBytes(32).toString('hex')
const psk = { pskCallback: () => ({ identity: 'alice', psk: Buffer.from(pskKey, 'hex') }), checkServerIdentity: () => undefined }

// The 60 s timers finish() arms, and which of them were cleared (the global functions, as the
// backend calls them).
const cutOffTimers = new Set<unknown>()
const cleared = new Set<unknown>()
const realSetTimeout = globalThis.setTimeout
const realClearTimeout = globalThis.clearTimeout

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-r16-nbd-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  await g.createVolume({ name: 'disk', sizeBytes: 4 * MiB })
  globalThis.setTimeout = ((fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    const timer = realSetTimeout(fn, ms, ...args)
    if (ms === 60_000) cutOffTimers.add(timer)
    return timer
  }) as typeof setTimeout
  globalThis.clearTimeout = ((timer: Parameters<typeof clearTimeout>[0]) => {
    cleared.add(timer)
    realClearTimeout(timer)
  }) as typeof clearTimeout
})

after(async () => {
  globalThis.setTimeout = realSetTimeout
  globalThis.clearTimeout = realClearTimeout
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

async function tlsSession (server: NbdServer, allowHalfOpen = false): Promise<NbdClient> {
  const raw = await NbdClient.connect(server.port, { allowHalfOpen })
  await raw.hello()
  raw.option(OPT_STARTTLS)
  assert.equal((await raw.optionReply()).type, REP_ACK)
  const client = await raw.startTls(psk)
  await client.go('disk')
  return client
}

async function plainSession (server: NbdServer, allowHalfOpen = false): Promise<NbdClient> {
  const client = await NbdClient.connect(server.port, { allowHalfOpen })
  await client.hello()
  await client.go('disk')
  return client
}

const pending = (): number => [...cutOffTimers].filter((t) => !cleared.has(t)).length

it('every way a session ends (TLS or not, destroyed, half-closed, NBD_CMD_DISC) clears the 60 s cut-off timer', async () => {
  const server = await NbdServer.listen(g, { port: 0, tls: { psk: { alice: pskKey } }, handshakeTimeoutMs: 0 })
  const plain = await NbdServer.listen(g, { port: 0, handshakeTimeoutMs: 0 })
  try {
    const ends: Array<[string, NbdServer, () => Promise<NbdClient>, (c: NbdClient) => Promise<void>]> = [
      ['tls, destroyed', server, async () => await tlsSession(server), async (c) => { c.socket.destroy() }],
      ['tls, ended', server, async () => await tlsSession(server), async (c) => { c.socket.end() }],
      ['tls, half-closed after a read', server, async () => await tlsSession(server, true), async (c) => {
        c.socket.write(NbdClient.requestFrame(CMD_READ, 1, 0, 4096))
        c.socket.end()
        assert.equal((await c.reply(4096)).error, 0)
        assert.equal(await c.closedByServer(), true)
      }],
      ['tls, NBD_CMD_DISC', server, async () => await tlsSession(server), async (c) => {
        c.socket.write(NbdClient.requestFrame(CMD_DISC, 2, 0, 0))
        assert.equal(await c.closedByServer(), true)
      }],
      ['plain, half-closed after a read', plain, async () => await plainSession(plain, true), async (c) => {
        c.socket.write(NbdClient.requestFrame(CMD_READ, 1, 0, 4096))
        c.socket.end()
        assert.equal((await c.reply(4096)).error, 0)
        assert.equal(await c.closedByServer(), true)
      }]
    ]
    for (const [name, on, open, end] of ends) {
      const armedBefore = cutOffTimers.size
      const client = await open()
      await until(`${name}: the server serves the session`, () => on.connections === 1)
      await end(client)
      await until(`${name}: the server has let the connection go`, () => on.connections === 0, 10_000)
      // finish() ran (the server ends every session with it) and its socket closed.
      await until(`${name}: finish() armed its timer`, () => cutOffTimers.size > armedBefore, 5_000)
      await until(`${name}: every cut-off timer is cleared (${pending()} left)`, () => pending() === 0, 5_000)
    }
  } finally {
    await Promise.all([server.close(), plain.close()])
  }
})

it('close() ends a TLS session once the reply to the read it had taken has gone out', async () => {
  const server = await NbdServer.listen(g, { port: 0, tls: { psk: { alice: pskKey } }, handshakeTimeoutMs: 0 })
  const client = await tlsSession(server)
  const readsBefore = (await g.getVolumeMetrics('disk')).readOps
  client.socket.write(NbdClient.requestFrame(CMD_READ, 9, 0, 1 * MiB))
  // Taken off the socket and served (a request still unread in the socket is not in flight).
  await until('the server has taken the read', async () => (await g.getVolumeMetrics('disk')).readOps > readsBefore)
  const closing = server.close()
  const reply = await client.reply(1 * MiB)
  assert.equal(reply.error, 0)
  await closing
  assert.equal(await client.closedByServer(), true)
  await until('the server has let the connection go', () => server.connections === 0, 10_000)
})
