// Overhead of the QoS stage on the I/O path, measured against the same volume without a policy in
// the same run: 4 KiB random writeBlock (WriteAcknowledged) and readBlock at 32 in flight on the
// file backend, rounds alternating between
//   - the volume with no QoS policy (the baseline),
//   - the same volume with a policy limiting IOPS and throughput far above what the disk does (it
//     never throttles, but the limiter's buckets are consulted on every call; target >= 0.95x),
//   - on an instance whose dispatcher runs (a declared capacity far above the disk's and a
//     guaranteed volume): every call also passes the dispatcher (reported for information).
// Run with `node --import tsx bench/qos.ts`; BENCH_QOS_MS sets the time per round (default 1500),
// BENCH_QOS_ROUNDS the rounds per case (default 6). Saved to bench/results/qos.json.

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern } from '../src/index.js'

const ROUND_MS = Number(process.env.BENCH_QOS_MS ?? 1500)
const ROUNDS = Number(process.env.BENCH_QOS_ROUNDS ?? 6)
const BLOCK = 4096
const DEPTH = 32
const BLOCKS = 16384
const RESULTS_FILE = fileURLToPath(new URL('./results/qos.json', import.meta.url))
const NEVER_THROTTLES = { limits: { iops: 100_000_000, throughputMBps: 1_000_000 } }

/** Operations per second of `op` at DEPTH in flight for `ms`. */
async function rate (ms: number, op: (block: number) => Promise<unknown>): Promise<number> {
  const deadline = performance.now() + ms
  const started = performance.now()
  let done = 0
  await Promise.all(Array.from({ length: DEPTH }, async () => {
    while (performance.now() < deadline) {
      await op(Math.floor(Math.random() * BLOCKS))
      done++
    }
  }))
  return done / ((performance.now() - started) / 1000)
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number

interface Row { case: string, value: number, baseline: number, unit: string, ratio: number, target?: number }
const rows: Row[] = []
const root = await mkdtemp(join(tmpdir(), 'galleon-bench-qos-'))
try {
  const plainNode = await GalleonFS.open({ storagePath: join(root, 'limiter') })
  const dispatchNode = await GalleonFS.open({ storagePath: join(root, 'dispatcher'), qos: { capacityIops: 100_000_000, maxInFlight: 1024 } })
  const data = new Uint8Array(BLOCK).fill(5)
  await plainNode.createVolume({ name: 'vol', sizeBytes: BLOCKS * BLOCK })
  await dispatchNode.createVolume({ name: 'guaranteed', sizeBytes: BLOCKS * BLOCK, qos: { ...NEVER_THROTTLES, guarantees: { iops: 1000 } } })
  // Written once, so reads find data.
  for (const [g, name] of [[plainNode, 'vol'], [dispatchNode, 'guaranteed']] as const) {
    for (let at = 0; at < BLOCKS; at += 256) await g.write(name, at * BLOCK, new Uint8Array(256 * BLOCK).fill(3))
  }
  // The first two cases are one volume, its policy set or cleared (online) before each round.
  const cases: Array<[string, GalleonFS, string]> = [['none', plainNode, 'vol'], ['limited', plainNode, 'vol'], ['guaranteed', dispatchNode, 'guaranteed']]
  for (const kind of ['write', 'read'] as const) {
    const samples = new Map<string, number[]>(cases.map(([label]) => [label, []]))
    for (const [, g, name] of cases) await rate(300, async (b) => kind === 'write' ? await g.writeBlock(name, b, data, WriteConcern.WriteAcknowledged) : await g.readBlock(name, b))
    for (let round = 0; round < ROUNDS; round++) {
      // Each round starts with another case, so no case always runs first (segment rolls, page cache).
      for (const [label, g, name] of [...cases.slice(round % cases.length), ...cases.slice(0, round % cases.length)]) {
        if (label !== 'guaranteed') await plainNode.setQoSPolicy('vol', label === 'limited' ? NEVER_THROTTLES : null)
        samples.get(label)?.push(await rate(ROUND_MS, async (b) => kind === 'write' ? await g.writeBlock(name, b, data, WriteConcern.WriteAcknowledged) : await g.readBlock(name, b)))
      }
    }
    const baseline = median(samples.get('none') as number[])
    const limited = median(samples.get('limited') as number[])
    const guaranteed = median(samples.get('guaranteed') as number[])
    const what = kind === 'write' ? 'writeBlock (WriteAcknowledged)' : 'readBlock'
    rows.push({ case: `4 KiB random ${what}, ${DEPTH} in flight: policy that never throttles vs none`, value: limited, baseline, unit: 'IOPS', ratio: limited / baseline, target: 0.95 })
    rows.push({ case: `4 KiB random ${what}, ${DEPTH} in flight: through the dispatcher (guarantee) vs none`, value: guaranteed, baseline, unit: 'IOPS', ratio: guaranteed / baseline })
  }
  await plainNode.close()
  await dispatchNode.close()
} finally {
  await rm(root, { recursive: true, force: true })
}

console.log(`QoS overhead on the file backend (Node ${process.version}; medians of ${ROUNDS} alternating rounds of ${ROUND_MS} ms)`)
for (const row of rows) {
  console.log(`${row.case.padEnd(96)} ${row.value.toFixed(0).padStart(8)} vs ${row.baseline.toFixed(0).padStart(8)} ${row.unit}  ratio ${row.ratio.toFixed(3)}${row.target === undefined ? '' : ` (target >= ${row.target})`}`)
}
await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, roundMs: ROUND_MS, rounds: ROUNDS, rows }, null, 2) + '\n')
