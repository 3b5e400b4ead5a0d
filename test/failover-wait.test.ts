// The failover wait (ClusterOptions.failoverWaitMs, the daemon's --failover-wait-seconds /
// failover_wait): how long a call made on a node that holds a copy but not the primary keeps trying
// to reach a primary before it fails with BACKEND_UNAVAILABLE. Three nodes on the in-process
// transport and coordinator: a partition cuts the copies off from the primary while every lease
// stays alive (no failover comes), so only the wait decides.

import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { GalleonFS } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { ConfigError, check, fileKeyName, flagName, merge } from '../examples/daemon-config.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function node (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, failoverWaitMs?: number): Promise<GalleonFS> {
  const dir = await mkdtemp(join(tmpdir(), `galleon-failover-wait-${id}-`))
  dirs.push(dir)
  const g = await GalleonFS.open({
    storagePath: dir,
    cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000, ...(failoverWaitMs === undefined ? {} : { failoverWaitMs }) }
  })
  opened.push(g)
  return g
}

const filled = (byte: number): Uint8Array => new Uint8Array(4096).fill(byte)

describe('failover wait', () => {
  it('a call on a copy\'s node that cannot reach the primary fails after the node\'s failoverWaitMs, naming the primary; one whose wait outlasts the partition goes through', { timeout: 90_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await node(network, coordinators, 'n1')
    const n2 = await node(network, coordinators, 'n2', 1500)
    const n3 = await node(network, coordinators, 'n3', 60_000)
    await until('every node sees every other', () => [n1, n2, n3].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 3))
    await n1.createVolume({ name: 'v', sizeBytes: 1 << 20, replicas: 3 })
    await until('all three copies are in sync', async () => (await n1.replicationStatus('v')).inSync.length === 3)
    assert.equal((await n1.replicationStatus('v')).primary, 'n1')
    await n2.writeBlock('v', 0, filled(1)) // forwarded while the network is whole
    assert.deepEqual(await n1.readBlock('v', 0), filled(1))

    network.partition(['n2', 'n3'], ['n1'])
    const started = performance.now()
    const fromN3 = n3.writeBlock('v', 2, filled(3)).then(() => performance.now() - started)
    let failedAfter = 0
    await assert.rejects(n2.writeBlock('v', 1, filled(2)), (err: { code?: string, message?: string }) => {
      failedAfter = performance.now() - started
      assert.equal(err.code, 'BACKEND_UNAVAILABLE', String(err.message))
      assert.match(String(err.message), /volume \S+ has no reachable primary \(last known: n1\).*retry once the cluster has failed over/)
      return true
    })
    // It kept trying for its own wait, not the default 30 s (nor the 60 s of n3).
    assert.ok(failedAfter >= 1500, `n2's call failed after ${Math.round(failedAfter)} ms, before its 1500 ms wait`)
    assert.ok(failedAfter < 25_000, `n2's call failed after ${Math.round(failedAfter)} ms: not its 1500 ms wait`)
    assert.equal((await n1.cluster?.status())?.leader !== undefined, true)
    assert.equal((await n1.replicationStatus('v')).primary, 'n1', 'no failover: every lease stayed alive')

    // n3's call, made at the same time, is still trying: the partition ends within its wait.
    const pending = await Promise.race([fromN3.then(() => 'resolved', () => 'rejected'), new Promise((resolve) => setTimeout(() => resolve('pending'), 50))])
    assert.equal(pending, 'pending', 'n3 waits longer than n2')
    network.heal()
    const n3Took = await fromN3
    assert.ok(n3Took >= failedAfter, 'n3\'s call went through once the partition healed')
    assert.deepEqual(await n1.readBlock('v', 2), filled(3), 'n3\'s write reached the primary')
    assert.deepEqual(await n1.readBlock('v', 1), new Uint8Array(4096), 'n2\'s failed write never ran')
    await n2.writeBlock('v', 1, filled(4))
    assert.deepEqual(await n1.readBlock('v', 1), filled(4), 'n2 forwards again once healed')
  })

  it('failoverWaitMs below 1000 or not a number is refused before the join, naming the option', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    for (const bad of [500, Number.NaN, -1]) {
      const dir = await mkdtemp(join(tmpdir(), 'galleon-failover-wait-bad-'))
      dirs.push(dir)
      const transport = new MemoryTransport({ network, nodeId: 'x' })
      const coordinator = coordinators.coordinator()
      try {
        await assert.rejects(GalleonFS.open({ storagePath: dir, cluster: { nodeId: 'x', transport, coordinator, failoverWaitMs: bad } }), (err: { code?: string, message?: string }) => {
          assert.equal(err.code, 'INVALID_ARGUMENT')
          assert.match(String(err.message), /cluster failoverWaitMs must be at least 1000/)
          return true
        })
      } finally {
        await transport.close().catch(() => {})
        await coordinator.close().catch(() => {})
      }
    }
  })

  it('the daemon takes it as --failover-wait-seconds or failover_wait in [cluster], 30 s by default, from 1 to 3600', () => {
    assert.equal(check({ failoverWaitSeconds: '5' }, 'command line', flagName).failoverWaitSeconds, 5)
    assert.equal(check({ failoverWaitSeconds: 2.5 }, 'daemon.toml', fileKeyName).failoverWaitSeconds, 2.5)
    assert.throws(() => check({ failoverWaitSeconds: '0' }, 'command line', flagName), (err: unknown) => {
      assert.ok(err instanceof ConfigError)
      assert.equal(err.message, 'command line: --failover-wait-seconds must be a number of seconds from 1 to 3600, got "0"')
      return true
    })
    assert.throws(() => check({ failoverWaitSeconds: 'soon' }, 'daemon.toml', fileKeyName), (err: unknown) => {
      assert.ok(err instanceof ConfigError)
      assert.equal(err.message, 'daemon.toml: failover_wait in [cluster] must be a number of seconds from 1 to 3600, got "soon"')
      return true
    })
    assert.equal(merge().failoverWaitSeconds, 30)
    assert.equal(merge({ failoverWaitSeconds: 7 }).failoverWaitSeconds, 7)
  })
})
