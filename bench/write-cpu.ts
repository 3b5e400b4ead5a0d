// CPU time per MiB of g.write() of 1 MiB blocks, one call at a time as dd makes them (`file`
// backend, WriteAcknowledged): the in-process bound of FUSE and NBD sequential writes. With
// BENCH_OP=read, of g.read() of the same blocks after they were written (the bound of sequential
// reads). CPU time
// (process.cpuUsage: every thread of the process), not wall time, so a run on a busy machine still
// compares; A/B a change by running this back to back, alternating the two builds.
//
// Prints one JSON line: µs of CPU per MiB of each measured round, their median, the event loop's
// utilisation and MiB/s (wall time, for reference only).
//
// The volume is written over twice before the measured rounds, so they measure the steady state of
// sequential overwrites (what dd does to a mounted volume's file): superseded versions deleted,
// compaction emptying segments, spare segment files reused (a fresh file's first write costs the
// kernel several times more than the copy into cached pages, which is nothing this library does).
//
// Env: BENCH_DIR (parent of the temporary directory), BENCH_VOLUME (volume size, default 256M),
//      BENCH_MIB (MiB written per round, default 256), BENCH_ROUNDS (measured rounds, default 4),
//      BENCH_PROFILE (a file: a CPU profile of the measured rounds is
//      written there, see bench/profile-summary.ts), BENCH_READY_FILE (a file: written, holding the
//      process id, once the measured rounds start).

import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { Session } from 'node:inspector/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { GalleonFS, parseSize } from '../src/index.js'
import { settle } from './settle.js'

const MIB = 1 << 20
const VOLUME = parseSize(process.env.BENCH_VOLUME ?? '256M')
const PER_ROUND = Number(process.env.BENCH_MIB ?? 256)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4)
const PROFILE = process.env.BENCH_PROFILE
const OP = process.env.BENCH_OP ?? 'write'
if (OP !== 'write' && OP !== 'read') throw new Error(`BENCH_OP must be write or read, not ${OP}`)

const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'galleon-write-cpu-'))
const g = await GalleonFS.open({ storagePath: join(dir, 'storage') })
try {
  await g.createVolume({ name: 'seq', sizeBytes: VOLUME })
  const block = new Uint8Array(MIB).fill(0x5a)
  const into = new Uint8Array(MIB)
  const blocks = VOLUME / MIB
  let next = 0
  const round = async (mib = PER_ROUND, op = OP): Promise<{ cpuUs: number, elu: number, mibps: number }> => {
    const elu = performance.eventLoopUtilization()
    const cpu = process.cpuUsage()
    const started = performance.now()
    for (let i = 0; i < mib; i++) {
      if (op === 'write') await g.write('seq', (next % blocks) * MIB, block)
      else await g.read('seq', (next % blocks) * MIB, MIB, into)
      next++
    }
    const wall = performance.now() - started
    const used = process.cpuUsage(cpu)
    return { cpuUs: (used.user + used.system) / mib, elu: performance.eventLoopUtilization(elu).utilization, mibps: mib / (wall / 1000) }
  }
  await round(2 * blocks, 'write')
  // For a profiler attached from outside (perf record -p): the measured rounds start now.
  if (process.env.BENCH_READY_FILE !== undefined) await writeFile(process.env.BENCH_READY_FILE, String(process.pid))
  let session: Session | undefined
  if (PROFILE !== undefined) {
    session = new Session()
    session.connect()
    await session.post('Profiler.enable')
    await session.post('Profiler.setSamplingInterval', { interval: 100 })
  }
  const rounds: Array<{ cpuUs: number, elu: number, mibps: number }> = []
  for (let r = 0; r < ROUNDS; r++) {
    await settle(g)
    if (session !== undefined) await session.post('Profiler.start')
    rounds.push(await round())
    if (session !== undefined) {
      const { profile } = await session.post('Profiler.stop')
      await writeFile(`${PROFILE as string}.${r}.cpuprofile`, JSON.stringify(profile))
    }
  }
  session?.disconnect()
  const sorted = rounds.map((r) => r.cpuUs).sort((a, b) => a - b)
  const median = ((sorted[(sorted.length - 1) >> 1] as number) + (sorted[sorted.length >> 1] as number)) / 2
  console.log(JSON.stringify({
    label: process.env.BENCH_LABEL ?? '',
    medianCpuUsPerMiB: Math.round(median),
    cpuUsPerMiB: rounds.map((r) => Math.round(r.cpuUs)),
    elu: rounds.map((r) => Number(r.elu.toFixed(2))),
    mibps: rounds.map((r) => Math.round(r.mibps))
  }))
} finally {
  await g.close()
  await rm(dir, { recursive: true, force: true })
}
