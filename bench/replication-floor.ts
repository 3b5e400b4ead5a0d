// A reference point for bench/replication.ts, with no GalleonFS code in the write path: how fast 4 KiB
// random writes at 32 in flight can be made durable on one file, and on two files in two processes
// joined by a loopback TCP socket, on this machine. Our target asks replicated writes to reach half
// of local durable writes; if even a bare design (group-committed fdatasync on both sides, a
// length-prefixed stream batched per tick, local and remote in parallel) cannot, the target is out of
// reach on this hardware, and the ratio of bare replicated writes to GalleonFS's own local WriteDurable
// case, measured in the same run, is the best any replication design of ours could score.
//
// Cases, in 5 alternating rounds so that drift and other work on the machine weigh on all alike
// (medians; BENCH_FLOOR_MS is each case's time over all rounds, default 3000, as in replication.ts):
//   raw local         32 writers on a preallocated 1 GiB file, each block written in place,
//                     group-committed fdatasync;
//   raw replicated    the same, each write also streamed to a replica process (replication-floor-peer.ts)
//                     that writes and group-commits its own file, then acks; done when both are;
//   raw in-process    the same with the replica in this process: what the second process costs;
//   ..., log          raw local and raw replicated again, but each write lands at the next block of
//                     the file, as in a log: GalleonFS's store is log-structured, and on this disk an
//                     fdatasync of scattered pages costs several times one of contiguous pages, so
//                     only this layout is a fair floor for it;
//   GalleonFS local   a 1-copy volume, g.write(..., WriteDurable) at 32 in flight, as replication.ts.
// Afterwards a probe of one write + fdatasync at a time, alone and with a second syncer (the replica
// process, or a second file in this process), shows how far the device serves two syncers in
// parallel. BENCH_DEBUG=1 prints each round. Run with `node --import tsx bench/replication-floor.ts`;
// saved to bench/results/replication-floor.json.

import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { close, open, read, rmSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { ACK_FRAME, BLOCK, FILE_BLOCKS, GroupCommitFile, ReplicaServer, WRITE_FRAME, WRITE_HEADER, type SyncStats } from './replication-floor-peer.js'

const TIME_MS = Number(process.env.BENCH_FLOOR_MS ?? 3000)
const ROUNDS = 5
const DEPTH = 32
const GALLEON_BLOCKS = 16384 // the volume size of replication.ts
const PEER_SCRIPT = fileURLToPath(new URL('./replication-floor-peer.ts', import.meta.url))
const RESULTS_FILE = fileURLToPath(new URL('./results/replication-floor.json', import.meta.url))

/** A replica's sync counters and, for a replica process, its CPU time (user and system) in ms. */
type ReplicaStats = SyncStats & { cpuMs?: number }

/** The replica as seen from the primary: where to connect, its counters, and how to stop it. */
interface Replica { port: number, stats: () => Promise<ReplicaStats>, probe: (ms: number) => Promise<number>, close: () => Promise<void>, directory: string }

/** What one measured run of a case produced. */
interface Run { writes: number, seconds: number, latencies: number[], local?: SyncStats, replica?: SyncStats, replicaCpuMs?: number }

function statsSince (before: SyncStats, after: SyncStats): SyncStats {
  return { syncs: after.syncs - before.syncs, syncedWrites: after.syncedWrites - before.syncedWrites, syncMs: after.syncMs - before.syncMs }
}

/**
 * Where a write lands: at its own (random) block, or, with `log`, at the log's next block (wrapping),
 * as a log-structured store or a write-ahead log puts it, whatever block it is for. Several writers
 * may share one log, so it is an object.
 */
interface Log { head: number }

/**
 * DEPTH writer slots, each with its own frame buffer (header, then the block), reused from one write
 * to the next: a slot has one write in flight, so no per-write allocation. The block goes to the
 * local file from the frame and, when there is a replica, the whole frame goes to the socket; the
 * frame names the position the primary chose, so a replica mirrors the primary's layout.
 */
class Primary {
  readonly #file: GroupCommitFile
  readonly #socket: Socket | undefined
  readonly #log: Log | undefined
  readonly #frames: Buffer[] = []
  readonly #sequences = new Uint32Array(DEPTH)
  readonly #blocks = new Uint32Array(DEPTH)
  readonly #outstanding = new Uint8Array(DEPTH)
  readonly #startedAt = new Float64Array(DEPTH)
  readonly #localDone: Array<() => void> = []
  #corked = false
  // The current run's state.
  #deadline = 0
  #active = 0
  #writes = 0
  #latencies: number[] | undefined
  #finished: () => void = () => {}

  constructor (file: GroupCommitFile, log: Log | undefined, socket?: Socket) {
    this.#file = file
    this.#log = log
    this.#socket = socket
    for (let slot = 0; slot < DEPTH; slot++) {
      const frame = Buffer.alloc(WRITE_FRAME, 7)
      frame.writeUInt32LE(WRITE_FRAME - 4, 0)
      frame.writeUInt32LE(slot, 4)
      this.#frames.push(frame)
      this.#localDone.push(() => { this.#complete(slot) })
    }
    if (socket !== undefined) {
      socket.setNoDelay(true)
      // Writes in flight would wait for acks forever: fail loudly (the exit handler cleans up).
      socket.on('close', () => { if (this.#active > 0) throw new Error('the replica closed the connection during a run') })
      let pending: Buffer | undefined
      socket.on('data', (chunk: Buffer) => {
        const data = pending === undefined ? chunk : Buffer.concat([pending, chunk])
        let at = 0
        for (; data.length - at >= ACK_FRAME; at += ACK_FRAME) {
          const slot = data.readUInt32LE(at + 4)
          if (data.readUInt32LE(at) !== ACK_FRAME - 4 || slot >= DEPTH || data.readUInt32LE(at + 8) !== this.#sequences[slot]) {
            throw new Error(`unexpected ack for slot ${slot}`)
          }
          this.#complete(slot)
        }
        pending = at === data.length ? undefined : data.subarray(at)
      })
    }
  }

  /** Keeps every slot writing for `ms`, then waits for the writes in flight; `latencies` gets each write's, in ms. */
  async run (ms: number, latencies?: number[]): Promise<{ writes: number, seconds: number }> {
    const start = performance.now()
    this.#deadline = start + ms
    this.#active = DEPTH
    this.#writes = 0
    this.#latencies = latencies
    await new Promise<void>((resolve) => {
      this.#finished = resolve
      for (let slot = 0; slot < DEPTH; slot++) this.#issue(slot)
    })
    return { writes: this.#writes, seconds: (performance.now() - start) / 1000 }
  }

  /** The block each slot wrote last, to check the files afterwards. */
  lastBlocks (): number[] { return Array.from(this.#blocks) }

  #issue (slot: number): void {
    const frame = this.#frames[slot] as Buffer
    const target = Math.floor(Math.random() * FILE_BLOCKS)
    const block = this.#log === undefined ? target : this.#log.head++ % FILE_BLOCKS
    const sequence = (this.#sequences[slot] as number) + 1
    this.#sequences[slot] = sequence
    this.#blocks[slot] = block
    frame.writeUInt32LE(sequence, 8)
    frame.writeUInt32LE(block, 12)
    // The block carries where it was written and which write put it there, for the check at the
    // end, and, as a log record would, the block it is for.
    frame.writeUInt32LE(block, WRITE_HEADER)
    frame.writeUInt32LE(sequence, WRITE_HEADER + 4)
    frame.writeUInt32LE(target, WRITE_HEADER + 8)
    this.#startedAt[slot] = performance.now()
    this.#outstanding[slot] = this.#socket === undefined ? 1 : 2
    this.#file.write(frame, WRITE_HEADER, BLOCK, block * BLOCK, this.#localDone[slot] as () => void)
    if (this.#socket !== undefined) {
      // Frames issued in the same tick (the writers a sync or an ack batch released) leave in one
      // writev: the socket is uncorked once the tick's callbacks have run.
      if (!this.#corked) {
        this.#corked = true
        this.#socket.cork()
        process.nextTick(() => { this.#corked = false; this.#socket?.uncork() })
      }
      this.#socket.write(frame)
    }
  }

  #complete (slot: number): void {
    const left = (this.#outstanding[slot] as number) - 1
    this.#outstanding[slot] = left
    if (left > 0) return
    const now = performance.now()
    this.#writes++
    this.#latencies?.push(now - (this.#startedAt[slot] as number))
    if (now < this.#deadline) this.#issue(slot)
    else if (--this.#active === 0) this.#finished()
  }
}

/** Starts the replica process and waits until it listens; it exits when its stdin closes. */
async function replicaProcess (directory: string): Promise<Replica> {
  const spawned = spawn(process.execPath, ['--import', 'tsx', PEER_SCRIPT, directory], { stdio: ['pipe', 'pipe', 'inherit'] })
  child = spawned
  const lines = createInterface({ input: spawned.stdout as NodeJS.ReadableStream })
  const waiting: Array<(line: string) => void> = []
  let port = 0
  lines.on('line', (line) => {
    if (line.startsWith('port ')) port = Number(line.slice(5))
    else waiting.shift()?.(line)
  })
  const exited = once(spawned, 'exit')
  // Preallocating 1 GiB takes a few seconds; tsx's start-up a few hundred ms more.
  const deadline = Date.now() + 120_000
  while (port === 0) {
    if (spawned.exitCode !== null || spawned.signalCode !== null) throw new Error(`the replica process exited with code ${spawned.exitCode}`)
    if (Date.now() > deadline) throw new Error('the replica process did not start listening in time')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  const ask = async (command: string): Promise<string> => await new Promise<string>((resolve, reject) => {
    if (spawned.exitCode !== null) { reject(new Error('the replica process has exited')); return }
    waiting.push(resolve)
    spawned.stdin?.write(command + '\n')
  })
  return {
    port,
    directory,
    stats: async () => JSON.parse(await ask('stats')) as ReplicaStats,
    probe: async (ms) => Number(await ask(`probe ${ms}`)),
    close: async () => {
      if (spawned.exitCode !== null || spawned.signalCode !== null) return
      spawned.stdin?.end()
      const timer = setTimeout(() => { spawned.kill('SIGKILL') }, 10_000)
      await exited
      clearTimeout(timer)
    }
  }
}

async function replicaInProcess (directory: string): Promise<Replica> {
  const server = await ReplicaServer.start(directory)
  return {
    port: server.port,
    directory,
    stats: async () => ({ ...server.file.stats }),
    probe: async (ms) => await server.file.syncProbe(ms),
    close: async () => { await server.close() }
  }
}

async function connectTo (port: number): Promise<Socket> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  return socket
}

/** 32 writers through GalleonFS, as bench/replication.ts runs its local WriteDurable case. */
async function galleonWrites (g: GalleonFS, volume: string, ms: number, latencies?: number[]): Promise<{ writes: number, seconds: number }> {
  const data = new Uint8Array(BLOCK).fill(7)
  const start = performance.now()
  const deadline = start + ms
  let writes = 0
  await Promise.all(Array.from({ length: DEPTH }, async () => {
    while (performance.now() < deadline) {
      const began = performance.now()
      await g.write(volume, Math.floor(Math.random() * GALLEON_BLOCKS) * BLOCK, data, WriteConcern.WriteDurable)
      latencies?.push(performance.now() - began)
      writes++
    }
  }))
  return { writes, seconds: (performance.now() - start) / 1000 }
}

/** Reads each slot's last block back from `path`: it must carry its own block number, as every write stamps it. */
async function checkFile (path: string, blocks: number[]): Promise<void> {
  const fd = await promisify(open)(path, 'r')
  try {
    const stamp = Buffer.alloc(8)
    for (const block of blocks) {
      await promisify(read)(fd, stamp, 0, 8, block * BLOCK)
      // Another slot may have written the same block later, so the sequence may differ, but never 0.
      if (stamp.readUInt32LE(0) !== block || stamp.readUInt32LE(4) === 0) throw new Error(`${path}: block ${block} does not hold a write of this run`)
    }
  } finally {
    await promisify(close)(fd)
  }
}

function median (values: number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number
}

function percentile (sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number
}

const root = await mkdtemp(join(tmpdir(), 'galleon-bench-floor-'))
let child: ChildProcess | undefined
// Last resort for a crash or ^C: the finally below does the orderly version.
process.on('exit', () => {
  if (child !== undefined && child.exitCode === null) child.kill('SIGKILL')
  rmSync(root, { recursive: true, force: true })
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => { process.exit(130) })

interface CaseResult { name: string, iops: number[], latencies: number[], local: SyncStats, replica: SyncStats, seconds: number, cpuMs: number, replicaCpuMs: number }
const emptyStats = (): SyncStats => ({ syncs: 0, syncedWrites: 0, syncMs: 0 })
const addStats = (into: SyncStats, more: SyncStats): void => { into.syncs += more.syncs; into.syncedWrites += more.syncedWrites; into.syncMs += more.syncMs }

let results: CaseResult[] = []
let probe: { aloneMs: number, withProcess: [number, number], withSameProcess: [number, number] } | undefined
const sockets: Socket[] = []
const replicas: Replica[] = []
let galleon: GalleonFS | undefined
let localFile: GroupCommitFile | undefined
/** Closes the sockets and replicas, each once: called after the rounds and again, harmlessly, on the way out. */
async function closeAll (): Promise<void> {
  for (const socket of sockets.splice(0)) socket.destroy()
  for (const replica of replicas.splice(0)) await replica.close()
}
try {
  await mkdir(join(root, 'local'))
  const [file, remote, inline, g] = await Promise.all([
    GroupCommitFile.create(join(root, 'local', 'data')),
    replicaProcess(join(root, 'replica-process')),
    replicaInProcess(join(root, 'replica-inline')),
    GalleonFS.open({ storagePath: join(root, 'galleon') })
  ])
  localFile = file
  replicas.push(remote, inline)
  galleon = g
  await g.createVolume({ name: 'local', sizeBytes: GALLEON_BLOCKS * BLOCK, replicas: 1 })
  const [remoteSocket, remoteLogSocket, inlineSocket] = await Promise.all([connectTo(remote.port), connectTo(remote.port), connectTo(inline.port)])
  sockets.push(remoteSocket, remoteLogSocket, inlineSocket)
  const log: Log = { head: 0 }
  const primaries = {
    local: new Primary(file, undefined),
    remote: new Primary(file, undefined, remoteSocket),
    inline: new Primary(file, undefined, inlineSocket),
    localLog: new Primary(file, log),
    remoteLog: new Primary(file, log, remoteLogSocket)
  }

  const raw = (primary: Primary, replica?: Replica) => async (ms: number, latencies?: number[]): Promise<Run> => {
    const localBefore = { ...file.stats }
    const replicaBefore = await replica?.stats()
    const run = await primary.run(ms, latencies)
    const replicaAfter = await replica?.stats()
    return {
      ...run,
      latencies: latencies ?? [],
      local: statsSince(localBefore, file.stats),
      ...(replicaBefore === undefined || replicaAfter === undefined ? {} : { replica: statsSince(replicaBefore, replicaAfter) }),
      ...(replicaBefore?.cpuMs === undefined || replicaAfter?.cpuMs === undefined ? {} : { replicaCpuMs: replicaAfter.cpuMs - replicaBefore.cpuMs })
    }
  }
  const cases: Array<{ name: string, run: (ms: number, latencies?: number[]) => Promise<Run> }> = [
    { name: 'raw local durable', run: raw(primaries.local) },
    { name: 'raw replicated, replica process', run: raw(primaries.remote, remote) },
    { name: 'raw replicated, replica in process', run: raw(primaries.inline, inline) },
    { name: 'raw local durable, log', run: raw(primaries.localLog) },
    { name: 'raw replicated, replica process, log', run: raw(primaries.remoteLog, remote) },
    { name: 'GalleonFS local WriteDurable', run: async (ms, latencies) => ({ ...(await galleonWrites(g, 'local', ms, latencies)), latencies: latencies ?? [] }) }
  ]
  results = cases.map(({ name }) => ({ name, iops: [], latencies: [], local: emptyStats(), replica: emptyStats(), seconds: 0, cpuMs: 0, replicaCpuMs: 0 }))
  const ms = TIME_MS / ROUNDS
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, { run }] of cases.entries()) {
      const result = results[i] as CaseResult
      await run(Math.min(200, ms / 4)) // warm-up, not counted
      const cpuBefore = process.cpuUsage()
      const measured = await run(ms, result.latencies)
      const cpu = process.cpuUsage(cpuBefore)
      result.iops.push(measured.writes / measured.seconds)
      result.seconds += measured.seconds
      result.cpuMs += (cpu.user + cpu.system) / 1000
      result.replicaCpuMs += measured.replicaCpuMs ?? 0
      if (measured.local !== undefined) addStats(result.local, measured.local)
      if (measured.replica !== undefined) addStats(result.replica, measured.replica)
    }
    if (process.env.BENCH_DEBUG !== undefined) console.log(`round ${round}: ${results.map((r) => Math.round(r.iops[round] as number)).join(' / ')} IOPS`)
  }

  // One write + fdatasync at a time (random block): this file alone, then with the replica process
  // syncing its file at the same time, then with a second file of this process doing so.
  const probeMs = Math.max(500, TIME_MS / 3)
  const aloneMs = await file.syncProbe(probeMs)
  const withProcess = await Promise.all([file.syncProbe(probeMs), remote.probe(probeMs)])
  const withSameProcess = await Promise.all([file.syncProbe(probeMs), inline.probe(probeMs)])
  probe = { aloneMs, withProcess, withSameProcess }

  // Every write landed where it was meant to, on each side (the replicas' files checked once closed).
  await closeAll()
  await checkFile(join(root, 'local', 'data'), Object.values(primaries).flatMap((primary) => primary.lastBlocks()))
  await checkFile(join(remote.directory, 'data'), [...primaries.remote.lastBlocks(), ...primaries.remoteLog.lastBlocks()])
  await checkFile(join(inline.directory, 'data'), primaries.inline.lastBlocks())
} finally {
  await closeAll()
  await localFile?.close()
  await galleon?.close()
  await rm(root, { recursive: true, force: true })
}

interface PerSync { writesPerSync: number, meanSyncMs: number }
// CPU as a percentage of one core, over the measured time: this process, and the replica process's.
interface Summary { name: string, iops: number, latencyMs: { mean: number, p50: number, p99: number }, local?: PerSync, replica?: PerSync, cpuPercent: { primary: number, replicaProcess?: number } }
const summaries: Summary[] = results.map((result) => {
  const sorted = Float64Array.from(result.latencies).sort()
  const mean = sorted.reduce((sum, value) => sum + value, 0) / sorted.length
  const perSync = (stats: SyncStats): PerSync | undefined =>
    stats.syncs === 0 ? undefined : { writesPerSync: stats.syncedWrites / stats.syncs, meanSyncMs: stats.syncMs / stats.syncs }
  return { name: result.name, iops: median(result.iops), latencyMs: { mean, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) }, local: perSync(result.local), replica: perSync(result.replica), cpuPercent: { primary: result.cpuMs / result.seconds / 10, ...(result.replicaCpuMs === 0 ? {} : { replicaProcess: result.replicaCpuMs / result.seconds / 10 }) } }
})
const [local, remote, inline, localLog, remoteLog, galleonLocal] = summaries as [Summary, Summary, Summary, Summary, Summary, Summary]

console.log(`replication floor: 4 KiB random writes, ${DEPTH} in flight, no GalleonFS code in the raw cases (Node ${process.version}, median of ${ROUNDS} rounds)`)
console.log(`${'case'.padEnd(38)} ${'IOPS'.padStart(7)}  latency ms mean / p50 / p99   local writes/sync, sync ms   replica writes/sync, sync ms   CPU % (this, replica)`)
const syncColumn = (s: PerSync | undefined): string => s === undefined ? '-'.padStart(21) : `${s.writesPerSync.toFixed(1).padStart(6)}, ${s.meanSyncMs.toFixed(2).padStart(5)}`.padStart(21)
for (const s of summaries) {
  console.log(`${s.name.padEnd(38)} ${s.iops.toFixed(0).padStart(7)}  ${[s.latencyMs.mean, s.latencyMs.p50, s.latencyMs.p99].map((v) => v.toFixed(2).padStart(6)).join(' /')}     ${syncColumn(s.local)}      ${syncColumn(s.replica)}   ${s.cpuPercent.primary.toFixed(0).padStart(8)}${s.cpuPercent.replicaProcess === undefined ? '' : `, ${s.cpuPercent.replicaProcess.toFixed(0)}`}`)
}

interface Row { case: string, value: number, baseline: number, unit: string, ratio: number }
const row = (value: Summary, baseline: Summary): Row =>
  ({ case: `${value.name} vs ${baseline.name}, 4 KiB random, ${DEPTH} in flight`, value: value.iops, baseline: baseline.iops, unit: 'IOPS', ratio: value.iops / baseline.iops })
const rows: Row[] = [row(remote, local), row(inline, local), row(remoteLog, localLog), row(remote, galleonLocal), row(remoteLog, galleonLocal), row(galleonLocal, local)]
for (const { case: name, ratio } of rows) console.log(`${name.padEnd(100)} ratio ${ratio.toFixed(2)}`)
if (probe !== undefined) {
  const [withProcess, replicaProcessMs] = probe.withProcess
  const [withSameProcess, secondFileMs] = probe.withSameProcess
  console.log(`one write + fdatasync at a time: ${probe.aloneMs.toFixed(2)} ms alone; ${withProcess.toFixed(2)} ms (and ${replicaProcessMs.toFixed(2)} ms in the replica process) with the replica process syncing too; ${withSameProcess.toFixed(2)} ms (and ${secondFileMs.toFixed(2)} ms) with a second file of this process`)
}
await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, seconds: TIME_MS / 1000, rows, cases: summaries, syncProbe: probe }, null, 2) + '\n')
