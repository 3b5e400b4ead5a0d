// h65: the etcd coordinator's lease deadline when the wall clock steps inside a keepalive's round
// trip (NTP, an operator, a resumed VM). The node runs in a child process whose Date is stepped
// (test/support/h65-clock-preload.ts); a relay runs the step after the keepalive left the node and
// before etcd answers it. A node must count its lease lost about a TTL after the last keepalive
// etcd confirmed, whatever the wall clock did: a step back must not keep a node whose lease etcd
// already expired believing it holds it (two primaries), a step forward must not end a live lease.
// Both fail before the fix to backends/etcd/index.ts proposed in h65 (the deadline on performance.now()).

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { keepaliveProxy } from './support/h65-keepalive-proxy.js'
import { startStepped } from './support/h65-child.js'
import { until } from './support/wait.js'

const skip = etcdSkipReason()
const TTL_MS = 2000
const HOUR = 3_600_000
let etcd: EtcdServer | undefined
before(async () => { if (skip === undefined) etcd = await startEtcd() })
after(async () => { await etcd?.stop() })

/** Whether etcd (read directly) lists node n1 under `prefix` as a healthy member. */
async function healthyInEtcd (prefix: string): Promise<boolean> {
  const observer = await EtcdCoordinator.connect({ endpoints: [(etcd as EtcdServer).endpoint], prefix })
  try {
    return (await observer.members()).some((m) => m.id === 'n1' && m.healthy)
  } finally {
    await observer.close()
  }
}

test('clock stepped back an hour during a keepalive, then cut off from etcd: the node counts its lease lost about a TTL later, as etcd does, not an hour later', { skip, timeout: 60_000 }, async () => {
  const proxy = await keepaliveProxy((etcd as EtcdServer).endpoint)
  const child = startStepped('test/support/h65-lease-child.ts', [proxy.endpoint, String(TTL_MS), '/h65-back/'])
  try {
    await child.next('the node joined', (m) => m?.joined === true, 20_000)
    // One step inside a keepalive round trip of both leases of the session (membership and
    // record), and the cut right after their answers: those are the last keepalives etcd confirms.
    await proxy.stepInsideKeepalives(2, TTL_MS / 4, async () => { await child.step(-HOUR) })
    await sleep(100)
    proxy.stall()
    const cutAt = performance.now()
    await until('etcd expired the node\'s lease', async () => !(await healthyInEtcd('/h65-back/')), 20_000)
    const etcdExpiredAfter = performance.now() - cutAt
    // etcd ended the lease; the node must know within a TTL or so too (it sends no more keepalives
    // that etcd answers, so its deadline is all that ends the lease on its side).
    await child.next('the node counts its lease lost', (m) => m?.lease === false, 3 * TTL_MS + 2000)
      .catch((err: Error) => { throw new Error(`etcd expired the lease ${Math.round(etcdExpiredAfter)} ms after the cut, but the node still holds it (a deadline an hour out, from the stepped wall clock): ${err.message}`) })
  } finally {
    await child.kill()
    await proxy.close()
  }
})

test('clock stepped forward an hour during a keepalive: the live lease is kept (no loss, no rejoin)', { skip, timeout: 60_000 }, async () => {
  const proxy = await keepaliveProxy((etcd as EtcdServer).endpoint)
  const child = startStepped('test/support/h65-lease-child.ts', [proxy.endpoint, String(TTL_MS), '/h65-forward/'])
  try {
    await child.next('the node joined', (m) => m?.joined === true, 20_000)
    await proxy.stepInsideKeepalives(1, TTL_MS / 4, async () => { await child.step(HOUR) })
    // Several keepalive rounds after the step: the lease was never lost, etcd lists the node all along.
    for (let round = 0; round < 6; round++) {
      await sleep(TTL_MS / 2)
      assert.ok(await healthyInEtcd('/h65-forward/'), 'etcd lists the node as healthy')
    }
    assert.deepEqual(child.messages.filter((m) => (m as { lease?: boolean })?.lease !== undefined), [],
      'the node took its live lease for lost after the clock stepped forward (and left its leaderships)')
  } finally {
    await child.kill()
    await proxy.close()
  }
})
