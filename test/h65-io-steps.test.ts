// h65: I/O under a QoS limit, and the volume's metrics, when the wall clock steps back a day and
// forward a week (a child with a stepped Date, test/support/h65-clock-preload.ts). Token buckets
// and metric windows run on the monotonic clock: a step back must not stall I/O for its length,
// nor a step forward make rates negative, zero or endless.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startStepped } from './support/h65-child.js'

test('writes through a QoS limit go on, and rates stay sane, across wall-clock steps back a day and forward a week', { timeout: 60_000 }, async () => {
  const child = startStepped('test/support/h65-io-child.ts', [])
  try {
    // A bucket refilled by the wall clock would wait a day after the step back: the child would not finish.
    const out = await child.result<{ writeOps?: number, iops?: number, latencyP99Ms?: number, error?: string }>(45_000)
    assert.equal(out.error, undefined, out.error)
    assert.equal(out.writeOps, 60)
    assert.ok(Number.isFinite(out.iops) && (out.iops as number) > 0, `iops over the window is a positive rate, got ${out.iops}`)
    assert.ok(Number.isFinite(out.latencyP99Ms) && (out.latencyP99Ms as number) >= 0, `p99 latency is a duration, got ${out.latencyP99Ms}`)
  } finally {
    await child.kill()
  }
})
