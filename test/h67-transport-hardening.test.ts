// h67: the tcp transport as a library refuses cluster secrets shorter than 16 bytes, and caps the
// connections still in their handshake (in all and per remote address) so that strangers cannot
// hold sockets by the thousand, nor from one address keep a real node out. Real sockets on
// loopback: strangers connect from 127.0.0.2 and up (Linux routes all of 127/8 to lo), real nodes
// from 127.0.0.1. Handshake limits are set far beyond the test's waits, so a stranger closed during
// the test was closed by a cap, not by a timeout. The NBD server gets the same caps.

import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { NbdServer } from '../backends/nbd/index.js'
import { RawStranger } from './support/h61-raw-peer.js'
import { MIN_CLUSTER_SECRET_BYTES, TcpTransport, type TcpTransportOptions } from '../backends/tcp/index.js'
import { GalleonError } from '../src/errors.js'
import { GalleonFS } from '../src/galleonfs.js'
import { addressGroup } from '../src/pending-connections.js'
import type { TransportHandler } from '../src/drivers.js'
import { NbdClient } from './support/nbd-client.js'
import { makeCertificates } from './support/tls-certificates.js'
import { until } from './support/wait.js'

const SECRET = 'h67-transport-hardening-secret'
/** Far beyond any wait below: no stranger is closed by the handshake limit during a test. */
const NEVER_MS = 10 * 60_000

const echo: TransportHandler = async (from, request) => ({ kind: 'echo', header: { from, ...request.header }, payload: request.payload })

function transport (nodeId: string, options: Partial<TcpTransportOptions> = {}): TcpTransport {
  return new TcpTransport({ nodeId, clusterSecret: SECRET, host: '127.0.0.1', port: 0, keepaliveIntervalMs: 0, ...options })
}

async function strangers (address: string, from: string, count: number): Promise<RawStranger[]> {
  const opened: RawStranger[] = []
  for (let i = 0; i < count; i++) {
    const stranger = new RawStranger(address, { localAddress: from })
    await stranger.connected()
    opened.push(stranger)
  }
  return opened
}

const isInvalid = (what: RegExp) => (err: unknown): boolean => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT' && what.test(err.message)

test('h67: a cluster secret shorter than 16 bytes is refused, strings counted in UTF-8 bytes, with the rule and a way to make one', () => {
  assert.equal(MIN_CLUSTER_SECRET_BYTES, 16)
  const make = (clusterSecret: string | Uint8Array): TcpTransport => new TcpTransport({ nodeId: 'x', clusterSecret })
  const refused = [
    'x', // the one-character secret the library used to take
    'fifteen-bytes!!',
    'é'.repeat(7) + 'a', // 8 characters, 15 bytes
    '€'.repeat(5), // 5 characters, 15 bytes
    new Uint8Array(15).fill(7),
    Buffer.alloc(1, 1),
    new Uint8Array(0),
    ''
  ]
  for (const secret of refused) {
    assert.throws(() => make(secret), isInvalid(/clusterSecret is \d+ bytes long.*at least 16 bytes.*openssl rand -hex 32/), `secret of ${typeof secret === 'string' ? `${secret.length} characters` : `${secret.byteLength} bytes`}`)
  }
  // The message counts bytes, not characters, and never shows the secret.
  assert.throws(() => make('€'.repeat(5)), (err: unknown) => err instanceof GalleonError && err.message.includes('is 15 bytes long') && !err.message.includes('€'))
  for (const secret of ['sixteen-bytes!!!', 'é'.repeat(8), '€'.repeat(6), new Uint8Array(16).fill(7), Buffer.alloc(32, 1)]) {
    make(secret) // 16 bytes or more: accepted (constructing opens nothing)
  }
  for (const secret of [undefined, 42, null, ['a'.repeat(16)]]) {
    assert.throws(() => make(secret as unknown as string), isInvalid(/clusterSecret must be a string or Uint8Array of at least 16 bytes/))
  }
})

test('h67: maxPendingConnections and maxPendingConnectionsPerAddress must be whole numbers of at least 1', () => {
  for (const name of ['maxPendingConnections', 'maxPendingConnectionsPerAddress'] as const) {
    for (const bad of [0, -1, 1.5, Number.NaN, Infinity, '8', true]) {
      assert.throws(() => transport('x', { [name]: bad as number }), isInvalid(new RegExp(`^${name} must be a whole number of connections of at least 1`)), `${name}: ${String(bad)}`)
    }
    transport('x', { [name]: 1 })
  }
  assert.deepEqual(
    ((s) => ({ pending: s.pendingConnections, refused: s.refusedConnections }))(transport('x').stats()),
    { pending: 0, refused: 0 })
})

test('h67: an IPv6 /64 counts as one address for the per-address cap; IPv4, also IPv4-mapped, as itself', () => {
  assert.equal(addressGroup('127.0.0.2'), '127.0.0.2')
  assert.equal(addressGroup('::ffff:127.0.0.2'), '127.0.0.2')
  assert.equal(addressGroup('2001:db8:1:2::1'), addressGroup('2001:0db8:0001:0002:ffff:ffff:ffff:fffe'))
  assert.equal(addressGroup('2001:db8:1:2::1'), '2001:db8:1:2::/64')
  assert.notEqual(addressGroup('2001:db8:1:2::1'), addressGroup('2001:db8:1:3::1'))
  assert.equal(addressGroup('::1'), '0:0:0:0::/64')
  assert.equal(addressGroup('fe80::1%eth0'), 'fe80:0:0:0::/64')
  assert.equal(addressGroup(undefined), 'unknown')
})

test('h67: strangers from one address get its few slots, the rest are closed at once; a real node from another address connects and exchanges messages meanwhile; slots free again when they go', async (t) => {
  const server = transport('server', { handshakeTimeoutMs: NEVER_MS, maxPendingConnections: 16, maxPendingConnectionsPerAddress: 4 })
  const address = await server.listen(echo)
  const opened: RawStranger[] = []
  const client = transport('client')
  const late = transport('late')
  t.after(async () => {
    for (const stranger of opened) stranger.socket.destroy()
    await Promise.all([server.close(), client.close(), late.close()])
  })

  // 1. A node connects before the flood.
  assert.equal((await client.request(address, { kind: 'ping', header: { n: 1 } })).header.n, 1)

  // 2. Four strangers from 127.0.0.2 take that address's four slots and are held (the handshake limit is minutes away).
  const held = await strangers(address, '127.0.0.2', 4)
  opened.push(...held)
  await until('four pending connections', () => server.stats().pendingConnections === 4, 30_000)

  // 3. Three more from the same address are closed on arrival, told why.
  const excess = await strangers(address, '127.0.0.2', 3)
  opened.push(...excess)
  await until('the connections over the cap are closed', () => excess.every((stranger) => stranger.isClosed), 30_000)
  assert.equal(server.stats().refusedConnections, 3)
  for (const stranger of excess) {
    assert.equal(stranger.goodbye()?.code, 'BACKEND_UNAVAILABLE')
    assert.match(String(stranger.goodbye()?.message), /maxPendingConnectionsPerAddress/)
  }
  assert.ok(held.every((stranger) => !stranger.isClosed), 'the strangers within the cap are still connected')
  assert.equal(server.stats().pendingConnections, 4)

  // 4. Meanwhile a node that was not connected yet (from 127.0.0.1) joins and exchanges messages, and the first goes on.
  const reply = await late.request(address, { kind: 'ping', header: { n: 2 }, payload: Buffer.from('from a late node') })
  assert.equal(reply.header.from, 'late')
  assert.equal(Buffer.from(reply.payload ?? []).toString(), 'from a late node')
  assert.equal((await client.request(address, { kind: 'ping', header: { n: 3 } })).header.n, 3)
  assert.equal(server.stats().pendingConnections, 4, 'authenticated connections hold no slot')

  // 5. Another address still has its own slots.
  const other = await strangers(address, '127.0.0.3', 1)
  opened.push(...other)
  await until('five pending connections', () => server.stats().pendingConnections === 5, 30_000)
  assert.equal(server.stats().refusedConnections, 3)

  // 6. The strangers go: their slots are free, and 127.0.0.2 gets four again.
  for (const stranger of [...held, ...other]) stranger.socket.destroy()
  await until('no pending connection', () => server.stats().pendingConnections === 0, 30_000)
  const again = await strangers(address, '127.0.0.2', 4)
  opened.push(...again)
  await until('four pending connections again', () => server.stats().pendingConnections === 4, 30_000)
  assert.equal(server.stats().refusedConnections, 3)
  assert.ok(again.every((stranger) => !stranger.isClosed))
})

test('h67: with every pending slot taken (strangers from several addresses), authenticated nodes go on, a new one is refused with the reason, and gets in once the strangers go', async (t) => {
  const server = transport('server', { handshakeTimeoutMs: NEVER_MS, maxPendingConnections: 8, maxPendingConnectionsPerAddress: 4 })
  const address = await server.listen(echo)
  const opened: RawStranger[] = []
  const member = transport('member')
  const newcomer = transport('newcomer')
  t.after(async () => {
    for (const stranger of opened) stranger.socket.destroy()
    await Promise.all([server.close(), member.close(), newcomer.close()])
  })
  await member.request(address, { kind: 'ping', header: {} })

  const held = [...await strangers(address, '127.0.0.2', 4), ...await strangers(address, '127.0.0.3', 4)]
  opened.push(...held)
  await until('eight pending connections', () => server.stats().pendingConnections === 8, 30_000)
  const excess = await strangers(address, '127.0.0.4', 2)
  opened.push(...excess)
  await until('the connections over the cap are closed', () => excess.every((stranger) => stranger.isClosed), 30_000)
  assert.match(String(excess[0]?.goodbye()?.message), /\(maxPendingConnections\)/)

  // The member's connection is past its handshake: not counted, not refused.
  for (let n = 0; n < 5; n++) assert.equal((await member.request(address, { kind: 'ping', header: { n } })).header.n, n)

  // A new node finds no slot: its request fails with the server's reason.
  await assert.rejects(newcomer.request(address, { kind: 'ping', header: {} }), (err: unknown) =>
    err instanceof GalleonError && err.code === 'BACKEND_UNAVAILABLE' && /\(maxPendingConnections\)/.test(err.message))
  assert.equal(server.stats().refusedConnections, 3)

  for (const stranger of held) stranger.socket.destroy()
  await until('no pending connection', () => server.stats().pendingConnections === 0, 30_000)
  assert.equal((await newcomer.request(address, { kind: 'ping', header: { n: 9 } })).header.n, 9)
})

test('h67: with TLS, connections still in their TLS handshake are capped too, and a node completing both handshakes gives its slot back', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'h67-tls-'))
  t.after(async () => { await rm(dir, { recursive: true, force: true }) })
  const certificates = await makeCertificates(dir)
  const pem = certificates.pem
  const server = transport('server', {
    handshakeTimeoutMs: NEVER_MS,
    maxPendingConnections: 16,
    maxPendingConnectionsPerAddress: 3,
    tls: { key: pem['server-key'] as string, cert: pem['server-cert'] as string, ca: pem['ca-cert'] as string }
  })
  const address = await server.listen(echo)
  const client = transport('client', { tls: { key: pem['client-key'] as string, cert: pem['client-cert'] as string, ca: pem['ca-cert'] as string } })
  const opened: RawStranger[] = []
  t.after(async () => {
    for (const stranger of opened) stranger.socket.destroy()
    await Promise.all([server.close(), client.close()])
  })

  // Strangers that never start TLS.
  const held = await strangers(address, '127.0.0.2', 3)
  opened.push(...held)
  await until('three pending connections', () => server.stats().pendingConnections === 3, 30_000)
  const excess = await strangers(address, '127.0.0.2', 2)
  opened.push(...excess)
  await until('the connections over the cap are closed', () => excess.every((stranger) => stranger.isClosed), 30_000)
  assert.equal(server.stats().refusedConnections, 2)
  assert.ok(held.every((stranger) => !stranger.isClosed))

  assert.equal((await client.request(address, { kind: 'ping', header: { n: 1 } })).header.n, 1)
  assert.equal(server.stats().pendingConnections, 3, 'the TLS node gave its slot back once authenticated')

  for (const stranger of held) stranger.socket.destroy()
  await until('no pending connection', () => server.stats().pendingConnections === 0, 30_000)
})

test('h67 nbd: clients stalling in the handshake are capped in all and per address; a real client from another address is served meanwhile', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'h67-nbd-'))
  const g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  const opened: RawStranger[] = []
  let server: NbdServer | undefined
  t.after(async () => {
    for (const stranger of opened) stranger.socket.destroy()
    await server?.close()
    await g.close()
    await rm(root, { recursive: true, force: true })
  })
  await g.createVolume({ name: 'alpha', sizeBytes: '1M' })
  await g.write('alpha', 0, new Uint8Array(4096).fill(7))
  for (const bad of [0, 2.5, '4']) {
    await assert.rejects(NbdServer.listen(g, { port: 0, maxPendingConnectionsPerAddress: bad as number }), isInvalid(/^maxPendingConnectionsPerAddress must be a whole number/))
  }
  // No handshake limit at all: without the caps, these strangers would be held for ever.
  server = await NbdServer.listen(g, { port: 0, handshakeTimeoutMs: 0, maxPendingConnections: 5, maxPendingConnectionsPerAddress: 3 })
  const nbd = server
  const address = `127.0.0.1:${nbd.port}`

  const held = await strangers(address, '127.0.0.2', 3)
  opened.push(...held)
  await until('three pending connections', () => nbd.pendingConnections === 3, 30_000)
  const excess = await strangers(address, '127.0.0.2', 2)
  opened.push(...excess)
  await until('the connections over the per-address cap are closed', () => excess.every((stranger) => stranger.isClosed), 30_000)
  assert.equal(nbd.refusedConnections, 2)

  // A real client (127.0.0.1) completes the handshake and reads; it then holds no slot.
  const client = await NbdClient.connect(nbd.port)
  t.after(() => { client.socket.destroy() })
  await client.hello()
  assert.equal((await client.go('alpha')).size, 1 << 20)
  assert.deepEqual(await client.readBlock(0, 4096), Buffer.alloc(4096, 7))
  assert.equal(nbd.pendingConnections, 3)

  // Two more addresses fill the total of five; a sixth connection, from anywhere, is closed.
  const more = [...await strangers(address, '127.0.0.3', 1), ...await strangers(address, '127.0.0.4', 1)]
  opened.push(...more)
  await until('five pending connections', () => nbd.pendingConnections === 5, 30_000)
  const sixth = await strangers(address, '127.0.0.5', 1)
  opened.push(...sixth)
  await until('the connection over the total cap is closed', () => sixth.every((stranger) => stranger.isClosed), 30_000)
  assert.equal(nbd.refusedConnections, 3)
  assert.ok([...held, ...more].every((stranger) => !stranger.isClosed))
  assert.deepEqual(await client.readBlock(0, 16), Buffer.alloc(16, 7), 'the client being served goes on')

  for (const stranger of [...held, ...more]) stranger.socket.destroy()
  await until('no pending connection', () => nbd.pendingConnections === 0, 30_000)
  const again = await NbdClient.connect(nbd.port)
  t.after(() => { again.socket.destroy() })
  await again.hello()
  assert.equal((await again.go('alpha')).size, 1 << 20)
})
