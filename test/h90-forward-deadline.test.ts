// h90: the failover wait (ClusterOptions.failoverWaitMs) bounds a forwarded call as a whole. An
// attempt sent to the primary whose answer never comes (a connection cut off without a reset, or a
// primary that hangs) was waited for up to the 75 s an answer may take, long past the caller's
// wait. Now it is given up on when the wait ends, and the caller told, at that moment, that the
// call may have taken effect (it reached the primary). The memory network's silent drop loses the
// primary's answer without a reset, as a cut-off TCP connection would.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { observed } from './support/observed.js'
import { until, within } from './support/wait.js'
import { replicatedVolume } from './support/control-call-cluster.js'
import { block, diskCluster, type DiskNode } from './support/disk-cluster.js'

const WAIT_MS = 2000
const kit = diskCluster('galleon-h90-deadline-', { failoverWaitMs: WAIT_MS })

describe('h90: a forwarded call whose answer never comes', () => {
  it('fails when its failover wait ends (not when the 75 s an answer may take are up), saying it may have taken effect', { timeout: 120_000 }, async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await replicatedVolume(nodes, 2)
    let lost = 0
    network.drop((m) => {
      const drop = m.kind === 'repl:io' && m.type === 'reply' && m.to === 'n2'
      if (drop) lost++
      return drop
    }, { silent: true })
    const started = performance.now()
    const call = observed(n2.g.writeBlock('v', 3, block(3), WriteConcern.WriteAcknowledged))
    // 15 times the wait: before, the call waited the 75 s of one answer.
    const outcome = await within('the forwarded write fails at its failover wait', call.then(() => 'resolved', (err: { code?: string, message?: string }) => err), 15 * WAIT_MS)
    const tookMs = performance.now() - started
    network.drop(0)
    assert.notEqual(outcome, 'resolved', 'its answer never came')
    const err = outcome as { code?: string, message?: string }
    assert.equal(err.code, 'BACKEND_UNAVAILABLE', String(err.message))
    assert.match(String(err.message), /primary n1 did not answer within the failover wait \(2000 ms\)/)
    assert.match(String(err.message), /an earlier attempt of this call reached node n1, which did not answer it: it may have taken effect there/)
    assert.ok(tookMs >= WAIT_MS, `it failed after ${Math.round(tookMs)} ms, before its wait`)
    assert.ok(lost > 0, 'the primary answered, and the answer was lost')
    // It did take effect there: the error said it may have.
    await until('the primary holds the write', async () => (await n1.g.readBlock('v', 3)).every((b, i) => b === block(3)[i]))
  })
})
