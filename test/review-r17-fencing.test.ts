// Review r17 of 5c5eaa9 (fencing by lease). A node whose lease ended fences its primaries, and
// serves again once it holds a new lease and has read each volume's record. A read does not fence
// off a failover the cluster leader decided while the node was not a member (its pass read the
// members, then writes the record by compare-and-swap at the revision it listed): the node reads
// the record still naming it, serves, acknowledges writes, and then the leader's write lands and
// promotes the copy, which lacks them. Two in-process nodes on the memory coordinator and
// transport; the leader's failover write is held (as a slow coordinator answer would hold it) until
// n1 serves again.

import { after, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'

const opened: GalleonFS[] = []
const dirs: string[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

type Call = (...args: unknown[]) => Promise<unknown>

/** A coordinator whose writes of a volume record naming a primary other than `n1` wait while `hold` is set. */
class HeldFailover {
  hold = false
  /** Set once such a write waits; calling it lets the write go on. */
  release: (() => void) | undefined
  /** What the held write answered (undefined: its compare-and-swap failed). */
  outcome: Promise<unknown> | undefined

  wrap (coordinator: Coordinator): Coordinator {
    return new Proxy(coordinator, {
      get: (target, name) => {
        const value = Reflect.get(target, name, target) as unknown
        if (typeof value !== 'function') return value
        if (name !== 'put') return value.bind(target)
        return async (key: string, text: string, ...rest: unknown[]) => {
          if (!this.hold || !key.startsWith('replication/volumes/') || (JSON.parse(text) as { primary?: string }).primary === 'n1') {
            return await (value as Call).call(target, key, text, ...rest)
          }
          this.hold = false
          const go = new Promise<void>((resolve) => { this.release = resolve })
          this.outcome = go.then(async () => await (value as Call).call(target, key, text, ...rest))
          return await this.outcome
        }
      }
    })
  }
}

it('a failover the leader decided while the primary was not a member does not land after that primary serves again', { timeout: 60_000 }, async () => {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const held = new HeldFailover()
  const n1Handle = coordinators.coordinator()
  const open = async (id: string, coordinator: Coordinator): Promise<GalleonFS> => {
    const dir = await mkdtemp(join(tmpdir(), `galleon-r17-${id}-`))
    dirs.push(dir)
    const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 3000 } })
    opened.push(g)
    return g
  }
  // n2 first: it leads the cluster, so it is the one that fails n1's volume over.
  const n2 = await open('n2', held.wrap(coordinators.coordinator()))
  await until('n2 leads the cluster', () => n2.cluster?.leadership !== undefined, 10_000)
  // n1's new leases wait while `rejoin` is set: it rejoins only once the leader's failover write is
  // held, however the nodes' timers interleave on a loaded machine (else n1 could be back before the
  // leader's pass, which then fails nothing over). The rejoin is the coordinator's own (its lease
  // grants), not a call through the Coordinator interface.
  let rejoin: Promise<void> | undefined
  const leases = n1Handle as unknown as { _grantLease: Call }
  const grantLease = leases._grantLease
  leases._grantLease = async function (this: unknown, ...args: unknown[]) {
    if (rejoin !== undefined) await rejoin
    return await grantLease.apply(this, args)
  }
  const n1 = await open('n1', n1Handle)
  await until('both nodes are healthy members', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2), 10_000)
  await n1.createVolume({ name: 'v', sizeBytes: 1 << 20, replicas: 2 })
  await until('n1 is the primary and both copies are in sync', async () => {
    const s = await n1.replicationStatus('v')
    return s.role === 'primary' && s.inSync.length === 2
  }, 20_000)
  const blockSize = (await n1.getVolume('v')).blockSize
  const fenced: string[] = []
  n1.on('replication:error', (e) => { if (e.code === 'NOT_LEADER') fenced.push(e.message) })
  const failovers: string[] = []
  n2.on('replication:failover', (e) => failovers.push(`${e.from}->${e.to} epoch ${e.epoch}`))

  // n1's leases end on the cluster (a partition from the coordinator for a lease's time): the
  // leader sees n1 gone and writes the failover, which is held here before it reaches the store.
  held.hold = true
  let letRejoin!: () => void
  rejoin = new Promise<void>((resolve) => { letRejoin = resolve })
  n1Handle.expireLeases()
  await until('the leader is failing v over (its write is held)', () => held.release !== undefined, 10_000)
  letRejoin()
  // n1 notices at its next keepalive, fences, joins again, reads the record (still naming it) and serves.
  await until('n1 fenced its primary', () => fenced.some((m) => /lost its cluster lease/.test(m)), 10_000)
  await until('n1 serves again as the primary', async () => (await n1.replicationStatus('v')).role === 'primary', 10_000)
  await until('n2 sees n1 healthy again', () => n2.cluster?.members.find((m) => m.id === 'n1')?.healthy === true, 10_000)

  // A client that reaches n1 alone writes while the link between n1 and n2 is stalled (messages
  // lost silently, as on a connection that stops relaying): n1 acknowledges as the primary.
  network.drop((m) => (m.from === 'n1' && m.to === 'n2') || (m.from === 'n2' && m.to === 'n1'), { silent: true })
  const data = new Uint8Array(blockSize).fill(0x5a)
  await n1.writeBlock('v', 2, data, WriteConcern.WriteDurable)
  // The leader's write, decided while n1 was no member, now reaches the coordinator.
  held.release?.()
  const outcome = await held.outcome
  network.drop(0)
  await until('the cluster agrees on one primary', async () => {
    const [a, b] = await Promise.all([n1.replicationStatus('v'), n2.replicationStatus('v')])
    return a.primary === b.primary && [a.role, b.role].filter((r) => r === 'primary').length === 1
  }, 30_000)
  const onN2 = Buffer.from(await n2.readBlock('v', 2))
  const onN1 = Buffer.from(await n1.readBlock('v', 2))
  assert.deepEqual({ onN1: onN1.equals(data), onN2: onN2.equals(data) }, { onN1: true, onN2: true },
    `n1 acknowledged a WriteDurable write while it served again as the primary, and the failover the leader decided while n1 was no member then landed (${outcome === undefined ? 'its write failed' : 'its write succeeded'}; failovers: ${failovers.join(', ') || 'none'}): the write is gone`)
})
