// Review r16 of 85bb1af (the watchdog on the oldest stream batch in flight). The watchdog drops a
// copy that stops acknowledging; a copy that keeps acknowledging, however slowly, is by design
// never cut off ("a slow link that keeps acknowledging is never cut off", Link.#watchHead). Such a
// copy stays in the in-sync list, and every WriteReplicated write waits for every in-sync copy for
// at most 60 s (COMMIT_WAIT_MS): a write behind a few 4 MiB batches on a copy that takes 25 s per
// batch (about 165 KiB/s, faster than the slowest rate the stream and resync accept, 4 MiB per
// 30 s) fails with WRITE_CONCERN_UNSATISFIED although another copy acknowledged it at once, the
// symptom 85bb1af set out to remove. The slow copy is modelled on the memory transport: the node
// serves its stream batches one after another, each after a pause proportional to its bytes.
//
// This file runs for about 65 s: the limit that fails the write is a fixed 60 s.

import { it, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import type { TransportMessage } from '../src/drivers.js'
import { until } from './support/wait.js'

const KiB = 1024
const MiB = 1024 * KiB

/** A node whose stream batches are served in order at `bytesPerSecond` once `slow` is set. */
class SlowCopyTransport extends MemoryTransport {
  slow = false
  bytesPerSecond = 4 * MiB / 25
  #turn: Promise<void> = Promise.resolve()
  readonly #pauses = new Set<() => void>()
  override async serveFromNetwork (from: string, request: TransportMessage): Promise<Awaited<ReturnType<MemoryTransport['serveFromNetwork']>>> {
    if (this.slow && request.kind === 'repl:apply') {
      const pauseMs = Math.max(20, Math.ceil((request.payload?.byteLength ?? 0) * 1000 / this.bytesPerSecond))
      const turn = this.#turn.then(async () => {
        if (!this.slow) return
        await new Promise<void>((resolve) => {
          const done = (): void => { clearTimeout(timer); this.#pauses.delete(done); resolve() }
          const timer = setTimeout(done, pauseMs)
          this.#pauses.add(done)
        })
      })
      this.#turn = turn
      await turn
    }
    return await super.serveFromNetwork(from, request)
  }

  /** Full speed again: the batches waiting are served at once. */
  fast (): void {
    this.slow = false
    for (const done of [...this.#pauses]) done()
  }
}

const opened: GalleonFS[] = []
const dirs: string[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

it('a copy that acknowledges slowly but steadily does not make WriteReplicated writes fail that another copy acknowledged', async () => {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const slowTransport = new SlowCopyTransport({ network, nodeId: 'n3' })
  const nodes: GalleonFS[] = []
  for (const id of ['n1', 'n2', 'n3']) {
    const dir = await mkdtemp(join(tmpdir(), `galleon-r16-${id}-`))
    dirs.push(dir)
    const transport = id === 'n3' ? slowTransport : new MemoryTransport({ network, nodeId: id })
    const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport, coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } })
    opened.push(g)
    nodes.push(g)
  }
  const [n1] = nodes as [GalleonFS]
  await until('every node sees every other', () => nodes.every((g) => g.cluster?.members.filter((m) => m.healthy).length === 3))
  await n1.createVolume({ name: 'slow', sizeBytes: 32 * MiB, replicas: 3 })
  await until('all three copies are in sync', async () => {
    const s = await n1.replicationStatus('slow')
    return s.role === 'primary' && s.inSync.length === 3
  }, 60_000)
  const downs: string[] = []
  n1.on('replication:link-down', (event) => { downs.push(`${event.node}: ${event.message}`) })
  slowTransport.slow = true
  try {
    // Three 4 MiB batches to each copy (n2 takes them at once, n3 one per 25 s), then a small write.
    await Promise.all([0, 1, 2].map(async (i) => await n1.write('slow', i * 4 * MiB, new Uint8Array(4 * MiB).fill(0x10 + i), WriteConcern.WriteAcknowledged)))
    const startedAt = Date.now()
    const outcome = await n1.write('slow', 20 * MiB, new Uint8Array(4 * KiB).fill(0x77), WriteConcern.WriteReplicated).then(() => 'acknowledged', (err: { code?: string, message?: string }) => `${err.code}: ${err.message}`)
    const seconds = ((Date.now() - startedAt) / 1000).toFixed(1)
    const status = await n1.replicationStatus('slow')
    const n2 = status.links.find((link) => link.node === 'n2')
    assert.equal(n2?.lagChanges, 0, 'n2 has acknowledged every change')
    assert.equal(outcome, 'acknowledged', `after ${seconds} s, with n2 in sync and every change acknowledged by it (in sync: ${status.inSync.join(', ')}; links declared down: ${downs.length === 0 ? 'none' : downs.join(' | ')})`)
  } finally {
    slowTransport.fast()
  }
})
