// A cluster of real daemon processes on 127.0.0.1 coordinated by a real etcd: the first node names
// etcd, the second joins through the first's bind address (--peer-addresses), a third joins at run
// time (`cluster join`) and keeps its membership across a restart; a node killed with SIGKILL turns
// unhealthy and the leadership moves; a wrong secret is refused; a node leaves.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ENTRY, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { enableEtcdAuth, etcdSkipReason, selfSignedCertificate, startEtcd, type EtcdServer } from './support/etcd.js'
import { freePort } from './support/net.js'
import { scriptArgs } from './support/child-script.js'

const SKIP = etcdSkipReason()

let root: string
let etcd: EtcdServer | undefined
const children = new Set<ChildProcess>()
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-cluster-'))
  if (SKIP === undefined) etcd = await startEtcd()
})
after(async () => {
  for (const child of children) child.kill('SIGKILL')
  await etcd?.stop()
  await rm(root, { recursive: true, force: true })
})

interface Daemon extends RunningDaemon { bind: string }

async function daemon (name: string, args: string[], secret = 'the-cluster-secret', bindPort?: number): Promise<Daemon> {
  const bind = `127.0.0.1:${bindPort ?? await freePort()}`
  let spawned: ChildProcess | undefined
  const running = await startDaemonProcess(['--storage-path', join(root, name), '--ipc-address', '127.0.0.1:0', '--bind-address', bind, '--node-id', name, ...args], {
    cwd: root,
    env: { ...process.env, GALLEONFS_CLUSTER_SECRET: secret },
    onSpawn: (child) => {
      spawned = child
      children.add(child)
      child.once('exit', () => children.delete(child))
    }
  }).catch((err: Error) => { if (spawned !== undefined) children.delete(spawned); throw err })
  return { ...running, bind }
}

async function cli (address: string, args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(process.execPath, [...scriptArgs(ENTRY), '--daemon-address', address, ...args], { cwd: root }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, stdout, stderr })
    })
  })
}

/**
 * Holds the member record of a node that just died in etcd, on no lease, until `release()` deletes
 * it as the end of its record lease would: until then the node is listed as an unhealthy member.
 * Left to its lease, the record goes between a third of a TTL and a TTL after the node is first
 * seen unhealthy (depending on when its last keepalives were sent), and the checks made in that
 * window start CLI processes, which take seconds on a loaded machine: the check of the refusal
 * would depend on timing.
 */
async function holdMemberRecord (endpoint: string, nodeId: string): Promise<{ release: () => Promise<void> }> {
  const { Etcd3 } = await import('etcd3')
  const raw = new Etcd3({ hosts: [endpoint] })
  const key = `/galleonfs/nodes/${encodeURIComponent(nodeId)}/record`
  try {
    const stored = (await raw.get(key).exec()).kvs[0]
    assert.ok(stored !== undefined, `the member record of ${nodeId} is in etcd right after the node died`)
    // The record as the node left it (compare-and-swap on its revision): the same value, on no lease.
    const pinned = await raw.if(key, 'Mod', '==', stored.mod_revision).then(raw.put(key).value(stored.value)).commit()
    assert.ok(pinned.succeeded, `the member record of ${nodeId} changed while it was being held`)
  } catch (err) {
    raw.close()
    throw err
  }
  return { release: async () => { try { await raw.delete().key(key).exec() } finally { raw.close() } } }
}

interface Status { clustering: boolean, nodeId: string, leader?: string, leaderEpoch?: number, members: Array<{ id: string, healthy: boolean, leader: boolean, address: string }> }

async function status (d: Daemon): Promise<Status> {
  const result = await cli(d.address, ['--json', 'cluster', 'status'])
  assert.equal(result.code, 0, result.stderr)
  return JSON.parse(result.stdout) as Status
}

async function until (what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

describe('a cluster of daemon processes on etcd', { skip: SKIP }, () => {
  it('forms, grows at run time, survives a restart and a SIGKILL, refuses a wrong secret, and lets a node leave', async () => {
    const endpoint = (etcd as EtcdServer).endpoint
    const a = await daemon('node-a', ['--etcd-endpoints', endpoint, '--zone', 'zone-a', '--labels', 'disk=ssd'])
    // etcd's address is kept in the storage path: the other nodes learn it from node-a.
    const b = await daemon('node-b', ['--peer-addresses', a.bind, '--zone', 'zone-b'])
    try {
      await until('both nodes see two healthy members and a leader', async () => {
        const [sa, sb] = [await status(a), await status(b)]
        return [sa, sb].every((s) => s.members.length === 2 && s.members.every((m) => m.healthy) && s.leader !== undefined)
      })
      const sa = await status(a)
      assert.equal(sa.clustering, true)
      assert.deepEqual(sa.members.map((m) => m.id), ['node-a', 'node-b'])
      assert.equal(sa.members.find((m) => m.id === 'node-b')?.address, b.bind)
      const table = (await cli(a.address, ['cluster', 'status'])).stdout
      assert.match(table, /node-a\s+127\.0\.0\.1:\d+\s+zone-a\s+yes/)
      // The inter-node protocol versions each node speaks (see src/cluster/protocol.ts).
      assert.match(table, /\bPROTOCOL\n/)
      assert.match(table, /node-b\s+127\.0\.0\.1:\d+\s+zone-b\s+yes\s+(yes\s+)?\d+\s+1\n/)
      assert.deepEqual(JSON.parse((await cli(a.address, ['--json', 'cluster', 'peers'])).stdout).map((m: { id: string }) => m.id), ['node-b'])

      // A third node, alone at first, joins at run time; after a restart it is still a member.
      const cPort = await freePort()
      let c = await daemon('node-c', [], 'the-cluster-secret', cPort)
      assert.equal((await status(c)).clustering, false)
      const joined = await cli(c.address, ['cluster', 'join', b.bind])
      assert.equal(joined.code, 0, joined.stderr)
      assert.match(joined.stdout, /joined the cluster as node node-c: 3 member\(s\)/)
      c.child.kill('SIGTERM')
      assert.equal(await c.exited, 0)
      c = await daemon('node-c', [], 'the-cluster-secret', cPort)
      await until('node-c is back in the cluster', async () => (await status(c)).members.filter((m) => m.healthy).length === 3)

      // A node with another secret cannot join.
      const stranger = await daemon('stranger', [], 'not-the-cluster-secret')
      const refused = await cli(stranger.address, ['cluster', 'join', a.bind])
      assert.equal(refused.code, 1)
      assert.match(refused.stderr, /secret/i)
      stranger.child.kill('SIGTERM')
      await stranger.exited

      // The leader dies: it turns unhealthy and another node leads, with a greater epoch.
      const before = await status(a)
      const byName = new Map<string, Daemon>([['node-a', a], ['node-b', b], ['node-c', c]])
      const leader = byName.get(before.leader as string) as Daemon
      const survivors = [...byName.values()].filter((d) => d !== leader)
      leader.child.kill('SIGKILL')
      await leader.exited
      // Its member record is held until the checks of an unhealthy member are done (see holdMemberRecord).
      const held = await holdMemberRecord(endpoint, before.leader as string)
      const watcher = survivors[0] as Daemon
      try {
        await until('the dead leader is unhealthy and another node leads', async () => {
          const s = await status(watcher)
          const member = s.members.find((m) => m.id === before.leader)
          return member !== undefined && !member.healthy && s.leader !== undefined && s.leader !== before.leader
        })
        const afterKill = await status(watcher)
        assert.ok((afterKill.leaderEpoch as number) > (before.leaderEpoch as number))
        // Not forgotten while it is still a member.
        const early = await cli(watcher.address, ['cluster', 'forget', before.leader as string])
        assert.equal(early.code, 1, early.stdout)
        assert.match(early.stderr, /is still a member of the cluster \(unhealthy: its lease ended\)/)
      } finally {
        await held.release()
      }

      // A survivor leaves (it holds no volume); the other sees it go.
      const leaving = survivors[1] as Daemon
      const left = await cli(leaving.address, ['cluster', 'leave'])
      assert.equal(left.code, 0, left.stderr)
      assert.equal((await status(leaving)).clustering, false)
      const leaverName = [...byName].find(([, d]) => d === leaving)?.[0]
      await until('the leaver is gone', async () => !(await status(watcher)).members.some((m) => m.id === leaverName))
      for (const d of survivors) {
        d.child.kill('SIGTERM')
        assert.equal(await d.exited, 0)
      }
    } finally {
      for (const child of children) child.kill('SIGKILL')
    }
  })

  it('refuses clustering without a secret, and peers that are not in a cluster, with clear errors', async () => {
    const noSecret = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', '--storage-path', join(root, 'lonely'), '--ipc-address', '127.0.0.1:0', '--bind-address', `127.0.0.1:${await freePort()}`, '--etcd-endpoints', (etcd as EtcdServer).endpoint], {
      cwd: root, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, GALLEONFS_CLUSTER_SECRET: '' }
    })
    let log = ''
    noSecret.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
    assert.equal(await new Promise((resolve) => noSecret.once('exit', resolve)), 2, log)
    assert.match(log, /clustering needs the cluster's shared secret/)
    // A short secret, a wildcard bind address without an advertised one, a damaged membership file.
    const refuse = async (args: string[], secret: string, message: RegExp): Promise<void> => {
      const child = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', '--ipc-address', '127.0.0.1:0', ...args], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, GALLEONFS_CLUSTER_SECRET: secret } })
      let out = ''
      child.stderr.on('data', (chunk: Buffer) => { out += chunk.toString() })
      assert.equal(await new Promise((resolve) => child.once('exit', resolve)), 2, out)
      assert.match(out, message)
    }
    const etcdArgs = ['--etcd-endpoints', (etcd as EtcdServer).endpoint]
    await refuse(['--storage-path', join(root, 'short'), '--bind-address', `127.0.0.1:${await freePort()}`, ...etcdArgs], 'short', /secret is 5 characters long; use at least 16/)
    await refuse(['--storage-path', join(root, 'wild'), '--bind-address', `0.0.0.0:${await freePort()}`, ...etcdArgs], 'a-long-enough-cluster-secret', /listens on every interface.*--advertise-address/)
    await mkdir(join(root, 'damaged'), { recursive: true })
    await writeFile(join(root, 'damaged', 'daemon-cluster.json'), '{ "etcdEndpoints": ')
    await refuse(['--storage-path', join(root, 'damaged'), '--bind-address', `127.0.0.1:${await freePort()}`], 'a-long-enough-cluster-secret', /daemon-cluster\.json is damaged/)
    // A single daemon's bind address answers nothing: it is not in a cluster.
    const single = await daemon('single', [])
    try {
      const other = await daemon('other', [])
      const joined = await cli(other.address, ['cluster', 'join', single.bind])
      assert.equal(joined.code, 1)
      assert.match(joined.stderr, /no peer told where the cluster's coordinator is.*clustering needs etcd/)
      other.child.kill('SIGTERM')
      await other.exited
    } finally {
      single.child.kill('SIGTERM')
      await single.exited
    }
  })

  it('signs in to an etcd with TLS and authentication given the CA, a user and a password file; refuses clearly without them', async () => {
    const dir = join(root, 'secure-etcd')
    await mkdir(dir, { recursive: true })
    const tls = await selfSignedCertificate(dir)
    const secure = await startEtcd({ tls })
    try {
      await enableEtcdAuth(secure.endpoint, 'etcd-root-password', { ca: await readFile(tls.certFile, 'utf8') })
      const passwordFile = join(dir, 'etcd-password')
      await writeFile(passwordFile, 'etcd-root-password\n')
      await chmod(passwordFile, 0o600)
      const refuse = async (name: string, args: string[], message: RegExp): Promise<void> => {
        const child = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', '--ipc-address', '127.0.0.1:0', '--storage-path', join(root, name), '--bind-address', `127.0.0.1:${await freePort()}`, '--etcd-endpoints', secure.endpoint, ...args], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, GALLEONFS_CLUSTER_SECRET: 'the-cluster-secret', GALLEONFS_ETCD_PASSWORD: '' } })
        let out = ''
        child.stderr.on('data', (chunk: Buffer) => { out += chunk.toString() })
        assert.notEqual(await new Promise((resolve) => child.once('exit', resolve)), 0, out)
        assert.match(out, message)
      }
      await refuse('no-ca', [], /use https: name the CA that signed etcd's certificate with --etcd-ca-file/)
      await refuse('no-user', ['--etcd-ca-file', tls.certFile], /authentication on, and no user was given.*--etcd-username/)
      await refuse('no-password', ['--etcd-ca-file', tls.certFile, '--etcd-username', 'root'], /etcd user root needs its password/)
      await refuse('half-cert', ['--etcd-ca-file', tls.certFile, '--etcd-cert-file', tls.certFile], /needs both --etcd-cert-file and --etcd-key-file/)
      const node = await daemon('secure-a', ['--etcd-endpoints', secure.endpoint, '--etcd-ca-file', tls.certFile, '--etcd-username', 'root', '--etcd-password-file', passwordFile])
      try {
        await until('the node is a healthy member of the secured cluster', async () => {
          const s = await status(node)
          return s.clustering && s.members.some((m) => m.id === 'secure-a' && m.healthy)
        })
      } finally {
        node.child.kill('SIGTERM')
        await node.exited
      }
    } finally {
      await secure.stop()
    }
  })
})
