// h82: under a limit reads and writes share (throughput_mbps), a large operation (above the
// bucket's 50 ms depth) is let in only once the bucket is full; small operations of the other lane
// kept draining it, so 1 MiB writes got 1 operation in 5 s next to 4 KiB reads. Waiting for a
// shared limit, the lanes now go in arrival order; an operation held by its own lane's limit
// (write_throughput_mbps) still never holds the other lane. Manual clock throughout.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseQoSPolicy } from '../src/qos/policy.js'
import { QoSScheduler } from '../src/qos/scheduler.js'
import type { Kind } from '../src/qos/volume-state.js'
import { ManualClock } from './support/manual-clock.js'

const KiB4 = 4096
const MiB = 1024 * 1024

/** Keeps `outstanding` operations of `kind` and `bytes` waiting: each admission issues the next one (a closed loop). */
function saturate (s: QoSScheduler, kind: Kind, bytes: number, outstanding: number, stop: () => boolean): { count: number } {
  const counter = { count: 0 }
  const next = (): void => {
    if (stop()) return
    const admitted = s.admit('v', kind, bytes)
    const done = (): void => { if (!stop()) { counter.count++; next() } }
    if (typeof admitted === 'boolean') queueMicrotask(done)
    else void admitted.then(done)
  }
  for (let i = 0; i < outstanding; i++) next()
  return counter
}

/** Issues one operation; records its admission (clock time and a label) in `log`. */
function one (s: QoSScheduler, clock: ManualClock, kind: Kind, bytes: number, label: string, log: Array<[string, number]>): void {
  const admitted = s.admit('v', kind, bytes)
  if (typeof admitted === 'boolean') log.push([label, clock.now()])
  else void admitted.then(() => { log.push([label, clock.now()]) })
}

describe('h82: large and small operations under a shared throughput limit', () => {
  it('1 MiB writes next to 4 KiB reads under throughput_mbps: both progress, served in arrival order', async () => {
    // 4 MB/s shared (depth 200 000 bytes); 16 reads of 4 KiB and 2 writes of 1 MiB outstanding, each
    // admission issuing the next of its kind (arriving at the back). In arrival order every
    // outstanding operation goes once per round: 16 reads and 2 writes, so 8 reads per write, and
    // the bytes split as the demand is: 2 MiB of writes to 64 KiB of reads a round.
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { throughput_mbps: 4 } }), 'volume')
    let stopped = false
    const reads = saturate(s, 'read', KiB4, 16, () => stopped)
    const writes = saturate(s, 'write', MiB, 2, () => stopped)
    await clock.advance(5000)
    stopped = true
    s.close()
    const bytes = reads.count * KiB4 + writes.count * MiB
    // The first round's 16 reads and 2 writes are counted too; at most the depth plus 5 s of rate,
    // and the last large write's debt (one write) on top.
    assert.ok(bytes <= 200_000 + 4e6 * 5 + MiB, `${bytes} bytes in 5 s at 4 MB/s`)
    assert.ok(bytes >= 4e6 * 5 - 2 * MiB, `${bytes} bytes in 5 s at 4 MB/s: the limit went unused`)
    assert.ok(writes.count >= 15, `writes: ${writes.count} of 1 MiB in 5 s (reads: ${reads.count})`)
    // 8 reads per write, within a round either way.
    assert.ok(Math.abs(reads.count - 8 * writes.count) <= 16, `reads ${reads.count}, writes ${writes.count}: not 8 reads per write`)
  })

  it('a 1 MiB write that arrived first goes before 4 KiB reads that arrived after it', async () => {
    // 4 MB/s shared, depth 200 000: at 0 ms 50 reads (48 go at once, 196 608 bytes); at 1 ms a
    // 1 MiB write; at 2 ms 100 more reads. Arrival order: the 2 waiting reads, the write, the 100.
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { throughput_mbps: 4 } }), 'volume')
    const log: Array<[string, number]> = []
    for (let i = 0; i < 50; i++) one(s, clock, 'read', KiB4, 'early read', log)
    await clock.advance(1)
    one(s, clock, 'write', MiB, 'write', log)
    await clock.advance(1)
    for (let i = 0; i < 100; i++) one(s, clock, 'read', KiB4, 'late read', log)
    await clock.advance(2000)
    s.close()
    assert.equal(log.length, 151)
    const order = log.map(([label]) => label)
    assert.deepEqual(order.slice(0, 51), [...Array(50).fill('early read'), 'write'], `admitted in this order: ${order.slice(0, 60).join(', ')}`)
    // The write waits only for the bucket to fill: 200 000 bytes at 4 MB/s after the early reads drained it.
    const writeAt = (log[50] as [string, number])[1]
    assert.ok(writeAt <= 2 + 50 + 2, `the write went at ${writeAt} ms`)
    // Then its debt (1 048 576 - 200 000 bytes) holds the late reads, which follow at the rate.
    const firstLate = (log[51] as [string, number])[1]
    assert.ok(firstLate >= writeAt + (MiB - 200_000) / 4e6 * 1000, `first late read at ${firstLate} ms, the write at ${writeAt} ms`)
  })

  it('a write held by its own write_throughput_mbps limit does not hold reads', async () => {
    // throughput 4 MB/s shared, writes 1 MB/s of it: a 1 MiB write leaves the write bucket
    // (depth 50 000) about 1 s in debt; reads meanwhile go at the shared rate.
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { throughput_mbps: 4, write_throughput_mbps: 1 } }), 'volume')
    let stopped = false
    const writes = saturate(s, 'write', MiB, 2, () => stopped)
    await clock.advance(1)
    const reads = saturate(s, 'read', KiB4, 16, () => stopped)
    await clock.advance(5000)
    stopped = true
    s.close()
    // Writes: their own limit's rate, 1 MB/s: the depth plus 5 s of it.
    assert.ok(writes.count * MiB <= 50_000 + 1e6 * 5 + MiB, `writes: ${writes.count} of 1 MiB in 5 s at 1 MB/s`)
    assert.ok(writes.count >= 3, `writes: ${writes.count} of 1 MiB in 5 s at 1 MB/s`)
    // Reads get the shared rate less what the writes took, less at most one shared depth-fill
    // (50 ms) per write: a write that its own limit lets in waits for the shared bucket to fill.
    const readBytes = reads.count * KiB4
    const floor = 4e6 * 5 - (writes.count + 1) * MiB - (writes.count + 1) * 200_000 - 200_000
    assert.ok(readBytes >= floor, `reads: ${readBytes} bytes in 5 s, expected at least ${floor}`)
    assert.ok(readBytes + writes.count * MiB <= 200_000 + 4e6 * 5.001 + MiB, `${readBytes + writes.count * MiB} bytes in 5 s at 4 MB/s`)
  })

  it('a read arriving while a write is held by its own write limit goes at once (no promise)', async () => {
    const clock = new ManualClock()
    const s = new QoSScheduler({ clock })
    s.setPolicy('v', 'v', parseQoSPolicy({ limits: { throughput_mbps: 40, write_throughput_mbps: 1 } }), 'volume')
    assert.equal(s.admit('v', 'write', MiB), false)
    const held = s.admit('v', 'write', MiB)
    assert.ok(held instanceof Promise, 'the second write waits for the write limit')
    await clock.advance(10)
    // The shared bucket (depth 2 000 000) has room: the write waits only for its own limit.
    assert.equal(s.admit('v', 'read', KiB4), false, 'a read is not held behind the write')
    s.close()
    assert.equal(await held, false)
  })
})
