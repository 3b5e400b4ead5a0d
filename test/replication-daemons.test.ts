// Replication between three real daemon processes on 127.0.0.1, coordinated by a real etcd, over
// the TCP transport: a 3-copy volume, every write concern, then the primary is killed with SIGKILL
// in the middle of a WriteReplicated load. A register-style checker (each block is owned by one
// writer and holds that writer's id and sequence number) verifies after the failover that no
// acknowledged write is missing or torn; the killed node restarts and is resynced; finally every
// node's copy is read from its own disk and compared.
// Then a 1-copy volume is moved between two daemons under a WriteDurable load while one of them
// (the one it leaves, or the one it goes to) is killed with SIGKILL at a random moment: after the
// restart the volume reads complete (every acknowledged write, the data from before untouched),
// and calling the move again leaves exactly one copy. Last, a 2-copy volume changes class (into
// encryption and back) while the node of one copy is killed with SIGKILL as its copy converts
// (the replica's, then the primary's): after the restart every copy is in the new class and the
// checker finds every acknowledged write.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { GalleonFS } from '../src/index.js'
import { ENTRY, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { freePort } from './support/net.js'
import { scriptArgs } from './support/child-script.js'

const SKIP = etcdSkipReason()
const BLOCK = 4096
const WRITERS = 6
const SLOTS = 16
const VOLUME_BYTES = WRITERS * SLOTS * BLOCK

let root: string
let etcd: EtcdServer | undefined
const children = new Set<ChildProcess>()
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-repl-daemons-'))
  if (SKIP === undefined) etcd = await startEtcd()
})
after(async () => {
  for (const child of children) child.kill('SIGKILL')
  await etcd?.stop()
  await rm(root, { recursive: true, force: true })
})

interface Node extends RunningDaemon { name: string, bind: string, token: string }

async function startNode (name: string, zone: string, bind?: string): Promise<Node> {
  const address = bind ?? `127.0.0.1:${await freePort()}`
  const running = await startDaemonProcess([
    '--storage-path', join(root, name), '--ipc-address', '127.0.0.1:0', '--bind-address', address, '--node-id', name,
    '--zone', zone, '--etcd-endpoints', (etcd as EtcdServer).endpoint, '--lease-ttl-seconds', '2', '--replica-replacement-delay-seconds', '3600'
  ], {
    cwd: root,
    env: { ...process.env, GALLEONFS_CLUSTER_SECRET: 'replication-test-secret' },
    onSpawn: (child) => {
      children.add(child)
      child.once('exit', () => children.delete(child))
    }
  })
  const token = (await readFile(join(root, name, 'ipc.token'), 'utf8')).trim()
  return { ...running, name, bind: address, token }
}

class HttpError extends Error {
  constructor (readonly status: number, readonly code: string, message: string) { super(message) }
}

async function api (node: Node, method: string, path: string, body?: unknown, timeoutMs = 40_000): Promise<unknown> {
  const response = await fetch(`http://${node.address}${path}`, {
    method,
    headers: { authorization: `Bearer ${node.token}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(timeoutMs)
  })
  const text = await response.text()
  if (!response.ok) {
    const error = (JSON.parse(text) as { error?: { code?: string, message?: string } }).error
    throw new HttpError(response.status, error?.code ?? 'HTTP', error?.message ?? text)
  }
  return text === '' ? undefined : JSON.parse(text)
}

interface Replication { primary?: string, epoch?: number, nodes: string[], inSync: string[], role: string, links: Array<{ node: string, state: string }> }

async function replication (node: Node): Promise<Replication> {
  return await api(node, 'GET', '/v1/volumes/register/replication') as Replication
}

/** Polls `check` until it holds; on timeout the error carries what `explain` reports (state, logs). */
async function until (what: string, check: () => Promise<boolean>, timeoutMs = 60_000, explain?: () => Promise<string>): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check().catch(() => false)) return
    if (Date.now() > deadline) {
      const detail = explain === undefined ? '' : await explain().then((text) => `\n${text}`, (err: Error) => `\n(no detail: ${err.message})`)
      throw new Error(`timed out waiting until ${what}${detail}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

/** A block as the checker writes it: writer, sequence number, and bytes derived from both. */
function record (writer: number, seq: number): Buffer {
  const out = Buffer.alloc(BLOCK)
  const head = `w${writer} s${seq} `
  out.write(head)
  for (let i = head.length; i < BLOCK; i++) out[i] = (writer * 131 + seq * 17 + i) & 0xff
  return out
}

/** Parses a block written by `record` (undefined for a block never written); throws when torn. */
function parse (block: Buffer, where: string): { writer: number, seq: number } | undefined {
  if (block.every((b) => b === 0)) return undefined
  const match = /^w(\d+) s(\d+) /.exec(block.subarray(0, 32).toString('latin1'))
  assert.ok(match !== null, `${where}: not a checker record`)
  const writer = Number(match[1])
  const seq = Number(match[2])
  assert.ok(record(writer, seq).equals(block), `${where}: torn or altered block (w${writer} s${seq})`)
  return { writer, seq }
}

describe('replication between daemon processes (etcd, TCP)', { skip: SKIP }, () => {
  it('loses no acknowledged WriteReplicated write when the primary is killed with SIGKILL, and resyncs it after restart', async () => {
    const nodes = new Map<string, Node>()
    for (const [name, zone] of [['node-a', 'zone-a'], ['node-b', 'zone-b'], ['node-c', 'zone-c']] as const) nodes.set(name, await startNode(name, zone))
    const a = nodes.get('node-a') as Node
    try {
      await until('all three nodes are healthy members', async () => {
        const status = await api(a, 'GET', '/v1/cluster') as { members: Array<{ healthy: boolean }> }
        return status.members.filter((m) => m.healthy).length === 3
      })
      await api(a, 'POST', '/v1/volumes', { name: 'register', sizeBytes: VOLUME_BYTES, replicas: 3 })
      await until('three copies are in sync', async () => (await replication(a)).inSync.length === 3)
      // Every concern, through the primary and through a replica (forwarded).
      for (const [i, concern] of ['WriteAcknowledged', 'WriteDurable', 'WriteReplicated', 'WriteDistributed'].entries()) {
        await api(i % 2 === 0 ? a : nodes.get('node-b') as Node, 'POST', '/v1/volumes/register/write', { offset: i * BLOCK, data: record(0, i + 1).toString('base64'), concern })
      }

      // The load: each writer owns SLOTS blocks and writes them round-robin with rising sequence
      // numbers, WriteReplicated, moving to another node when the one it uses fails.
      const acked = new Map<number, number>()
      const names = ['node-a', 'node-b', 'node-c']
      let killed = false
      let afterKill = 0
      let stop = false
      const writer = async (w: number): Promise<void> => {
        let target = 0
        for (let seq = 1; !stop; seq++) {
          const index = w * SLOTS + (seq % SLOTS)
          for (;;) {
            const node = nodes.get(names[target % names.length] as string) as Node
            try {
              await api(node, 'POST', '/v1/volumes/register/write', { offset: index * BLOCK, data: record(w, seq).toString('base64'), concern: 'WriteReplicated' })
              acked.set(index, seq)
              if (killed) afterKill++
              break
            } catch (err) {
              if (stop) return
              // A failed write may or may not have landed; the checker allows either.
              void err
              target++
              await new Promise((resolve) => setTimeout(resolve, 50))
            }
          }
        }
      }
      const writers = Array.from({ length: WRITERS }, async (_, w) => { await writer(w) })
      await until('the load has made progress', async () => acked.size >= WRITERS * 4, 30_000)
      const before = await replication(a)
      assert.equal(before.primary, 'node-a')
      a.child.kill('SIGKILL')
      await a.exited
      killed = true
      names.splice(names.indexOf('node-a'), 1)
      await until('writes go on after the failover', async () => afterKill >= WRITERS * 10, 90_000)
      stop = true
      await Promise.all(writers)

      const b = nodes.get('node-b') as Node
      const after = await replication(b)
      assert.notEqual(after.primary, 'node-a')
      assert.ok((after.epoch as number) > (before.epoch as number), `epoch ${String(after.epoch)} after ${String(before.epoch)}`)
      // The checker: every acknowledged write is there (or a later one of the same writer), none torn.
      const data = Buffer.from((await api(b, 'POST', '/v1/volumes/register/read', { offset: 0, length: VOLUME_BYTES }) as { data: string }).data, 'base64')
      for (const [index, seq] of acked) {
        const found = parse(data.subarray(index * BLOCK, (index + 1) * BLOCK), `block ${index}`)
        assert.ok(found !== undefined && found.writer === Math.floor(index / SLOTS) && found.seq >= seq, `block ${index}: acknowledged w${Math.floor(index / SLOTS)} s${seq}, found ${JSON.stringify(found)}`)
      }

      // The killed node comes back as a replica and is brought in line.
      const restarted = await startNode('node-a', 'zone-a', a.bind)
      nodes.set('node-a', restarted)
      const primary = nodes.get(after.primary as string) as Node
      await until('the restarted node is in sync again', async () => (await replication(primary)).inSync.length === 3, 60_000)
      assert.equal((await replication(restarted)).role, 'replica')
      // The CLI's self-check against the healed cluster, through the restarted node.
      const selfTest = await new Promise<{ code: number, stdout: string, stderr: string }>((resolve) => {
        execFile(process.execPath, [...scriptArgs(ENTRY), '--test-replication', '--daemon-address', restarted.address, '--token', restarted.token], { cwd: root }, (err, stdout, stderr) => {
          resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, stdout, stderr })
        })
      })
      assert.equal(selfTest.code, 0, selfTest.stderr)
      assert.match(selfTest.stdout, /a 3-copy volume is in sync/)
      assert.match(selfTest.stdout, /WriteAcknowledged, WriteDurable, WriteReplicated, WriteDistributed read back/)
      assert.match(selfTest.stdout, /replication self-test passed\n$/)
      const expected = Buffer.from((await api(primary, 'POST', '/v1/volumes/register/read', { offset: 0, length: VOLUME_BYTES }) as { data: string }).data, 'base64')
      for (const node of nodes.values()) {
        node.child.kill('SIGTERM')
        assert.equal(await node.exited, 0)
      }
      // Each node's own copy, read from its disk: the same bytes everywhere.
      for (const name of nodes.keys()) {
        const g = await GalleonFS.open({ storagePath: join(root, name) })
        try {
          assert.ok(Buffer.from(await g.read('register', 0, VOLUME_BYTES)).equals(expected), `the copy on ${name} differs from the primary's`)
        } finally {
          await g.close()
        }
      }
    } finally {
      for (const child of children) child.kill('SIGKILL')
    }
  })

  it('a volume moving to another node survives SIGKILL of either node at a random moment: one complete copy leads, and the move finishes when called again', async (t) => {
    const MOVE_BLOCKS = 12 * 1024
    const WRITER_BLOCKS = 64
    const TRIALS = 4
    const p = await startNode('move-p', 'zone-a')
    const q = await startNode('move-q', 'zone-b')
    const nodes = new Map<string, Node>([['move-p', p], ['move-q', q]])
    const node = (name: string): Node => nodes.get(name) as Node
    const other = (name: string): string => name === 'move-p' ? 'move-q' : 'move-p'
    try {
      await until('both nodes see each other', async () => {
        const status = await api(p, 'GET', '/v1/cluster') as { members: Array<{ id: string, healthy: boolean }> }
        return ['move-p', 'move-q'].every((id) => status.members.some((m) => m.id === id && m.healthy))
      })
      await api(p, 'POST', '/v1/volumes', { name: 'moving', sizeBytes: MOVE_BLOCKS * BLOCK })
      // The base: every block past the writer's region holds a pattern; its digest is checked after every kill.
      const base = createHash('sha256')
      for (let at = WRITER_BLOCKS; at < MOVE_BLOCKS; at += 128) {
        const chunk = Buffer.alloc(Math.min(128, MOVE_BLOCKS - at) * BLOCK)
        for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE(((at * BLOCK + i) * 2654435761) >>> 0, i)
        base.update(chunk)
        await api(p, 'POST', '/v1/volumes/moving/write', { offset: at * BLOCK, data: chunk.toString('base64'), concern: 'WriteDurable' })
      }
      const baseDigest = base.digest('hex')
      const acked = new Map<number, number>()
      let seq = 0
      let holder = 'move-p'
      /** Which nodes hold a copy, and the primary, as the volume's nodes report it. */
      const placement = async (): Promise<{ primary: string, nodes: string[], inSync: string[] }> => {
        for (const name of nodes.keys()) {
          const status = await api(node(name), 'GET', '/v1/volumes/moving/replication').catch(() => undefined) as Replication | undefined
          if (status?.primary !== undefined) return { primary: status.primary, nodes: status.nodes, inSync: status.inSync }
        }
        throw new Error('no node reports the volume')
      }
      const check = async (context: string): Promise<void> => {
        let data: Buffer | undefined
        await until(`${context}: the volume reads`, async () => {
          for (const name of nodes.keys()) {
            try {
              data = Buffer.from((await api(node(name), 'POST', '/v1/volumes/moving/read', { offset: 0, length: WRITER_BLOCKS * BLOCK }) as { data: string }).data, 'base64')
              return true
            } catch {}
          }
          return false
        }, 90_000)
        for (const [index, written] of acked) {
          const found = parse((data as Buffer).subarray(index * BLOCK, (index + 1) * BLOCK), `${context}, block ${index}`)
          assert.ok(found !== undefined && found.seq >= written, `${context}: block ${index} was acknowledged with s${written}, holds ${JSON.stringify(found)}`)
        }
        const digest = createHash('sha256')
        for (let at = WRITER_BLOCKS; at < MOVE_BLOCKS; at += 4096) {
          const length = Math.min(4096, MOVE_BLOCKS - at) * BLOCK
          const { primary } = await placement()
          digest.update(Buffer.from((await api(node(primary), 'POST', '/v1/volumes/moving/read', { offset: at * BLOCK, length }) as { data: string }).data, 'base64'))
        }
        assert.equal(digest.digest('hex'), baseDigest, `${context}: the data written before the move changed`)
      }
      /** What each node reports about the volume, and the end of its log, for a failed wait. */
      const explainMove = async (): Promise<string> => {
        const parts: string[] = []
        for (const [name, n] of nodes) {
          const status = await api(n, 'GET', '/v1/volumes/moving/replication').then((s) => JSON.stringify(s), (err: Error) => err.message)
          parts.push(`${name}: ${status}\n  log: ${n.logs.slice(-25).join('\n  log: ')}`)
        }
        return parts.join('\n')
      }
      const outcomes: string[] = []
      for (let trial = 0; trial < TRIALS; trial++) {
        const from = holder
        const to = other(from)
        // Each node is killed once as the one the volume leaves and once as the one it goes to.
        const victim = (['move-p', 'move-q', 'move-q', 'move-p'] as const)[trial % 4] as string
        const context = `trial ${trial} (moving ${from} -> ${to}, killing ${victim})`
        let stop = false
        const writer = (async () => {
          let target = from
          while (!stop) {
            const index = seq % WRITER_BLOCKS
            const next = ++seq
            try {
              await api(node(target), 'POST', '/v1/volumes/moving/write', { offset: index * BLOCK, data: record(0, next).toString('base64'), concern: 'WriteDurable' })
              acked.set(index, next)
            } catch {
              // Unacknowledged: it may or may not have landed (the checker allows a later one).
              target = other(target)
              await new Promise((resolve) => setTimeout(resolve, 50))
            }
          }
        })()
        const move = api(node(from), 'POST', '/v1/volumes/moving/migrate', { node: to }).then(() => 'moved', (err: Error) => `failed: ${err.message}`)
        await new Promise((resolve) => setTimeout(resolve, 50 + Math.floor(Math.random() * 1500)))
        const killed = node(victim)
        killed.child.kill('SIGKILL')
        await killed.exited
        nodes.set(victim, await startNode(victim, victim === 'move-p' ? 'zone-a' : 'zone-b', killed.bind))
        const outcome = await move
        stop = true
        await writer
        await check(`${context}, move ${outcome}`)
        // Finish the move where a kill interrupted it: the copy left over goes.
        let where = await placement()
        outcomes.push(`${context}: move ${outcome}; then ${where.nodes.join('+')}, primary ${where.primary}`)
        if (where.nodes.length > 1) {
          // As a user would: the same move again, from the node the volume was leaving.
          await until(`${context}: both copies in sync`, async () => (await placement()).inSync.length === 2, 90_000, async () => await explainMove())
          await api(node(from), 'POST', '/v1/volumes/moving/migrate', { node: to })
          where = await placement()
          assert.equal(where.primary, to, `${context}: the move finished on ${to}`)
        }
        assert.equal(where.nodes.length, 1, `${context}: one copy at the end, not ${where.nodes.join(', ')}`)
        holder = where.primary
        await until(`${context}: the other node has no copy`, async () => await api(node(other(holder)), 'GET', '/v1/volumes/moving').then(() => false, (err: HttpError) => err.code === 'VOLUME_NOT_FOUND'))
        await check(`${context}, after finishing`)
      }
      t.diagnostic(outcomes.join('; '))
    } finally {
      for (const n of nodes.values()) n.child.kill('SIGKILL')
    }
  })

  it('a replicated volume changing class converts on a node killed with SIGKILL mid-conversion once it restarts: data complete, every copy in the new class', async (t) => {
    const BLOCKS = 8 * 1024
    const WRITER_BLOCKS = 64
    // Zones of their own: the classes place copies only there, never on the nodes of the tests
    // before (killed, but members until their leases run out).
    const nodes = new Map<string, Node>([['conv-p', await startNode('conv-p', 'conv-a')], ['conv-q', await startNode('conv-q', 'conv-b')]])
    const node = (name: string): Node => nodes.get(name) as Node
    const names = ['conv-p', 'conv-q']
    try {
      await until('both nodes see each other', async () => {
        const status = await api(node('conv-p'), 'GET', '/v1/cluster') as { members: Array<{ id: string, healthy: boolean }> }
        return names.every((id) => status.members.some((m) => m.id === id && m.healthy))
      })
      for (const name of names) {
        await api(node(name), 'POST', '/v1/storage-classes', { name: 'pair', parameters: { replication: '2' }, allowedTopologies: ['conv-a', 'conv-b'] })
        await api(node(name), 'POST', '/v1/storage-classes', { name: 'secret-pair', parameters: { replication: '2', encryption: 'true' }, allowedTopologies: ['conv-a', 'conv-b'] })
      }
      await api(node('conv-p'), 'POST', '/v1/volumes', { name: 'converting', sizeBytes: BLOCKS * BLOCK, storageClass: 'pair' })
      const status = async (): Promise<Replication> => {
        for (const name of names) {
          const found = await api(node(name), 'GET', '/v1/volumes/converting/replication').catch(() => undefined) as Replication | undefined
          if (found?.primary !== undefined) return found
        }
        throw new Error('no node reports the volume')
      }
      await until('both copies in sync', async () => (await status()).inSync.length === 2)
      const base = createHash('sha256')
      for (let at = WRITER_BLOCKS; at < BLOCKS; at += 128) {
        const chunk = Buffer.alloc(Math.min(128, BLOCKS - at) * BLOCK)
        for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE(((at * BLOCK + i) * 2246822519) >>> 0, i)
        base.update(chunk)
        await api(node('conv-p'), 'POST', '/v1/volumes/converting/write', { offset: at * BLOCK, data: chunk.toString('base64'), concern: 'WriteReplicated' })
      }
      const baseDigest = base.digest('hex')
      const acked = new Map<number, number>()
      let seq = 0
      const outcomes: string[] = []
      // Trial 0 kills the replica, trial 1 the primary (its copy fails over, then converts back at restart).
      for (const [trial, targetClass] of [[0, 'secret-pair'], [1, 'pair']] as const) {
        const before = await status()
        const victim = trial === 0 ? before.nodes.find((n) => n !== before.primary) as string : before.primary as string
        const context = `trial ${trial} (to ${targetClass}, killing ${victim})`
        let stop = false
        const writer = (async () => {
          let target = 0
          while (!stop) {
            const index = seq % WRITER_BLOCKS
            const next = ++seq
            try {
              await api(node(names[target % 2] as string), 'POST', '/v1/volumes/converting/write', { offset: index * BLOCK, data: record(1, next).toString('base64'), concern: 'WriteReplicated' })
              acked.set(index, next)
            } catch {
              target++
              await new Promise((resolve) => setTimeout(resolve, 50))
            }
          }
        })()
        const asker = names.find((n) => n !== victim) as string
        const killed = node(victim)
        const seen = killed.logs.length
        const migration = api(node(asker), 'POST', '/v1/volumes/converting/migrate', { storageClass: targetClass }).then(() => 'done', (err: Error) => `failed: ${err.message}`)
        // Killed while its own copy converts: its log says so (the daemon logs each phase of a migration).
        await until(`${context}: the copy on ${victim} is converting`, async () => killed.logs.slice(seen).some((line) => line.includes('"volume migrating"') && line.includes('"volume":"converting"') && line.includes('"phase":"copy"')), 30_000)
        await new Promise((resolve) => setTimeout(resolve, Math.floor(Math.random() * 150)))
        killed.child.kill('SIGKILL')
        await killed.exited
        nodes.set(victim, await startNode(victim, victim === 'conv-p' ? 'conv-a' : 'conv-b', killed.bind))
        let outcome = await migration
        if (outcome !== 'done') {
          // Gave up while the node was away (the call's own deadline): the same call again waits for it.
          // (Also when the first call is still running there, for a client that stopped waiting: then
          // this one waits for it, the longer a loaded machine needs.)
          outcome = await api(node(asker), 'POST', '/v1/volumes/converting/migrate', { storageClass: targetClass }, 180_000).then(() => 'done on the second call', (err: Error) => `failed again: ${err.message}`)
        }
        stop = true
        await writer
        assert.match(outcome, /^done/, context)
        outcomes.push(`${context}: ${outcome}`)
        await until(`${context}: both copies in sync`, async () => (await status()).inSync.length === 2, 90_000)
        for (const name of names) {
          const volume = await api(node(name), 'GET', '/v1/volumes/converting') as { storageClass: string, encrypted: boolean }
          assert.equal(volume.storageClass, targetClass, `${context}: the class of the copy on ${name}`)
          assert.equal(volume.encrypted, targetClass === 'secret-pair', `${context}: the copy on ${name} is ${targetClass === 'secret-pair' ? '' : 'not '}encrypted`)
        }
        const { primary } = await status()
        const data = Buffer.from((await api(node(primary as string), 'POST', '/v1/volumes/converting/read', { offset: 0, length: WRITER_BLOCKS * BLOCK }) as { data: string }).data, 'base64')
        for (const [index, written] of acked) {
          const found = parse(data.subarray(index * BLOCK, (index + 1) * BLOCK), `${context}, block ${index}`)
          assert.ok(found !== undefined && found.seq >= written, `${context}: block ${index} was acknowledged with s${written}, holds ${JSON.stringify(found)}`)
        }
        const digest = createHash('sha256')
        for (let at = WRITER_BLOCKS; at < BLOCKS; at += 4096) {
          digest.update(Buffer.from((await api(node(primary as string), 'POST', '/v1/volumes/converting/read', { offset: at * BLOCK, length: Math.min(4096, BLOCKS - at) * BLOCK }) as { data: string }).data, 'base64'))
        }
        assert.equal(digest.digest('hex'), baseDigest, `${context}: the data written before changed`)
      }
      t.diagnostic(outcomes.join('; '))
      // Each node's own copy, read from its disk: the same bytes on both.
      const expected = Buffer.from((await api(node((await status()).primary as string), 'POST', '/v1/volumes/converting/read', { offset: 0, length: 4 << 20 }) as { data: string }).data, 'base64')
      for (const name of names) {
        node(name).child.kill('SIGTERM')
        assert.equal(await node(name).exited, 0)
      }
      for (const name of names) {
        const g = await GalleonFS.open({ storagePath: join(root, name) })
        try {
          assert.ok(Buffer.from(await g.read('converting', 0, 4 << 20)).equals(expected), `the copy on ${name} differs`)
        } finally {
          await g.close()
        }
      }
    } finally {
      for (const n of nodes.values()) n.child.kill('SIGKILL')
    }
  })
})
