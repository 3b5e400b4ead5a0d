// h65: cluster and replication timing when the wall clock steps (NTP, an operator, a resumed VM).
// Each case runs an in-process cluster in a child whose Date is stepped
// (test/support/h65-clock-preload.ts); timers and performance.now() are real. All three fail before the fixes proposed in h65
// (src/replication/primary.ts, src/replication/failover.ts, src/cluster/manager.ts).

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startStepped } from './support/h65-child.js'

test('a WriteReplicated write whose copy answers late succeeds although the wall clock stepped forward an hour meanwhile (the 60 s commit wait is a duration)', { timeout: 60_000 }, async () => {
  const child = startStepped('test/support/h65-replication-child.ts', ['commit-forward'])
  try {
    const out = await child.result<{ result?: string, message?: string, error?: string }>(45_000)
    assert.equal(out.error, undefined, out.error)
    assert.deepEqual(out, { result: 'ok' }, 'the write was refused as not replicated within 60 s, 1 s after the clock stepped, while its copy acknowledged it 2 s after it was sent')
  } finally {
    await child.kill()
  }
})

test('a copy whose node was away for a few seconds is not given up when the wall clock steps forward an hour (the replacement delay is a duration)', { timeout: 60_000 }, async () => {
  const child = startStepped('test/support/h65-replication-child.ts', ['replace-forward'])
  try {
    const out = await child.result<{ removed?: unknown[], error?: string }>(45_000)
    assert.equal(out.error, undefined, out.error)
    assert.deepEqual(out.removed, [], 'the leader gave up the copy of a node unhealthy for seconds (replacement delay 60 s) after the clock stepped forward: a full new copy for nothing')
  } finally {
    await child.kill()
  }
})

test('a node that died restarts under its id after the wall clock stepped back an hour (its claim on the id is not taken as an hour younger)', { timeout: 60_000 }, async () => {
  const child = startStepped('test/support/h65-replication-child.ts', ['claim-back'])
  try {
    const out = await child.result<{ opened?: boolean, code?: string, message?: string, error?: string }>(45_000)
    assert.equal(out.error, undefined, out.error)
    assert.deepEqual(out, { opened: true }, 'the restarted node was refused its own id because the dead instance\'s claim carries a wall-clock time that now lies in the future')
  } finally {
    await child.kill()
  }
})
