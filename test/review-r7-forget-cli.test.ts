// Review r7: forgetClusterNode's refusals as the CLI (`galleonfs cluster forget <node>`) prints them.
// Every library term in them must be said in the CLI's terms (inCliTerms), as for the other cluster
// refusals: a CLI user configures the daemon's `lease_ttl`, not a leaseTtlMs option.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { ManualClock, MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { inCliTerms } from '../examples/cli-client.js'
import { until } from './support/wait.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

describe('review r7: cluster forget in CLI terms', () => {
  it('the refusal for a node whose lease ended but which is still a member names no library option', { timeout: 60_000 }, async () => {
    const network = new MemoryNetwork()
    // Leases run on a clock the test moves: the node stays an unhealthy member for as long as the
    // check takes (on the system clock, for what is left of its record lease: from a third of a TTL).
    const clock = new ManualClock(Date.now())
    const coordinators = new MemoryCoordinatorCluster({ clock })
    const handles = new Map<string, ReturnType<MemoryCoordinatorCluster['coordinator']>>()
    const nodes: GalleonFS[] = []
    for (const id of ['n1', 'n2', 'n3']) {
      const storagePath = await mkdtemp(join(tmpdir(), `galleon-r7-forget-${id}-`))
      dirs.push(storagePath)
      const coordinator = coordinators.coordinator()
      handles.set(id, coordinator)
      const g = await GalleonFS.open({ storagePath, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 4000 } })
      opened.push(g)
      nodes.push(g)
    }
    const n1 = nodes[0] as GalleonFS
    await until('every node sees every other', () => n1.cluster?.members.filter((m) => m.healthy).length === 3)
    // n3's process dies: its lease ends after a TTL; its record (on a lease of twice the TTL, last
    // kept alive at most two thirds of a TTL ago) stays until the clock moves on.
    await handles.get('n3')?.crash()
    clock.advance(4000)
    await until('n3 is an unhealthy member', () => n1.cluster?.members.some((m) => m.id === 'n3' && !m.healthy) === true)
    const refusal = await n1.forgetClusterNode('n3').then(() => undefined, (err: { code?: string, message?: string }) => err)
    assert.equal(refusal?.code, 'BUSY', 'n3 is still a member')
    const cli = inCliTerms(refusal?.message ?? '')
    assert.match(cli, /still a member/)
    assert.doesNotMatch(cli, /leaseTtlMs/, `the CLI prints a library option a CLI user never set: ${cli}`)
  })
})
