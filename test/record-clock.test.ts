// The primary's record clock (src/replication/record-clock.ts): the age of a change, read from
// coarse samples, never understates and overstates by less than the sampling interval; samples
// every copy acknowledged are dropped; memory stays bounded while a copy is away.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { RecordClock } from '../src/replication/record-clock.js'

describe('RecordClock', () => {
  it('reads a change\'s age from samples: never less than the real age, at most 10 ms more', () => {
    let now = 1000
    const clock = new RecordClock(() => now)
    assert.equal(clock.ageSeconds(1), 0, 'nothing recorded yet')
    const recordedAt = new Map<number, number>()
    // Changes every 3 ms for a while, then a pause, then more.
    for (let seq = 1; seq <= 100; seq++) {
      if (seq === 60) now += 5000
      recordedAt.set(seq, now)
      clock.recorded(seq)
      now += 3
    }
    now += 1234
    for (const [seq, at] of recordedAt) {
      const real = (now - at) / 1000
      const age = clock.ageSeconds(seq)
      assert.ok(age >= real && age - real < 0.010, `change ${seq}: age ${age} s, real ${real} s`)
    }
    assert.ok(clock.samples < 100, `sampled, not one per change (${clock.samples})`)
  })

  it('forgets samples once every copy acknowledged past them, keeping what the next change needs', () => {
    let now = 0
    const clock = new RecordClock(() => now)
    for (let seq = 1; seq <= 50; seq++) { clock.recorded(seq); now += 20 }
    assert.equal(clock.samples, 50)
    clock.forgetBefore(31)
    assert.equal(clock.samples, 20, 'samples for changes 31..50 stay')
    assert.equal(clock.ageSeconds(31), (now - 30 * 20) / 1000)
    clock.forgetBefore(1000)
    assert.equal(clock.samples, 1, 'the last sample stays for the changes after it')
  })

  it('keeps at most 4096 samples while a copy stays away; ages stay ordered, never understate, and overstate by less than twice the resolution', () => {
    let now = 0
    const clock = new RecordClock(() => now)
    const recordedAt = new Map<number, number>()
    const count = 20_000
    for (let seq = 1; seq <= count; seq++) {
      recordedAt.set(seq, now)
      clock.recorded(seq)
      now += 11
    }
    assert.ok(clock.samples <= 4096, `${clock.samples} samples`)
    assert.ok(clock.resolutionMs > 10, 'the resolution grew')
    let previous = Infinity
    for (const seq of [1, 2, 1000, 10_000, 15_555, count]) {
      const real = (now - (recordedAt.get(seq) as number)) / 1000
      const age = clock.ageSeconds(seq)
      assert.ok(age >= real && age - real < 2 * clock.resolutionMs / 1000, `change ${seq}: age ${age} s, real ${real} s, resolution ${clock.resolutionMs} ms`)
      assert.ok(age <= previous, 'older changes are older')
      previous = age
    }
    // Once every copy caught up, the resolution is back to 10 ms.
    clock.forgetBefore(count)
    assert.equal(clock.resolutionMs, 10)
  })

  it('a change after an idle gap keeps its own time through thinning (another copy behind it reads a right lag)', () => {
    let now = 0
    const clock = new RecordClock(() => now)
    let seq = 0
    // One copy stays away from the start, pinning every sample; writes every 10 ms.
    for (let i = 0; i < 4095; i++) { clock.recorded(++seq); now += 10 }
    // An hour without writes, then a change that a second copy misses, then enough to thin.
    now += 3_600_000
    const missed = ++seq
    const missedAt = now
    clock.recorded(missed)
    for (let i = 0; i < 10; i++) { now += 10; clock.recorded(++seq) }
    now += 50
    clock.forgetBefore(1)
    const real = (now - missedAt) / 1000
    const age = clock.ageSeconds(missed)
    assert.ok(age >= real && age - real < 2 * clock.resolutionMs / 1000, `age ${age} s, real ${real} s (not the hour before it)`)
  })

  it('a copy added after samples were forgotten (it has nothing yet) reads the age of the first change', () => {
    let now = 0
    const clock = new RecordClock(() => now)
    for (let seq = 1; seq <= 1000; seq++) {
      clock.recorded(seq)
      now += 20
      clock.forgetBefore(seq) // the only copy acknowledges as the writes go
    }
    assert.ok(clock.samples <= 2)
    now += 5000
    assert.equal(clock.ageSeconds(1), now / 1000, 'the first change was made at time 0')
  })
})
