// Review r22 of h59's metrics change (at most 60 time buckets, coarser ones for long windows):
// rates and percentiles of windows of 10, 60, 61, 90 and 3600 s against a manual clock.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MetricsRecorder } from '../src/metrics/recorder.js'

/** A recorder with a manual clock, fed `opsPerSecond` 4 KiB writes of `latencyMs` each, evenly, until `untilMs`. */
function steady (windowSeconds: number, opsPerSecond: number, untilMs: number, latencyMs = 2): { recorder: MetricsRecorder, clock: { t: number } } {
  const clock = { t: 1_000_000 }
  const origin = clock.t
  const recorder = new MetricsRecorder({ windowSeconds, now: () => clock.t })
  const step = 1000 / opsPerSecond
  for (let at = origin + step; at <= origin + untilMs + 1e-9; at += step) {
    clock.t = at - latencyMs
    const started = recorder.begin()
    clock.t = at
    recorder.end('write', 4096, started, true)
  }
  clock.t = origin + untilMs
  return { recorder, clock }
}

describe('review r22: metrics windows with at most 60 buckets', () => {
  for (const windowSeconds of [10, 60, 61, 90, 3600]) {
    it(`a ${windowSeconds} s window: the rate of a steady load and its percentiles, once the window is full`, () => {
      const { recorder } = steady(windowSeconds, 20, (windowSeconds * 2 + 7.3) * 1000)
      const m = recorder.snapshot()
      // The window slides by whole buckets: 1 s up to 60 s, a sixtieth of longer windows.
      const bucketSeconds = Math.max(1, windowSeconds / 60)
      assert.ok(m.windowSeconds > windowSeconds - bucketSeconds - 1e-6 && m.windowSeconds <= windowSeconds + 1e-6, `window ${m.windowSeconds} s for ${windowSeconds}`)
      assert.ok(Math.abs(m.writeIops - 20) <= 20 * 0.02, `steady 20 writes/s read as ${m.writeIops}`)
      assert.ok(Math.abs(m.writeThroughputMBps - 20 * 4096 / 1e6) <= 20 * 4096 / 1e6 * 0.02)
      assert.equal(m.latencyP50Ms, 2)
      assert.equal(m.latencyP99Ms, 2)
      assert.equal(m.latencyMs, 2)
    })

    it(`a ${windowSeconds} s window: the rate of a steady load 5 s after the recorder was made (the window is shorter, not the rate)`, () => {
      // README: the window is "shorter during the first seconds after the volume was opened or created".
      const { recorder } = steady(windowSeconds, 100, 5000)
      const m = recorder.snapshot()
      assert.ok(Math.abs(m.writeIops - 100) <= 2, `100 writes/s for the first 5 s read as ${m.writeIops.toFixed(1)} writes/s over a window of ${m.windowSeconds} s`)
      assert.ok(Math.abs(m.windowSeconds - 5) < 1e-6, `window ${m.windowSeconds} s after 5 s`)
    })
  }

  it('a 3600 s window: a burst an hour ago has left it, a burst 30 minutes ago is still in it', () => {
    const clock = { t: 0 }
    const recorder = new MetricsRecorder({ windowSeconds: 3600, now: () => clock.t })
    const burst = (at: number, count: number, latencyMs: number): void => {
      for (let i = 0; i < count; i++) { clock.t = at; const s = recorder.begin(); clock.t = at + latencyMs; recorder.end('read', 4096, s, true) }
    }
    burst(10_000, 100, 1)
    burst(3_700_000, 300, 8)
    clock.t = 3_700_000 + 1_800_000
    let m = recorder.snapshot()
    assert.equal(m.readOps, 400)
    assert.ok(Math.abs(m.readIops * m.windowSeconds - 300) < 1e-6, `the window holds ${m.readIops * m.windowSeconds} reads, not the 300 of 30 minutes ago`)
    assert.equal(m.latencyP50Ms, 8)
    clock.t = 3_700_000 + 3_700_000
    m = recorder.snapshot()
    assert.equal(m.readIops, 0)
    assert.equal(m.latencyP99Ms, 0)
  })
})
