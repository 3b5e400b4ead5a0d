// The etcd coordinator beyond the conformance suite: option checks, a clear error when etcd is not
// there, the key prefix, and a process that exits by itself after close().

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { after, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { EtcdCoordinator, etcdBackend } from '../backends/etcd/index.js'
import { isGalleonError } from '../src/errors.js'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { testNode } from './conformance/index.js'
import { enableEtcdAuth, etcdSkipReason, selfSignedCertificate, startEtcd, type EtcdServer } from './support/etcd.js'
import { scriptArgs } from './support/child-script.js'

const skip = etcdSkipReason()
let etcd: Promise<EtcdServer> | undefined
after(async () => { if (etcd !== undefined) await (await etcd).stop() })
const endpoint = async (): Promise<string> => (await (etcd ??= startEtcd())).endpoint

/** Waits until the handle reaches etcd again (its client refuses calls for a while after failures). */
async function untilAnswers (coordinator: EtcdCoordinator): Promise<void> {
  const deadline = Date.now() + 30_000
  for (;;) {
    try {
      await coordinator.get('probe')
      return
    } catch (err) {
      if (Date.now() > deadline) throw err
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}

/** Pauses etcd (SIGSTOP: it keeps its connections and answers nothing) and waits until it is stopped. */
async function pauseEtcd (server: EtcdServer): Promise<void> {
  server.process.kill('SIGSTOP')
  do await new Promise((resolve) => setTimeout(resolve, 10))
  while ((await readFile(`/proc/${server.process.pid as number}/stat`, 'utf8')).split(' ')[2] !== 'T')
}

test('bad options are refused with INVALID_ARGUMENT', async () => {
  for (const options of [{}, { endpoints: [] }, { endpoints: ['127.0.0.1:2379'] }, { endpoints: ['http://127.0.0.1:2379/'] }, { endpoints: ['http://127.0.0.1:2379/v3'] }, { endpoints: ['http://127.0.0.1:2379', 'https://127.0.0.1:2380/v3/'] }, { endpoints: ['http://127.0.0.1:2379'], prefix: '' }, { endpoints: ['http://127.0.0.1:2379'], requestTimeoutMs: 0 }, { endpoints: ['http://127.0.0.1:2379'], ttlMs: 0 }]) {
    await assert.rejects(EtcdCoordinator.connect(options as never), (err: unknown) => isGalleonError(err, 'INVALID_ARGUMENT'), JSON.stringify(options))
  }
})

test('an endpoint where no etcd answers fails with BACKEND_UNAVAILABLE naming it', async () => {
  assert.equal(await etcdBackend.isAvailable(), true)
  // A port that was free a moment ago: nothing listens there.
  const port = await new Promise<number>((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
  const url = `http://127.0.0.1:${port}`
  await assert.rejects(EtcdCoordinator.connect({ endpoints: [url], connectTimeoutMs: 2000, requestTimeoutMs: 2000 }), (err: unknown) => {
    assert.ok(isGalleonError(err, 'BACKEND_UNAVAILABLE'), String(err))
    assert.ok(err.message.includes(url), `the message names the endpoint: ${err.message}`)
    return true
  })
})

test('keys live under the prefix; coordinators with different prefixes do not see each other', { skip }, async () => {
  const url = await endpoint()
  const one = await EtcdCoordinator.connect({ endpoints: [url], prefix: '/one/' })
  const two = await EtcdCoordinator.connect({ endpoints: [url], prefix: '/two/' })
  try {
    await one.put('shared/key', 'from one')
    await one.join({ id: 'n1', address: 'a:1', zone: 'z', labels: {}, capacityBytes: 1, freeBytes: 1 })
    assert.equal(await two.get('shared/key'), undefined)
    assert.deepEqual(await two.members(), [])
    const { Etcd3 } = await import('etcd3')
    const raw = new Etcd3({ hosts: [url] })
    try {
      assert.equal(await raw.get('/one/kv/shared/key').string(), 'from one')
      assert.deepEqual((await raw.getAll().prefix('/one/nodes/').keys()).sort(), ['/one/nodes/n1/alive', '/one/nodes/n1/record'])
    } finally {
      raw.close()
    }
  } finally {
    await one.leave()
    await one.close()
    await two.close()
  }
})

test('a process that used a handle exits by itself after close()', { skip }, async () => {
  const url = await endpoint()
  const child = spawn(process.execPath, [...scriptArgs(fileURLToPath(new URL('./fixtures/etcd-coordinator-child.ts', import.meta.url))), url], { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (chunk) => { output += String(chunk) })
  child.stderr.on('data', (chunk) => { output += String(chunk) })
  // A failure bound, not a threshold: a handle left open would keep the child alive until killed here.
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s])))
  clearTimeout(timer)
  assert.equal(signal, null, `the child had to be killed: something kept it alive after close()\n${output}`)
  assert.equal(code, 0, output)
  assert.match(output, /closed/)
})

test('with authentication on in etcd, the right user and password work; none, or a wrong password, fail with PERMISSION_DENIED', { skip }, async () => {
  const server = await startEtcd()
  try {
    await enableEtcdAuth(server.endpoint, 'the-root-password')
    const authed = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/authed/', auth: { username: 'root', password: 'the-root-password' } })
    try {
      await authed.put('key', 'value')
      assert.equal((await authed.get('key'))?.value, 'value')
    } finally {
      await authed.close()
    }
    for (const auth of [undefined, { username: 'root', password: 'not-the-password' }, { username: 'nobody', password: 'x' }]) {
      await assert.rejects(async () => {
        const coordinator = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/authed/', connectTimeoutMs: 3000, requestTimeoutMs: 3000, ...(auth === undefined ? {} : { auth }) })
        try {
          await coordinator.put('key', 'changed')
        } finally {
          await coordinator.close()
        }
      }, (err: unknown) => {
        assert.ok(isGalleonError(err, 'PERMISSION_DENIED'), `${JSON.stringify(auth)}: ${String(err)}`)
        return true
      })
    }
  } finally {
    await server.stop()
  }
})

test('https endpoints work with the CA that signed etcd\'s certificate; without it the connection fails, naming the endpoint', { skip }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-etcd-tls-'))
  try {
    const tls = await selfSignedCertificate(dir)
    const server = await startEtcd({ tls })
    try {
      assert.ok(server.endpoint.startsWith('https://'))
      const ca = await readFile(tls.certFile, 'utf8')
      const secure = await EtcdCoordinator.connect({ endpoints: [server.endpoint], tls: { ca } })
      try {
        await secure.put('over-tls', 'yes')
        assert.equal((await secure.get('over-tls'))?.value, 'yes')
      } finally {
        await secure.close()
      }
      await assert.rejects(EtcdCoordinator.connect({ endpoints: [server.endpoint], connectTimeoutMs: 3000, requestTimeoutMs: 3000 }), (err: unknown) => {
        assert.ok(isGalleonError(err, 'BACKEND_UNAVAILABLE') || isGalleonError(err, 'INVALID_ARGUMENT'), String(err))
        assert.ok((err as Error).message.includes(server.endpoint) || (err as Error).message.includes('tls'), (err as Error).message)
        return true
      })
    } finally {
      await server.stop()
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('a leave that fails while etcd does not answer keeps the node a member: it campaigns, and leaves later', { skip }, async () => {
  const server = await (etcd ??= startEtcd())
  const a = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/leave-fails/', requestTimeoutMs: 1000, ttlMs: 5000 })
  try {
    await a.join(testNode('node-a'))
    await pauseEtcd(server)
    try {
      await assert.rejects(a.leave(), (err: unknown) => isGalleonError(err, 'BACKEND_UNAVAILABLE'))
    } finally {
      server.process.kill('SIGCONT')
    }
    await untilAnswers(a)
    const leadership = await a.campaign('el')
    assert.equal((await a.leader('el'))?.nodeId, 'node-a')
    // etcd may apply the delete it got while paused once it runs again: the handle then writes the
    // node's keys again (a failure bound, not a timing claim).
    const deadline = Date.now() + 20_000
    let members: Array<[string, boolean]> = []
    while (Date.now() < deadline) {
      members = (await a.members()).map((m) => [m.id, m.healthy])
      if (JSON.stringify(members) === JSON.stringify([['node-a', true]])) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    assert.deepEqual(members, [['node-a', true]])
    await a.leave()
    await leadership.lost
    assert.deepEqual(await a.members(), [])
    assert.equal(await a.leader('el'), undefined)
  } finally {
    await a.close()
  }
})

test('close() ends while etcd does not answer: a watch it cannot cancel does not hold it up', { skip }, async () => {
  const server = await (etcd ??= startEtcd())
  const a = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/close-paused/', requestTimeoutMs: 1000 })
  const seen: string[] = []
  a.watch('x/', (event) => seen.push(event.key))
  await a.put('x/1', 'one')
  // An event through the watch: its stream is open.
  for (let i = 0; i < 500 && seen.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  assert.deepEqual(seen, ['x/1'])
  await pauseEtcd(server)
  try {
    // A failure bound, not a threshold: without a deadline on the cancel, close() waits until etcd answers again.
    let bound: NodeJS.Timeout | undefined
    const outcome = await Promise.race([a.close().then(() => 'closed'), new Promise((resolve) => { bound = setTimeout(() => resolve('still closing'), 30_000) })])
    clearTimeout(bound)
    assert.equal(outcome, 'closed')
  } finally {
    server.process.kill('SIGCONT')
  }
})

test('a watch from a revision etcd has compacted lists again and reports what changed, then follows new changes', { skip }, async () => {
  const url = await endpoint()
  const watcher = await EtcdCoordinator.connect({ endpoints: [url], prefix: '/compacted/' })
  const writer = await EtcdCoordinator.connect({ endpoints: [url], prefix: '/compacted/' })
  const { Etcd3 } = await import('etcd3')
  const raw = new Etcd3({ hosts: [url] })
  try {
    await writer.put('x/old', '1')
    for (let i = 0; i < 5; i++) await writer.put('noise', String(i))
    // As etcd's --auto-compaction does: the history no longer reaches the idle watcher's revision.
    await raw.kv.compact({ revision: String((await writer.put('noise', 'last'))!.revision) })
    const seen: string[] = []
    watcher.watch('x/', (event) => seen.push(`${event.type} ${event.key}`))
    await writer.put('x/new', '2')
    const deadline = Date.now() + 20_000
    while (!seen.includes('put x/new') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    assert.deepEqual(seen, ['put x/old', 'put x/new'])
    await writer.put('x/after', '3')
    while (seen.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    assert.deepEqual(seen, ['put x/old', 'put x/new', 'put x/after'])
  } finally {
    raw.close()
    await watcher.close()
    await writer.close()
  }
})

/**
 * A TCP relay to `target` whose `cut()` silences every connection open at that moment (bytes in
 * either direction are dropped, the sockets stay open, as behind a partition that loses packets);
 * connections made later are relayed normally.
 */
async function silenceableRelay (target: string): Promise<{ endpoint: string, cut: () => void, close: () => Promise<void> }> {
  const { hostname, port } = new URL(target)
  const open = new Set<{ silenced: boolean, sockets: Socket[] }>()
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname)
    const link = { silenced: false, sockets: [client, upstream] }
    open.add(link)
    client.on('data', (chunk) => { if (!link.silenced) upstream.write(chunk) })
    upstream.on('data', (chunk) => { if (!link.silenced) client.write(chunk) })
    const end = (): void => { client.destroy(); upstream.destroy(); open.delete(link) }
    for (const socket of link.sockets) { socket.on('error', end); socket.on('close', end) }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address() as AddressInfo
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    cut: () => { for (const link of open) link.silenced = true },
    close: async () => {
      for (const link of open) for (const socket of link.sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    }
  }
}

test('a watch whose connection goes silent (a partition that drops packets) is found dead by HTTP/2 pings: it lists again over a new connection and reports what it missed', { skip }, async () => {
  const url = await endpoint()
  const relay = await silenceableRelay(url)
  const watcher = await EtcdCoordinator.connect({ endpoints: [relay.endpoint], prefix: '/silent/', requestTimeoutMs: 1000 })
  const writer = await EtcdCoordinator.connect({ endpoints: [url], prefix: '/silent/' })
  const seen: string[] = []
  const until = async (what: string, ms: number): Promise<boolean> => {
    const deadline = Date.now() + ms
    while (!seen.includes(what) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    return seen.includes(what)
  }
  try {
    watcher.watch('x/', (event) => seen.push(`${event.type} ${event.key}`))
    await writer.put('x/before', '1')
    assert.ok(await until('put x/before', 20_000), 'the watch works through the relay')
    relay.cut()
    await writer.put('x/during', '2')
    await writer.delete('x/before')
    // No TCP error ever comes: only the pings (every 5 s, 1 s to answer with these options) show
    // that nothing answers. A failure bound, not a timing claim.
    assert.ok(await until('put x/during', 40_000), `the change made while the connection was silent is reported (seen: ${seen.join(', ')})`)
    assert.ok(await until('delete x/before', 5_000), `and the key deleted meanwhile too (seen: ${seen.join(', ')})`)
    await writer.put('x/after', '3')
    assert.ok(await until('put x/after', 20_000), 'and the watch follows new changes again')
  } finally {
    await Promise.allSettled([watcher.close(), writer.close(), relay.close()])
  }
})

test('a user and password given to an etcd without authentication fail with INVALID_ARGUMENT naming the fix', { skip }, async () => {
  const url = await endpoint()
  await assert.rejects(async () => {
    const coordinator = await EtcdCoordinator.connect({ endpoints: [url], auth: { username: 'root', password: 'x' }, connectTimeoutMs: 3000, requestTimeoutMs: 3000 })
    await coordinator.close()
  }, (err: unknown) => {
    assert.ok(isGalleonError(err, 'INVALID_ARGUMENT'), String(err))
    assert.match(err.message, /authentication off.*remove the auth option/)
    return true
  })
})
