// End-to-end benchmark of replication between two nodes on loopback (TCP transport, each node with
// its own on-disk storage; coordination in process), against baselines measured in the same run:
//   - WriteReplicated 4 KiB random writes at 32 in flight on a 2-copy volume, vs WriteDurable on
//     a 1-copy volume of the same node (target >= 0.5x);
//   - resync of a copy that was away while 1% of the blocks changed (delta), vs a full copy of the
//     same volume to a new, empty copy.
// Where etcd is installed (as CI installs it), the second node runs in its own process
// (bench/replication-peer.ts) and the two coordinate through a throwaway etcd, as real nodes do;
// otherwise both run in this process on an in-process coordinator (BENCH_REPLICATION_PEER=inline
// forces that). Run with `node --import tsx bench/replication.ts`; BENCH_REPLICATION_MS sets the
// time per write case (default 3000, in 5 alternating rounds; BENCH_DEBUG=1 prints each round),
// BENCH_REPLICATION_MB the resync volume's size (default 256). It also prints what the replicated
// writes waited for: the stream's batches to the copy, their size and mean round trip (the link's
// batchesAcknowledged and ackWaitSeconds). BENCH_PEER_NODE_ARGS passes node options to the second
// node's process (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile it).
// Saved to bench/results/replication.json.

import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster } from '../backends/memory/index.js'
import { TcpTransport } from '../backends/tcp/index.js'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { findEtcd, startEtcd, type EtcdServer } from '../test/support/etcd.js'

const TIME_MS = Number(process.env.BENCH_REPLICATION_MS ?? 3000)
const RESYNC_MB = Number(process.env.BENCH_REPLICATION_MB ?? 256)
const BLOCK = 4096
const DEPTH = 32
const SECRET = 'bench-replication-secret'
const RESULTS_FILE = fileURLToPath(new URL('./results/replication.json', import.meta.url))

const root = await mkdtemp(join(tmpdir(), 'galleon-bench-repl-'))
const coordinators = new MemoryCoordinatorCluster()
const separate = process.env.BENCH_REPLICATION_PEER !== 'inline' && findEtcd() !== undefined
const etcd: EtcdServer | undefined = separate ? await startEtcd() : undefined

async function node (id: string): Promise<GalleonFS> {
  const coordinator = etcd === undefined ? coordinators.coordinator() : await EtcdCoordinator.connect({ endpoints: [etcd.endpoint] })
  return await GalleonFS.open({
    storagePath: join(root, id),
    cluster: { nodeId: id, transport: new TcpTransport({ nodeId: id, clusterSecret: SECRET }), coordinator, leaseTtlMs: 3000 }
  })
}

/**
 * The second node: a child process when etcd is there, else an instance in this process.
 * `openedAt`: when it began to open (after the child's start-up), the start of a resync's clock.
 */
interface Peer { close: () => Promise<void>, openedAt: number }
async function peer (id: string): Promise<Peer> {
  if (etcd === undefined) {
    const openedAt = performance.now()
    const g = await node(id)
    return { close: async () => { await g.close() }, openedAt }
  }
  const child: ChildProcess = spawn(process.execPath, [...(process.env.BENCH_PEER_NODE_ARGS ?? '').split(' ').filter(Boolean), '--import', 'tsx', fileURLToPath(new URL('./replication-peer.ts', import.meta.url)), id, join(root, id), etcd.endpoint, SECRET], { stdio: ['ignore', 'pipe', 'inherit'] })
  let output = ''
  let openedAt = 0
  child.stdout?.on('data', (chunk: Buffer) => {
    output += chunk.toString()
    if (openedAt === 0 && output.includes('opening')) openedAt = performance.now()
  })
  await until(async () => {
    if (child.exitCode !== null) throw new Error(`the peer process exited with code ${child.exitCode}`)
    return output.includes('ready')
  }, 60_000)
  return {
    openedAt,
    close: async () => {
      if (child.exitCode !== null) return
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  }
}

async function until (check: () => Promise<boolean>, timeoutMs = 600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** 4 KiB random writes at DEPTH in flight for `ms` (after a short warm-up); resolves to writes/s. */
async function randomWrites (g: GalleonFS, volume: string, blocks: number, concern: WriteConcern, ms: number): Promise<number> {
  const data = new Uint8Array(BLOCK).fill(7)
  const run = async (ms: number): Promise<number> => {
    const deadline = performance.now() + ms
    let done = 0
    await Promise.all(Array.from({ length: DEPTH }, async () => {
      while (performance.now() < deadline) {
        await g.writeBlock(volume, Math.floor(Math.random() * blocks), data, concern)
        done++
      }
    }))
    return done
  }
  await run(Math.min(200, ms / 4))
  const start = performance.now()
  const done = await run(ms)
  return done / ((performance.now() - start) / 1000)
}

/**
 * The two write cases in alternating rounds (ROUNDS each, TIME_MS in all per case), medians: the
 * store's background work (compaction of what the rounds before overwrote) and the machine's
 * drift weigh on both alike, instead of on whichever case runs second.
 */
const ROUNDS = 5
async function alternating (cases: Array<() => Promise<number>>): Promise<number[]> {
  const results: number[][] = cases.map(() => [])
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, run] of cases.entries()) (results[i] as number[]).push(await run())
    if (process.env.BENCH_DEBUG !== undefined) console.log(`round ${round}: ${results.map((r) => Math.round(r[round] as number)).join(" / ")}`)
  }
  return results.map((values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number)
}

interface Row { case: string, value: number, baseline: number, unit: string, ratio: number }
const rows: Row[] = []
let stream: { batches: number, changesPerBatch: number, meanRoundTripMs: number } | undefined
try {
  const n1 = await node('n1')
  let n2 = await peer('n2')
  await until(async () => (n1.cluster?.members.filter((m) => m.healthy).length ?? 0) === 2)

  // Writes: the same node, the same kind of volume, one or two copies.
  const blocks = 16384
  await n1.createVolume({ name: 'local', sizeBytes: blocks * BLOCK, replicas: 1 })
  await n1.createVolume({ name: 'pair', sizeBytes: blocks * BLOCK, replicas: 2 })
  await until(async () => (await n1.replicationStatus('pair')).inSync.length === 2)
  const [durable, replicated] = await alternating([
    async () => await randomWrites(n1, 'local', blocks, WriteConcern.WriteDurable, TIME_MS / ROUNDS),
    async () => await randomWrites(n1, 'pair', blocks, WriteConcern.WriteReplicated, TIME_MS / ROUNDS)
  ]) as [number, number]
  rows.push({ case: `WriteReplicated 4 KiB random, ${DEPTH} in flight, 2 nodes vs local WriteDurable`, value: replicated, baseline: durable, unit: 'IOPS', ratio: replicated / durable })
  // What the replicated writes waited for: the stream's batches and their round trips (send to
  // acknowledgement, which includes the copy's write and fdatasync), from the copy's link.
  const link = (await n1.replicationStatus('pair')).links[0]
  if (link !== undefined && link.batchesAcknowledged > 0) {
    stream = { batches: link.batchesAcknowledged, changesPerBatch: link.shippedBytes / BLOCK / link.batchesAcknowledged, meanRoundTripMs: link.ackWaitSeconds * 1000 / link.batchesAcknowledged }
  }

  // Resync: a volume filled while its second node is away gets a full copy when that node comes;
  // later the node is away while 1% of the blocks change, and gets only those.
  await n2.close()
  const big = RESYNC_MB * 1024 * 1024 / BLOCK
  await n1.createVolume({ name: 'big', sizeBytes: big * BLOCK, replicas: 2 })
  const chunk = new Uint8Array(256 * BLOCK)
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 13) & 0xff
  for (let at = 0; at < big; at += 256) await n1.write('big', at * BLOCK, chunk, WriteConcern.WriteAcknowledged)
  await n1.flush('big')
  n2 = await peer('n2')
  await until(async () => (await n1.replicationStatus('big')).inSync.length === 2)
  const full = (performance.now() - n2.openedAt) / 1000
  await n2.close()
  const changed = Math.max(1, Math.floor(big / 100))
  const data = new Uint8Array(BLOCK).fill(9)
  for (let i = 0; i < changed; i++) await n1.writeBlock('big', Math.floor(Math.random() * big), data, WriteConcern.WriteAcknowledged)
  await n1.flush('big')
  n2 = await peer('n2')
  await until(async () => (await n1.replicationStatus('big')).inSync.length === 2)
  const delta = (performance.now() - n2.openedAt) / 1000
  rows.push({ case: `resync of a ${RESYNC_MB} MiB volume: 1% of blocks changed vs a full copy`, value: delta, baseline: full, unit: 's', ratio: delta / full })
  await n2.close()
  await n1.close()
} finally {
  await etcd?.stop()
  await rm(root, { recursive: true, force: true })
}

console.log(`replication between 2 nodes on loopback (Node ${process.version}; ${separate ? 'the second node in its own process, etcd coordinating' : 'both nodes in this process, in-process coordinator'})`)
for (const row of rows) {
  console.log(`${row.case.padEnd(80)} ${row.value.toFixed(row.unit === 's' ? 2 : 0).padStart(8)} vs ${row.baseline.toFixed(row.unit === 's' ? 2 : 0).padStart(8)} ${row.unit.padEnd(5)} ratio ${row.ratio.toFixed(2)}`)
}
if (stream !== undefined) console.log(`the stream to the copy: ${stream.batches} batches of ${stream.changesPerBatch.toFixed(1)} changes on average, mean round trip ${stream.meanRoundTripMs.toFixed(2)} ms (send to acknowledgement, the copy's write and fdatasync included)`)
await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, peer: separate ? 'process' : 'inline', seconds: TIME_MS / 1000, resyncMiB: RESYNC_MB, rows, ...(stream === undefined ? {} : { stream }) }, null, 2) + '\n')
