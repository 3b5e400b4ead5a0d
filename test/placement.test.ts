// Placement of a volume's copies: strategies, constraints, degraded placements and bad requests.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { placeVolume } from '../src/cluster/placement.js'
import type { ClusterMember } from '../src/drivers.js'

const GiB = 1024 ** 3

function node (id: string, zone: string, freeGiB: number, labels: Record<string, string> = {}, healthy = true): ClusterMember {
  return { id, address: `${id}:8080`, zone, labels, capacityBytes: 100 * GiB, freeBytes: freeGiB * GiB, healthy, joinedAt: '2026-12-02T00:00:00.000Z' }
}

const cluster = [
  node('a1', 'zone-a', 50, { disk: 'ssd' }),
  node('a2', 'zone-a', 90, { disk: 'hdd' }),
  node('b1', 'zone-b', 40, { disk: 'ssd' }),
  node('b2', 'zone-b', 10, { disk: 'ssd', gpu: 'yes' }),
  node('c1', 'zone-c', 70, { disk: 'hdd' }),
  node('d1', 'zone-d', 99, {}, false)
]

describe('placement', () => {
  it('spread: one copy per zone first, then the least loaded nodes; the preferred node is the primary', () => {
    const p = placeVolume(cluster, { replicas: 3 })
    assert.deepEqual(new Set(p.zones).size, 3)
    assert.equal(p.degraded, false)
    assert.ok(!p.nodes.includes('d1'), 'an unhealthy node is never chosen')
    const preferred = placeVolume(cluster, { replicas: 3, preferredPrimary: 'b2' })
    assert.equal(preferred.primary, 'b2')
    assert.equal(preferred.nodes[0], 'b2')
    assert.equal(new Set(preferred.zones).size, 3)
    // Load decides within the zones: a1 holds many volumes, a2 none.
    const loaded = placeVolume(cluster, { replicas: 3, load: { a1: 10, b1: 10 } })
    assert.deepEqual([...loaded.nodes].sort(), ['a2', 'b2', 'c1'], 'the unloaded node of each zone')
    const unloaded = placeVolume(cluster, { replicas: 3 })
    assert.deepEqual([...unloaded.nodes].sort(), ['a2', 'b1', 'c1'], 'without load: the freest node of each zone')
  })

  it('balanced: the nodes with the most free capacity', () => {
    assert.deepEqual(placeVolume(cluster, { replicas: 3, strategy: 'balanced' }).nodes, ['a2', 'c1', 'a1'])
  })

  it('affinity, anti-affinity, zones and capacity constrain; too few nodes give a degraded placement that says why', () => {
    assert.deepEqual([...placeVolume(cluster, { replicas: 2, affinity: { disk: 'ssd' } }).nodes].sort(), ['a1', 'b1'])
    assert.deepEqual([...placeVolume(cluster, { replicas: 3, affinity: { disk: 'ssd' } }).nodes].sort(), ['a1', 'b1', 'b2'])
    assert.ok(!placeVolume(cluster, { replicas: 4, antiAffinity: { gpu: 'yes' } }).nodes.includes('b2'))
    assert.ok(placeVolume(cluster, { replicas: 2, zones: ['zone-b'] }).nodes.every((id) => id.startsWith('b')))
    const big = placeVolume(cluster, { replicas: 3, requiredBytes: 60 * GiB })
    assert.deepEqual([...big.nodes].sort(), ['a2', 'c1'])
    assert.equal(big.degraded, true)
    assert.match(big.reason ?? '', /2 of 3 copies placed: .*64424509440 free bytes/)
    const few = placeVolume(cluster, { replicas: 6 })
    assert.equal(few.degraded, true)
    assert.match(few.reason ?? '', /5 healthy node\(s\)/)
    assert.throws(() => placeVolume(cluster, { replicas: 1, affinity: { disk: 'nvme' } }), { code: 'NO_SPACE', message: /affinity disk=nvme/ })
    assert.throws(() => placeVolume([], { replicas: 1 }), { code: 'NO_SPACE', message: /0 healthy node/ })
  })

  it('a pool\'s nodes: only they are chosen, with either strategy; too few of them give a degraded placement naming the pool', () => {
    assert.deepEqual([...placeVolume(cluster, { replicas: 2, nodes: ['a1', 'b2', 'd1'] }).nodes].sort(), ['a1', 'b2'], 'd1 is unhealthy')
    assert.deepEqual(placeVolume(cluster, { replicas: 2, strategy: 'balanced', nodes: ['b1', 'b2', 'c1'] }).nodes, ['c1', 'b1'])
    const short = placeVolume(cluster, { replicas: 3, nodes: ['a1', 'c1'] })
    assert.equal(short.degraded, true)
    assert.deepEqual([...short.nodes].sort(), ['a1', 'c1'])
    assert.match(short.reason ?? '', /2 of 3 copies placed: pool nodes a1, c1/)
    assert.throws(() => placeVolume(cluster, { replicas: 1, nodes: ['zz'] }), { code: 'NO_SPACE', message: /pool nodes zz/ })
  })

  it('fewer replicas than nodes holding copies: the preferred one stays, then the best by the strategy', () => {
    const fewer = placeVolume(cluster, { replicas: 2, current: ['a1', 'b1', 'c1'], preferredPrimary: 'c1' })
    assert.equal(fewer.nodes.length, 2)
    assert.equal(fewer.primary, 'c1')
  })

  it('adding replicas keeps the nodes that hold copies', () => {
    const more = placeVolume(cluster, { replicas: 3, current: ['b2'], preferredPrimary: 'b2' })
    assert.equal(more.primary, 'b2')
    assert.equal(more.nodes.length, 3)
    assert.equal(new Set(more.zones).size, 3)
  })

  it('refuses bad requests with INVALID_ARGUMENT', () => {
    for (const bad of [{ replicas: 0 }, { replicas: 1.5 }, { replicas: 1, strategy: 'random' }, { replicas: 1, requiredBytes: -1 }, { replicas: 1, affinity: { disk: 1 } }, { replicas: 1, zones: 'zone-a' }, { replicas: 1, nodes: 'a1' }, { replicas: 1, nodes: [1] }, null]) {
      assert.throws(() => placeVolume(cluster, bad as never), { code: 'INVALID_ARGUMENT' })
    }
  })
})
