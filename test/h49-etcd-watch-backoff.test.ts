// h49: watches after etcd was away for a while (killed, then started again on the same data and
// port). etcd3 reopened a broken watch stream after a pause that doubled, with jitter, up to 30 s
// while etcd was away: after an outage of some seconds, watches stayed dead for many seconds with
// etcd answering again (a deposed primary not told of the failover, member changes unseen).

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { etcdSkipReason } from './support/etcd.js'
import { startRestartableEtcd } from './support/h49-etcd.js'

const skip = etcdSkipReason()
/** Watching handles: each has its own watch stream and pause, so one lucky pause does not hide the others. */
const HANDLES = 4
/** The outage: long enough for etcd3's default pause to grow past the bound below. */
const OUTAGE_MS = 12_000
/**
 * A bound for liveness, not a speed claim: a node must learn of a change within a lease TTL
 * (3 s in these tests) of etcd answering again, or a failover outruns what the nodes know.
 */
const WITHIN_MS = 3000

test('watches resume within a lease TTL of etcd answering again after an outage of seconds', { skip, timeout: 60_000 }, async () => {
  const etcd = await startRestartableEtcd()
  const handles: EtcdCoordinator[] = []
  const reportedAt: Array<number | undefined> = []
  try {
    for (let i = 0; i < HANDLES; i++) {
      const handle = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint], prefix: '/h49-backoff/', requestTimeoutMs: 1000 })
      handles.push(handle)
      reportedAt.push(undefined)
      handle.watch('k/', (event) => { if (event.key === 'k/after') reportedAt[i] = Date.now() })
    }
    const writer = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint], prefix: '/h49-backoff/' })
    handles.push(writer)
    await writer.put('k/before', '1')
    await etcd.kill()
    await sleep(OUTAGE_MS) // the outage itself, not a wait for something to happen
    await etcd.restart()
    await writer.put('k/after', '1')
    const written = Date.now()
    while (reportedAt.some((at) => at === undefined) && Date.now() - written < 40_000) await sleep(20)
    const delays = reportedAt.map((at) => (at === undefined ? Infinity : at - written))
    assert.ok(delays.every((ms) => ms <= WITHIN_MS), `the watches reported the change ${delays.join(', ')} ms after it was written`)
  } finally {
    await Promise.allSettled(handles.map(async (handle) => { await handle.close() }))
    await etcd.stop()
  }
})
