// A seeded, randomized fault run of network replication (Jepsen-style, in one process): four nodes
// with their own on-disk storage, a memory coordinator and a memory network with cut links, take
// writes of patterned blocks (each names its writer and sequence number) from concurrent writers,
// while links are cut and healed, nodes are closed and reopened from their storage, leases expire,
// snapshots come and go and a node may leave. Then everything is healed and the run checks that
// every write acknowledged as WriteReplicated is there (read from the primary, and again after a
// failover), and that every copy holds the same bytes (each storage opened alone).
//
// GALLEON_FUZZ_SEED=<n> replays one seed (a failure prints its seed and the last steps);
// GALLEON_FUZZ_STEPS sets the steps per seed (default 220). Without a seed, a few fixed seeds run.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport, type MemoryCoordinator } from '../backends/memory/index.js'
import { seededRandom } from '../src/seeded-random.js'
import { block as diskBlock, diskCluster as diskClusterHelpers, type DiskNode } from './support/disk-cluster.js'
import { until as untilAsync } from './support/wait.js'
import { recordKey } from '../src/replication/records.js'

const SEEDS = process.env.GALLEON_FUZZ_SEED === undefined ? [11, 23, 37] : [Number(process.env.GALLEON_FUZZ_SEED)]
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 220)
if (!SEEDS.every(Number.isSafeInteger) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

const BS = 4096
const BLOCKS = 24
const NODE_IDS = ['n1', 'n2', 'n3', 'n4']
const VOLUMES = [{ name: 'fz-a', replicas: 3 }, { name: 'fz-b', replicas: 2 }] as const
const WRITERS = 6
/** Bounds a hang (a passing run never waits this long): every client call, close and open. */
const OP_TIMEOUT_MS = 150_000
const SETTLE_TIMEOUT_MS = 90_000
const CONCERNS = [WriteConcern.WriteAcknowledged, WriteConcern.WriteDurable, WriteConcern.WriteReplicated, WriteConcern.WriteReplicated] as const

const dirs: string[] = []
after(async () => { await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })

// ---------------------------------------------------------------- patterned blocks

const MAGIC = 0x47465a5a

/** The block a writer's write number `seq` puts at `block` of volume `vol`: a header, then bytes that follow from it. */
function patterned (vol: number, block: number, writer: number, seq: number): Uint8Array {
  const out = new Uint8Array(BS)
  const view = new DataView(out.buffer)
  view.setUint32(0, MAGIC)
  view.setUint32(4, vol)
  view.setUint32(8, block)
  view.setUint32(12, writer)
  view.setUint32(16, seq)
  let x = (Math.imul(writer + 1, 0x9e3779b1) ^ Math.imul(seq + 1, 0x85ebca6b) ^ Math.imul(block + 1, 0xc2b2ae35) ^ vol) >>> 0
  for (let i = 20; i < BS; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    out[i] = x >>> 24
  }
  return out
}

/** What a block read back holds: zeros, one write's pattern (checked byte for byte), or something else. */
function decode (bytes: Uint8Array, vol: number, block: number): { kind: 'zero' } | { kind: 'write', writer: number, seq: number } | { kind: 'corrupt', why: string } {
  if (bytes.every((b) => b === 0)) return { kind: 'zero' }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (bytes.byteLength !== BS || view.getUint32(0) !== MAGIC) return { kind: 'corrupt', why: 'no pattern header' }
  const [v, b, writer, seq] = [view.getUint32(4), view.getUint32(8), view.getUint32(12), view.getUint32(16)]
  if (v !== vol || b !== block) return { kind: 'corrupt', why: `the pattern of volume ${v} block ${b}` }
  const expected = patterned(vol, block, writer, seq)
  for (let i = 0; i < BS; i++) if (bytes[i] !== expected[i]) return { kind: 'corrupt', why: `byte ${i} differs from writer ${writer} seq ${seq}'s pattern` }
  return { kind: 'write', writer, seq }
}

// ---------------------------------------------------------------- the run

interface Node { id: string, dir: string, g: GalleonFS | undefined, closing: Promise<void> | undefined, coordinator: MemoryCoordinator | undefined, leaving: boolean, errors: string[] }

/** One write as the client saw it. */
interface WriteOp {
  readonly writer: number
  readonly seq: number
  readonly vol: number
  readonly block: number
  readonly concern: WriteConcern
  readonly via: string
  readonly start: number
  end: number
  outcome: 'pending' | 'ok' | 'failed'
  error?: string
}

class FuzzRun {
  readonly seed: number
  readonly random: () => number
  readonly network: MemoryNetwork
  readonly coordinators = new MemoryCoordinatorCluster()
  readonly nodes: Node[] = []
  /** Unordered node pairs whose link is cut (messages both ways fail at once). */
  readonly cut = new Set<string>()
  /** Links that lose some messages (a share of both ways), and links that lose every reply (the request was served). */
  readonly lossy = new Set<string>()
  readonly repliesLost = new Set<string>()
  readonly lossRandom: () => number
  readonly writes: WriteOp[] = []
  readonly busyWriters = new Set<number>()
  readonly writerSeq: number[] = new Array(WRITERS).fill(0)
  /** Client calls running in the background (writes, snapshots, a leave), awaited before the checks. */
  readonly pending = new Set<Promise<unknown>>()
  readonly log: string[] = []
  readonly started = Date.now()
  /** The nodes holding each volume's copies, as its primary last said. */
  readonly copyNodes = new Map<string, string[]>()
  /** Volume ids to names, for the log. */
  readonly volumeNames = new Map<string, string>()
  snapshotCount = 0
  leaves = 0

  constructor (seed: number) {
    this.seed = seed
    this.random = seededRandom(seed)
    this.network = new MemoryNetwork({ seed })
    this.lossRandom = seededRandom(seed ^ 0x5bd1e995)
    this.network.drop((message) => {
      const link = pair(message.from, message.to)
      return this.cut.has(link) || (message.type === 'reply' && this.repliesLost.has(link)) || (this.lossy.has(link) && this.lossRandom() < 0.25)
    })
  }

  note (line: string): void {
    this.log.push(`${String(Date.now() - this.started).padStart(6)} ms  ${line}`)
  }

  pick<T> (items: readonly T[]): T {
    return items[Math.floor(this.random() * items.length)] as T
  }

  open (): Node[] {
    return this.nodes.filter((n) => n.g !== undefined && !n.g.closed)
  }

  async startNode (node: Node): Promise<void> {
    // (A close begun elsewhere, say when a leave ended, finishes first: the storage is locked until then.)
    await node.closing
    const coordinator = this.coordinators.coordinator()
    const g = await deadline(GalleonFS.open({
      storagePath: node.dir,
      cluster: { nodeId: node.id, transport: new MemoryTransport({ network: this.network, nodeId: node.id }), coordinator, leaseTtlMs: 1000 }
    }), OP_TIMEOUT_MS, `opening node ${node.id}`)
    g.on('replication:error', (e: { volumeId: string, message: string }) => { node.errors.push(`${e.volumeId}: ${e.message}`) })
    for (const event of ['replication:primary', 'replication:demoted', 'replication:failover', 'replication:replica-added', 'replication:replica-removed', 'replication:copy-dropped', 'replication:out-of-sync', 'replication:in-sync', 'replication:resynced'] as const) {
      g.on(event, (payload: Record<string, unknown>) => { this.note(`  ${node.id} ${event} ${JSON.stringify({ ...payload, volumeId: this.volumeNames.get(payload.volumeId as string) ?? payload.volumeId })}`) })
    }
    node.g = g
    node.coordinator = coordinator
  }

  async closeNode (node: Node, why: string): Promise<void> {
    const g = node.g
    if (g === undefined) return
    node.g = undefined
    this.note(`close ${node.id} (${why})`)
    node.closing = deadline(g.close(), OP_TIMEOUT_MS, `closing node ${node.id}`)
    await node.closing
  }

  background (what: string, task: Promise<unknown>): void {
    const began = Date.now()
    const tracked = deadline(task, OP_TIMEOUT_MS, what).finally(() => {
      if (Date.now() - began > 5000) this.note(`${what}: took ${Date.now() - began} ms`)
    }).catch((err: unknown) => {
      if ((err as Error).message?.startsWith('hang:') === true) throw err
    })
    this.pending.add(tracked)
    void tracked.finally(() => this.pending.delete(tracked)).catch(() => {})
  }

  /** A node that holds a copy of the volume (any node, failing that). */
  async nodeWithCopy (volume: string): Promise<Node | undefined> {
    const open = this.open()
    const start = Math.floor(this.random() * Math.max(1, open.length))
    for (let k = 0; k < open.length; k++) {
      const node = open[(start + k) % open.length] as Node
      if (await node.g?.replicationStatus(volume).then(() => true, () => false) === true) return node
    }
    return open[start]
  }

  async write (writer: number, vol: number, block: number, concern: WriteConcern): Promise<void> {
    const volume = VOLUMES[vol]?.name as string
    const node = await this.nodeWithCopy(volume)
    if (node?.g === undefined) return
    const seq = ++(this.writerSeq[writer] as number)
    const op: WriteOp = { writer, seq, vol, block, concern, via: node.id, start: performance.now(), end: Infinity, outcome: 'pending' }
    this.writes.push(op)
    this.busyWriters.add(writer)
    const done = node.g.writeBlock(volume, block, patterned(vol, block, writer, seq), concern).then(() => {
      op.outcome = 'ok'
      op.end = performance.now()
    }, (err: unknown) => {
      op.outcome = 'failed'
      op.error = `${(err as { code?: string }).code ?? 'ERROR'}: ${(err as Error).message}`
    }).finally(() => { this.busyWriters.delete(writer) })
    this.background(`writer ${writer}'s write ${seq} (${concern}) of ${volume} block ${block} through ${node.id}`, done)
  }

  setCut (a: string, b: string, cut: boolean): void {
    if (a === b) return
    if (cut) {
      this.cut.add(pair(a, b))
    } else {
      this.cut.delete(pair(a, b))
      this.lossy.delete(pair(a, b))
      this.repliesLost.delete(pair(a, b))
    }
  }

  healAll (): void {
    this.cut.clear()
    this.lossy.clear()
    this.repliesLost.clear()
    this.network.delay(0)
  }

  /** One step of the schedule: every step draws the same count of numbers, so a seed fixes the choices. */
  async step (i: number): Promise<void> {
    const [what, r1, r2, r3, r4] = [this.random(), this.random(), this.random(), this.random(), this.random()]
    const nodeA = NODE_IDS[Math.floor(r1 * NODE_IDS.length)] as string
    const nodeB = NODE_IDS[Math.floor(r2 * NODE_IDS.length)] as string
    const node = this.nodes.find((n) => n.id === nodeA) as Node
    if (what < 0.52) {
      const idle = [...Array(WRITERS).keys()].filter((w) => !this.busyWriters.has(w))
      if (idle.length === 0) return
      const writer = idle[Math.floor(r1 * idle.length)] as number
      const vol = r2 < 0.6 ? 0 : 1
      const block = Math.floor(r3 * BLOCKS)
      const concern = CONCERNS[Math.floor(r4 * CONCERNS.length)] as WriteConcern
      await this.write(writer, vol, block, concern)
    } else if (what < 0.58) {
      this.note(`step ${i}: cut ${nodeA} <-> ${nodeB}`)
      this.setCut(nodeA, nodeB, true)
    } else if (what < 0.65) {
      this.note(`step ${i}: heal ${nodeA} <-> ${nodeB}`)
      this.setCut(nodeA, nodeB, false)
    } else if (what < 0.675) {
      this.note(`step ${i}: isolate ${nodeA}`)
      for (const other of NODE_IDS) this.setCut(nodeA, other, true)
    } else if (what < 0.695) {
      this.note(`step ${i}: ${nodeA} <-> ${nodeB} loses a quarter of its messages`)
      if (nodeA !== nodeB) this.lossy.add(pair(nodeA, nodeB))
    } else if (what < 0.705) {
      this.note(`step ${i}: ${nodeA} <-> ${nodeB} loses every reply`)
      if (nodeA !== nodeB) this.repliesLost.add(pair(nodeA, nodeB))
    } else if (what < 0.715) {
      const delayMs = Math.floor(r3 * 3)
      const jitterMs = r4 < 0.5 ? 0 : Math.floor(r4 * 6)
      this.note(`step ${i}: messages are delayed ${delayMs} ms + up to ${jitterMs} ms of jitter`)
      this.network.delay(delayMs, { jitterMs })
    } else if (what < 0.74) {
      this.note(`step ${i}: heal every link`)
      this.healAll()
    } else if (what < 0.78) {
      // At most one node down at a time (besides one that left): copies keep a majority to fail over to.
      // Not a node whose leave is under way: close() waits for the leave (see the focused test below).
      // Half the time the primary of a volume: a failover, perhaps with a copy cut off.
      let victim = node
      if (r3 < 0.5) {
        const volume = VOLUMES[r2 < 0.6 ? 0 : 1]?.name as string
        const status = await this.open()[0]?.g?.replicationStatus(volume).catch(() => undefined)
        victim = this.nodes.find((n) => n.id === status?.primary) ?? node
      }
      if (victim.g === undefined || victim.leaving || this.nodes.filter((n) => n.g === undefined).length > 0) return
      await this.closeNode(victim, `step ${i}`)
    } else if (what < 0.84) {
      const down = this.nodes.filter((n) => n.g === undefined)
      if (down.length === 0) return
      const back = down[Math.floor(r1 * down.length)] as Node
      this.note(`step ${i}: reopen ${back.id}`)
      await this.startNode(back)
    } else if (what < 0.89) {
      const volume = VOLUMES[r2 < 0.6 ? 0 : 1]?.name as string
      const via = await this.nodeWithCopy(volume)
      if (via?.g === undefined) return
      const name = `s${++this.snapshotCount}`
      this.note(`step ${i}: snapshot ${volume}@${name} through ${via.id}`)
      this.background(`snapshot ${volume}@${name} through ${via.id}`, via.g.createSnapshot(volume, name).then(() => { this.note(`snapshot ${volume}@${name} taken`) }, (err: unknown) => { this.note(`snapshot ${volume}@${name} failed: ${(err as Error).message}`) }))
    } else if (what < 0.92) {
      const volume = VOLUMES[r2 < 0.6 ? 0 : 1]?.name as string
      const via = await this.nodeWithCopy(volume)
      if (via?.g === undefined) return
      const snapshots = await via.g.listSnapshots(volume).catch(() => [])
      const victim = snapshots[Math.floor(r3 * snapshots.length)]
      if (victim === undefined) return
      this.note(`step ${i}: delete snapshot ${volume}@${victim.name} through ${via.id}`)
      this.background(`deleting snapshot ${volume}@${victim.name}`, via.g.deleteSnapshot(volume, victim.id).then(() => { this.note(`snapshot ${volume}@${victim.name} deleted`) }, (err: unknown) => { this.note(`deleting snapshot ${volume}@${victim.name} failed: ${(err as Error).message}`) }))
    } else if (what < 0.94) {
      if (node.g === undefined) return
      // As if the node lost the coordinator for a lease's time: it is unhealthy, its leaderships end, it joins again.
      this.note(`step ${i}: expire the leases of ${nodeA}`)
      node.coordinator?.expireLeases()
    } else if (what < 0.95) {
      const g = node.g
      if (g === undefined || this.leaves > 0 || this.nodes.some((n) => n.g === undefined)) return
      this.leaves++
      this.note(`step ${i}: ${nodeA} leaves the cluster`)
      node.leaving = true
      this.background(`${nodeA} leaving the cluster`, g.leaveCluster().then(async () => {
        this.note(`${nodeA} left the cluster`)
        node.leaving = false
        if (node.g === g) await this.closeNode(node, 'it left; it joins again when reopened')
      }, (err: unknown) => {
        node.leaving = false
        this.note(`${nodeA} leaving failed: ${(err as Error).message}`)
      }))
    } else {
      await sleep(50 + Math.floor(r1 * 250))
    }
  }

  /** Heals everything, brings every node back, waits for the clients' calls and for every copy to be in sync. */
  async settle (): Promise<void> {
    this.note('settle: heal every link, reopen every node')
    this.healAll()
    for (const node of this.nodes) if (node.g === undefined) await this.startNode(node)
    await deadline(Promise.all([...this.pending]), SETTLE_TIMEOUT_MS + OP_TIMEOUT_MS, 'the clients\' calls to finish')
    // (A leave that finished meanwhile closed its node.)
    for (const node of this.nodes) if (node.g === undefined) await this.startNode(node)
    for (const { name } of VOLUMES) await this.waitInSync(name)
  }

  /** The node that is the volume's primary with every copy in sync and nothing unacknowledged. */
  async waitInSync (volume: string): Promise<Node> {
    const limit = Date.now() + SETTLE_TIMEOUT_MS
    let last: string[] = []
    for (;;) {
      last = []
      for (const node of this.open()) {
        const status = await node.g?.replicationStatus(volume).catch(() => undefined)
        if (status === undefined) continue
        last.push(`${node.id}: role ${status.role}, primary ${status.primary ?? '-'} epoch ${status.epoch ?? '-'}, nodes ${status.nodes.join(',')}, in sync ${status.inSync.join(',')}, links ${status.links.map((l) => `${l.node} ${l.state} lag ${l.lagChanges}${l.lastError === undefined ? '' : ` (${l.lastError})`}`).join('; ')}`)
        if (status.role !== 'primary') continue
        // (A leave or move cut short leaves one copy more than the volume wants, until it is called again.)
        this.copyNodes.set(volume, [...status.nodes].sort())
        if (status.nodes.length >= status.replicas && status.inSync.length === status.nodes.length && status.links.every((l) => l.state === 'streaming' && l.lagChanges === 0)) return node
      }
      if (Date.now() > limit) throw new Error(`hang: volume ${volume} did not get every copy in sync within ${SETTLE_TIMEOUT_MS / 1000} s (last seen: ${last.join(' | ')})`)
      await sleep(50)
    }
  }

  /** Checks what volume `vol` reads through `node` against every acknowledged WriteReplicated write; returns what it read. */
  async checkAcknowledged (vol: number, node: Node, when: string): Promise<Uint8Array> {
    const name = VOLUMES[vol]?.name as string
    const bytes = await deadline((node.g as GalleonFS).read(name, 0, BLOCKS * BS), OP_TIMEOUT_MS, `reading ${name} through ${node.id}`)
    for (let block = 0; block < BLOCKS; block++) {
      const found = decode(bytes.subarray(block * BS, (block + 1) * BS), vol, block)
      const issued = this.writes.filter((w) => w.vol === vol && w.block === block)
      const where = `${when}: ${name} block ${block} read through ${node.id}`
      if (found.kind === 'corrupt') assert.fail(`${where} holds bytes no write put there (${found.why})`)
      const holder = found.kind === 'write' ? issued.find((w) => w.writer === found.writer && w.seq === found.seq) : undefined
      if (found.kind === 'write' && holder === undefined) assert.fail(`${where} holds writer ${found.writer}'s write ${found.seq}, which was never issued to that block`)
      for (const w of issued) {
        if (w.outcome !== 'ok' || w.concern !== WriteConcern.WriteReplicated || w === holder) continue
        // The block must hold this write or one not known to have finished before this one began.
        if (holder === undefined) assert.fail(`${where} reads zeros, but writer ${w.writer}'s write ${w.seq} was acknowledged as WriteReplicated (through ${w.via})`)
        if (holder.outcome === 'ok' && holder.end < w.start) {
          assert.fail(`${where} holds writer ${holder.writer}'s write ${holder.seq} (${holder.concern}, acknowledged before it began), not writer ${w.writer}'s later write ${w.seq} acknowledged as WriteReplicated (through ${w.via})`)
        }
      }
    }
    return bytes
  }

  /** Each copy's bytes, live and in every snapshot, with every node closed and each storage opened alone. */
  async copies (): Promise<Map<string, Map<string, Uint8Array>>> {
    for (const node of this.nodes) await this.closeNode(node, 'comparing the copies')
    const out = new Map<string, Map<string, Uint8Array>>()
    for (const node of this.nodes) {
      const g = await deadline(GalleonFS.open({ storagePath: node.dir }), OP_TIMEOUT_MS, `opening ${node.id}'s storage alone`)
      try {
        const held = new Map<string, Uint8Array>()
        for (const { name } of VOLUMES) {
          if (!(await g.getVolume(name).then(() => true, () => false))) continue
          held.set(name, await g.read(name, 0, BLOCKS * BS))
          for (const snapshot of await g.listSnapshots(name)) {
            held.set(`${name}@${snapshot.name}`, await g.read({ volume: name, snapshot: snapshot.id }, 0, Math.min(snapshot.sizeBytes ?? BLOCKS * BS, BLOCKS * BS)))
          }
        }
        out.set(node.id, held)
      } finally {
        await g.close()
      }
    }
    return out
  }

  async run (): Promise<void> {
    for (const id of NODE_IDS) {
      const dir = await mkdtemp(join(tmpdir(), `galleon-fault-fuzz-${id}-`))
      dirs.push(dir)
      const node: Node = { id, dir, g: undefined, closing: undefined, coordinator: undefined, leaving: false, errors: [] }
      this.nodes.push(node)
      await this.startNode(node)
    }
    await until('every node sees every other', () => this.nodes.every((n) => n.g?.cluster?.members.filter((m) => m.healthy).length === NODE_IDS.length))
    const first = this.nodes[0] as Node
    for (const { name, replicas } of VOLUMES) this.volumeNames.set((await (first.g as GalleonFS).createVolume({ name, sizeBytes: BLOCKS * BS, replicas })).id, name)
    for (const { name } of VOLUMES) await this.waitInSync(name)
    this.note('volumes created, copies in sync')
    for (let i = 0; i < STEPS; i++) {
      await this.step(i)
      await sleep(Math.floor(this.random() * 30))
    }
    await this.settle()
    const acknowledged = this.writes.filter((w) => w.outcome === 'ok')
    this.note(`settled: ${this.writes.length} writes issued, ${acknowledged.length} acknowledged (${acknowledged.filter((w) => w.concern === WriteConcern.WriteReplicated).length} as WriteReplicated); failures: ${JSON.stringify(countBy(this.writes.filter((w) => w.outcome === 'failed').map((w) => w.error?.split(':')[0] ?? '?')))}`)

    // Read from the primary of each volume.
    const before = new Map<string, Uint8Array>()
    for (const [vol, { name }] of VOLUMES.entries()) {
      const primary = await this.waitInSync(name)
      before.set(name, await this.checkAcknowledged(vol, primary, `after settling (primary ${primary.id})`))
    }
    // Fail over: the first volume's primary stops, a copy takes over and must read the same, every
    // acknowledged WriteReplicated write included.
    const primary = await this.waitInSync(VOLUMES[0].name)
    await this.closeNode(primary, 'failover check')
    for (const [vol, { name }] of VOLUMES.entries()) {
      const limit = Date.now() + SETTLE_TIMEOUT_MS
      let lead: Node | undefined
      while (lead === undefined) {
        for (const node of this.open()) if ((await node.g?.replicationStatus(name).catch(() => undefined))?.role === 'primary') lead = node
        if (lead !== undefined) break
        if (Date.now() > limit) throw new Error(`hang: no node took over ${name} within ${SETTLE_TIMEOUT_MS / 1000} s after ${primary.id} stopped`)
        await sleep(50)
      }
      const contents = await this.checkAcknowledged(vol, lead, `after failover from ${primary.id} (primary ${lead.id})`)
      assert.deepEqual(contents, before.get(name), `${name} reads the same after the failover from ${primary.id} to ${lead.id}`)
    }
    await this.startNode(primary)
    for (const { name } of VOLUMES) await this.waitInSync(name)

    // Every copy the same, live and in every snapshot.
    const copies = await this.copies()
    for (const [vol, { name, replicas }] of VOLUMES.entries()) {
      const holders = [...copies].filter(([, held]) => held.has(name))
      assert.deepEqual(holders.map(([id]) => id).sort(), this.copyNodes.get(name), `${name}: the nodes holding a copy`)
      assert.ok(holders.length >= replicas, `${name} has ${replicas} copies at least`)
      const [refId, ref] = holders[0] as [string, Map<string, Uint8Array>]
      assert.deepEqual(ref.get(name), before.get(name), `${name}: ${refId}'s copy holds what the primary read`)
      const views = [...ref.keys()].filter((k) => k === name || k.startsWith(`${name}@`)).sort()
      for (const [id, held] of holders.slice(1)) {
        const theirs = [...held.keys()].filter((k) => k === name || k.startsWith(`${name}@`)).sort()
        assert.deepEqual(theirs, views, `${name}: the views on ${id} and on ${refId}`)
        for (const view of views) {
          const a = ref.get(view) as Uint8Array
          const b = held.get(view) as Uint8Array
          if (Buffer.compare(a, b) !== 0) {
            const differ = [...Array(BLOCKS).keys()].filter((k) => Buffer.compare(a.subarray(k * BS, (k + 1) * BS), b.subarray(k * BS, (k + 1) * BS)) !== 0)
            assert.fail(`${view}: the copies on ${refId} and ${id} differ in blocks ${differ.join(', ')} (${differ.map((k) => `${k}: ${JSON.stringify(decode(a.subarray(k * BS, (k + 1) * BS), vol, k))} vs ${JSON.stringify(decode(b.subarray(k * BS, (k + 1) * BS), vol, k))}`).join('; ')})`)
          }
        }
      }
    }
  }

  async cleanup (): Promise<void> {
    this.healAll()
    await Promise.allSettled(this.nodes.map(async (node) => { if (node.g !== undefined) await deadline(node.g.close(), OP_TIMEOUT_MS, `closing ${node.id}`) }))
  }

  report (err: unknown): Error {
    const tail = this.log.slice(process.env.GALLEON_FUZZ_DEBUG === '1' ? 0 : -80).join('\n')
    const errors = this.nodes.flatMap((n) => n.errors.slice(-5).map((e) => `${n.id}: ${e}`)).join('\n')
    if (process.env.GALLEON_FUZZ_DEBUG === "1") console.error(err)
    return new Error(`replication fault run failed with seed ${this.seed} (replay: GALLEON_FUZZ_SEED=${this.seed} GALLEON_FUZZ_STEPS=${STEPS} node --import tsx --test test/replication-fault-fuzz.test.ts): ${(err as Error)?.message ?? String(err)}\nlast steps:\n${tail}\nreplication errors (last 5 per node):\n${errors}`, { cause: err })
  }
}

function countBy (items: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const item of items) out[item] = (out[item] ?? 0) + 1
  return out
}

function pair (a: string, b: string): string {
  return a < b ? `${a}|${b}` : `${b}|${a}`
}

async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

/** `promise`, or a rejection naming `what` as a hang once `ms` have passed. */
async function deadline<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`hang: ${what} did not finish within ${ms / 1000} s`)) }, ms) })])
  } finally {
    clearTimeout(timer)
  }
}

async function until (what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  const limit = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > limit) throw new Error(`hang: timed out waiting until ${what}`)
    await sleep(10)
  }
}

describe('replication under random faults (seeded; GALLEON_FUZZ_SEED replays one)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: ${STEPS} steps of writes, cut links, restarts, expired leases, snapshots and a leave lose no WriteReplicated write, and the copies end identical`, { timeout: 600_000 }, async (t) => {
      const run = new FuzzRun(seed)
      try {
        await run.run()
        if (process.env.GALLEON_FUZZ_DEBUG === '1') for (const line of run.log) t.diagnostic(line)
        else for (const line of run.log.filter((l) => /settle|took/.test(l))) t.diagnostic(line)
      } catch (err) {
        throw run.report(err)
      } finally {
        await run.cleanup()
      }
    })
  }
})

// ---------------------------------------------------------------- defects the runs found, one test each

const { cluster: diskCluster, startNode: startDiskNode } = diskClusterHelpers('galleon-fault-fuzz-focus-')

describe('defects found by the fault runs', () => {
  it('close() while leaveCluster() waits for a new copy that cannot sync (a cut link) ends the leave and closes, instead of waiting out the hand-off', { timeout: 120_000 }, async () => {
    const { network, coordinators, nodes } = await diskCluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    const volume = await n1.g.createVolume({ name: 'leaving', sizeBytes: 16 * BS, replicas: 2 })
    await untilAsync('the copy is in sync', async () => (await n1.g.replicationStatus('leaving')).inSync.length === 2)
    await n1.g.writeBlock('leaving', 3, diskBlock(3), WriteConcern.WriteReplicated)
    const holder = (await n1.g.replicationStatus('leaving')).nodes.find((n) => n !== 'n1') as string
    const spare = [n2, n3].find((n) => n.id !== holder) as DiskNode
    // The spare node is the only one that can take n1's copy, and n1 cannot reach it.
    network.partition(['n1'], [spare.id])
    const leaving = n1.g.leaveCluster()
    leaving.catch(() => {})
    await untilAsync('the hand-off placed a copy on the spare node', async () => (await n1.g.replicationStatus('leaving')).nodes.includes(spare.id))
    try {
      await deadline(n1.g.close(), 20_000, 'close() of a node whose leave waits for a copy that cannot sync')
    } catch (err) {
      // The closing node no longer fills the new copy, healed or not, so the leave would wait out its
      // 30-minute deadline: the volume's record is removed, which ends the hand-off (and the close).
      await coordinators.coordinator().delete(recordKey(volume.id))
      await deadline(n1.g.close(), OP_TIMEOUT_MS, 'closing n1 once the hand-off ended')
      throw err
    }
    await assert.rejects(leaving, (err: { code?: string }) => err.code === 'NOT_OPEN' || err.code === 'CANCELLED')
    network.heal()
    const back = await startDiskNode(network, coordinators, 'n1', n1.dir)
    assert.deepEqual(await back.g.readBlock('leaving', 3), diskBlock(3))
  })
})
