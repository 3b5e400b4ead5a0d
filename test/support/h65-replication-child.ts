// Child of test/h65-replication-steps.test.ts, run with the stepped clock preloaded
// (globalThis.h65Clock): an in-process cluster (memory transport and coordinator, on-disk storage
// in a temporary directory) where the wall clock steps while the code under test waits. Prints
// one JSON line.
//   commit-forward: a WriteReplicated write whose copy answers 2 s late (1 s each way), the clock stepped
//     forward an hour meanwhile: { result: 'ok' } or { result: <error code>, message }.
//   claim-back: a node's process dies, the clock steps back an hour, and the node restarts under
//     the same id once its lease ended: { opened: true } or { opened: false, code, message }.
//   replace-forward: a copy's node goes away for a moment; the clock steps forward an hour, with a
//     replacement delay of a minute: { removed: [events] } after a few leader passes.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import type { SteppedClock } from './h65-clock-preload.js'

const clock = (globalThis as unknown as { h65Clock: SteppedClock }).h65Clock
const HOUR = 3_600_000
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))
/** Polls on the monotonic clock (the wall clock is the thing under test). */
async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await sleep(20)
  }
}

const network = new MemoryNetwork()
const coordinators = new MemoryCoordinatorCluster()
const nodes: GalleonFS[] = []
const root = await mkdtemp(join(tmpdir(), 'galleon-h65-repl-'))
async function start (id: string, replicaReplacementDelayMs?: number): Promise<GalleonFS> {
  const g = await GalleonFS.open({ storagePath: join(root, id), cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000, ...(replicaReplacementDelayMs === undefined ? {} : { replicaReplacementDelayMs }) } })
  nodes.push(g)
  return g
}

const mode = process.argv[2]
let out: unknown
try {
  if (mode === 'commit-forward') {
    const n1 = await start('n1')
    await start('n2')
    await until('both nodes see each other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    await n1.createVolume({ name: 'v', sizeBytes: 64 * 4096, replicas: 2 })
    await until('the copy is in sync', async () => (await n1.replicationStatus('v')).inSync.length === 2)
    network.delay(1000)
    const write = n1.writeBlock('v', 0, new Uint8Array(4096).fill(7), WriteConcern.WriteReplicated).then(() => ({ result: 'ok' }), (err: { code?: string, message?: string }) => ({ result: err.code ?? 'error', message: err.message }))
    await sleep(300)
    clock.step(Number(process.argv[3] ?? HOUR))
    out = await write
  } else if (mode === 'replace-forward') {
    const n1 = await start('n1', 60_000)
    const n2 = await start('n2', 60_000)
    await start('n3', 60_000)
    await until('every node sees every other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 3))
    await n1.createVolume({ name: 'v', sizeBytes: 64 * 4096, replicas: 3 })
    await until('the copies are in sync', async () => (await n1.replicationStatus('v')).inSync.length === 3)
    const removed: unknown[] = []
    for (const g of nodes) g.on('replication:replica-removed', (event) => { removed.push(event) })
    // n3 goes away (a restart, a moment's partition): the leader sees it unhealthy.
    const n3 = nodes[2]!
    await n3.close()
    await until('n3 is unhealthy on n1 and n2', () => [n1, n2].every((g) => g.cluster?.members.find((m) => m.id === 'n3')?.healthy !== true))
    await sleep(1500) // a leader pass or two sees it so
    clock.step(HOUR)
    await sleep(4000) // more leader passes, each well within the minute's replacement delay
    out = { removed }
  } else if (mode === 'claim-back') {
    const first = coordinators.coordinator()
    const a = await GalleonFS.open({ storagePath: join(root, 'a'), cluster: { nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator: first, leaseTtlMs: 1000 } })
    // The process dies: its coordinator session stops (the claim on the id stays), then what is left of it goes.
    await first.crash()
    await a.close().catch(() => {})
    clock.step(-Number(process.argv[3] ?? HOUR))
    const observer = coordinators.coordinator()
    await until('the dead node\'s lease ended', async () => !(await observer.members()).some((m) => m.id === 'n1' && m.healthy))
    try {
      nodes.push(await start('n1'))
      out = { opened: true }
    } catch (err) {
      out = { opened: false, code: (err as { code?: string }).code, message: (err as Error).message }
    }
  } else {
    throw new Error(`unknown mode ${String(mode)}`)
  }
} catch (err) {
  out = { error: (err as Error)?.stack ?? String(err) }
}
process.stdout.write(JSON.stringify(out) + '\n')
await Promise.allSettled(nodes.map(async (g) => await g.close()))
await rm(root, { recursive: true, force: true })
process.exit(0)
