// h46: a limit must not fire while progress is made. A write made on a node that is not the
// replicated volume's primary is forwarded to the primary, which runs it as its own: through the
// volume's QoS throttle, then the wait for the copies (up to 60 s). The forwarding node gives each
// attempt 15 s to be answered and the whole call 30 s: a write the primary is still throttling
// (making progress at the rate the volume's policy allows) is cut off, sent again (queued behind
// itself), and the call fails with BACKEND_UNAVAILABLE "no reachable primary" although the primary
// answers everything and stores the write. The same write made on the primary just waits for the
// throttle.

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { allInSync, diskCluster } from './support/disk-cluster.js'
import { until } from './support/wait.js'

const { cluster } = diskCluster('galleon-h46-fwd-')
const KiB = 1024

it('a write forwarded to the primary of a throttled volume waits for the throttle as it would on the primary', async () => {
  const { nodes } = await cluster(2)
  const [n1, n2] = nodes as [typeof nodes[0], typeof nodes[0]]
  await n1.g.createVolume({ name: 'slow', sizeBytes: 4 * 1024 * KiB, replicas: 2 })
  await until('both copies are in sync', async () => await allInSync(n1.g, 'slow', 2))
  // 50 kB/s of writes, no burst. An operation larger than the bucket passes once it is full and
  // leaves it in debt: after 900 KiB written on the primary, the next write waits about 18 s
  // (longer than the forwarder's former 15 s per attempt, well within the primary's own limits:
  // none for the throttle, 60 s for the copies).
  await n1.g.setQoSPolicy('slow', { limits: { writeThroughputMBps: 0.05 } })
  await n1.g.write('slow', 4 * KiB, new Uint8Array(900 * KiB).fill(0x11), WriteConcern.WriteAcknowledged)
  const data = new Uint8Array(4 * KiB).fill(0x5a)
  const startedAt = Date.now()
  const outcome = await n2.g.write('slow', 0, data, WriteConcern.WriteAcknowledged).then(() => 'stored', (err: { code?: string, message?: string }) => `${err.code}: ${err.message}`)
  const seconds = ((Date.now() - startedAt) / 1000).toFixed(1)
  assert.equal(outcome, 'stored', `the forwarded write failed after ${seconds} s while the primary was throttling it`)
  assert.ok((await n1.g.read('slow', 0, 4 * KiB)).every((byte) => byte === 0x5a))
  // The primary ran the forwarded write once (the volume's first write was made there).
  const writes = (await n1.g.getVolumeMetrics('slow')).writeOps
  assert.equal(writes, 2, `the primary counted ${writes} writes: the forwarded one was sent again while it waited`)
})
