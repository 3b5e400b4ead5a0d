// A seeded chaos run against a cluster of four real `galleonfs -d` processes on 127.0.0.1 (etcd,
// TCP): volumes of 3 and 2 copies take patterned writes (each names its writer and sequence number)
// from concurrent clients through the daemons' HTTP API, mostly WriteReplicated, while random
// steps SIGKILL daemons (often a primary, sometimes two in a row, never every in-sync copy of a
// volume), restart them on the same storage, pause one with SIGSTOP for longer than its lease,
// take snapshots, and let a node leave the cluster and join again. Clients retry what the README
// says to retry (NOT_LEADER, WRITE_CONCERN_UNSATISFIED, BACKEND_UNAVAILABLE, a node that is down)
// on another node holding a copy, which forwards to the primary. A watch of etcd checks that only
// an in-sync copy is ever promoted. At the end everything is restarted, the copies get in sync,
// every WriteReplicated write acknowledged must be there (read through the primary), and each
// node's copy (live and every snapshot), read from its storage with the daemons stopped, must hold
// the same bytes.
//
// GALLEON_FUZZ_SEED=<n> replays one seed (a failure prints it with the steps so far);
// GALLEON_FUZZ_STEPS sets the steps (default 40). GALLEON_FUZZ_DEBUG=1 prints the whole step log.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { seededRandom } from '../src/seeded-random.js'
import { RECORD_PREFIX, parseRecord, type ReplicaSetRecord } from '../src/replication/records.js'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { restartablePort } from './support/net.js'
import { BS, checkRegister, checkWritten, decode, patterned, type WriteOp } from './support/chaos-register.js'

const SKIP = etcdSkipReason()
const SEEDS = process.env.GALLEON_FUZZ_SEED === undefined ? [5] : [Number(process.env.GALLEON_FUZZ_SEED)]
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 40)
if (!SEEDS.every(Number.isSafeInteger) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')
const DEBUG = process.env.GALLEON_FUZZ_DEBUG === '1'

const NODE_IDS = ['c1', 'c2', 'c3', 'c4']
const VOLUMES = [{ name: 'chaos-a', replicas: 3 }, { name: 'chaos-b', replicas: 2 }, { name: 'chaos-c', replicas: 2 }] as const
const BLOCKS = 16
const WRITERS = 6
const READERS = 2
const CONCERNS = ['WriteReplicated', 'WriteReplicated', 'WriteReplicated', 'WriteDurable', 'WriteAcknowledged'] as const
const LEASE_SECONDS = 2
/** Each client attempt waits this long at most: longer than the daemon's own 60 s for a replicated write, so attempts never overlap. */
const ATTEMPT_TIMEOUT_MS = 75_000
/** A client gives a write up (its outcome unknown) after retrying this long. */
const WRITE_GIVE_UP_MS = 60_000
const SETTLE_TIMEOUT_MS = 90_000
const SECRET = 'daemon-chaos-cluster-secret'

let root: string
let etcd: EtcdServer | undefined
const children = new Set<ChildProcess>()
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-daemon-chaos-'))
  if (SKIP === undefined) etcd = await startEtcd()
})
after(async () => {
  for (const child of children) { child.kill('SIGCONT'); child.kill('SIGKILL') }
  await etcd?.stop()
  await rm(root, { recursive: true, force: true })
})

class ApiError extends Error {
  constructor (readonly status: number, readonly code: string, message: string) { super(`${code} (${status}): ${message}`) }
}

interface Node {
  readonly id: string
  readonly zone: string
  readonly dir: string
  readonly bind: string
  daemon: RunningDaemon | undefined
  token: string
  /** Stopped with SIGSTOP (not answering), out of the cluster after a leave. */
  paused: boolean
  left: boolean
  /** A leave of this node is under way. */
  leaving: boolean
  /** Every log line of every run of this node, for the report. */
  readonly logs: string[]
}

interface Replication { volumeId: string, role: string, primary?: string, epoch?: number, nodes: string[], inSync: string[], replicas: number, links: Array<{ node: string, state: string, lagChanges: number, lastError?: string }> }

class ChaosRun {
  readonly random: () => number
  readonly nodes: Node[] = []
  readonly writes: WriteOp[] = []
  readonly log: string[] = []
  /** When the run started: the step log and every write's and read's times count from it (one clock, so the two can be set side by side). */
  readonly started = performance.now()
  readonly unexpected: string[] = []
  readonly violations: string[] = []
  readonly records = new Map<string, ReplicaSetRecord>()
  readonly volumeNames = new Map<string, string>()
  stopWriters = false
  reads = 0
  readonly readProblems: string[] = []
  writerTasks: Array<Promise<void>> = []
  snapshots = 0
  stepCounts: Record<string, number> = {}
  /** Steps' calls running in the background (snapshots, leaves), awaited before the checks. */
  readonly pending = new Set<Promise<void>>()
  #watch: { coordinator: EtcdCoordinator, stop: () => void } | undefined

  constructor (readonly seed: number) {
    this.random = seededRandom(seed)
  }

  /** Milliseconds since the run started (monotonic). */
  now (): number {
    return performance.now() - this.started
  }

  note (line: string): void {
    this.log.push(`${String(Math.round(this.now())).padStart(6)} ms  ${line}`)
  }

  node (id: string): Node { return this.nodes.find((n) => n.id === id) as Node }
  /** Nodes whose process runs (paused or not). */
  running (): Node[] { return this.nodes.filter((n) => n.daemon !== undefined) }
  /** Running, answering cluster members. */
  live (): Node[] { return this.nodes.filter((n) => n.daemon !== undefined && !n.paused && !n.left) }
  /** Members that are killed or paused. */
  down (): Node[] { return this.nodes.filter((n) => n.daemon === undefined || n.paused) }

  async api (node: Node, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<unknown> {
    const daemon = node.daemon
    if (daemon === undefined) throw new ApiError(0, 'DOWN', `${node.id} is not running`)
    const response = await fetch(`http://${daemon.address}${path}`, {
      method,
      headers: { authorization: `Bearer ${node.token}`, 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs)
    })
    const text = await response.text()
    if (!response.ok) {
      let error: { code?: string, message?: string } | undefined
      try { error = (JSON.parse(text) as { error?: { code?: string, message?: string } }).error } catch {}
      throw new ApiError(response.status, error?.code ?? 'HTTP', error?.message ?? text)
    }
    return text === '' ? undefined : JSON.parse(text)
  }

  async start (node: Node): Promise<void> {
    const running = await startDaemonProcess([
      '--storage-path', node.dir, '--ipc-address', '127.0.0.1:0', '--bind-address', node.bind, '--node-id', node.id, '--zone', node.zone,
      '--etcd-endpoints', (etcd as EtcdServer).endpoint, '--lease-ttl-seconds', String(LEASE_SECONDS), '--replica-replacement-delay-seconds', '3600',
      '--keepalive-interval-seconds', '1', '--keepalive-timeout-seconds', '3'
    ], {
      cwd: root,
      env: { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET },
      onSpawn: (child) => {
        children.add(child)
        child.once('exit', () => children.delete(child))
        child.stderr?.on('data', (chunk: Buffer) => { for (const line of chunk.toString().split('\n')) if (line !== '') node.logs.push(line) })
      }
    })
    node.token = (await readFile(join(node.dir, 'ipc.token'), 'utf8')).trim()
    node.daemon = running
    node.paused = false
    const daemon = running
    void running.exited.then((code) => {
      if (node.daemon === daemon) { node.daemon = undefined; this.note(`${node.id} exited by itself with ${String(code)}`); this.unexpected.push(`${node.id} exited by itself with code ${String(code)}`) }
    })
  }

  async kill (node: Node, why: string): Promise<void> {
    const daemon = node.daemon
    if (daemon === undefined) return
    node.daemon = undefined
    this.note(`SIGKILL ${node.id} (${why})`)
    daemon.child.kill('SIGKILL')
    await daemon.exited
    node.paused = false
  }

  /** The volume's record as a live node reports it (primary, copies, in-sync copies). */
  async status (volume: string): Promise<Replication | undefined> {
    for (const node of this.live()) {
      const found = await this.api(node, 'GET', `/v1/volumes/${volume}/replication`, undefined, 5000).catch(() => undefined) as Replication | undefined
      if (found?.primary !== undefined) return found
    }
    return undefined
  }

  /**
   * Whether `victim` may go down now: at most two members down at once, and every volume keeps a
   * running, answering in-sync copy besides it (its record's in-sync list, read now).
   */
  async mayTakeDown (victim: Node): Promise<boolean> {
    if (victim.daemon === undefined || victim.paused || victim.left || victim.leaving) return false
    if (this.down().length >= 2) return false
    for (const { name } of VOLUMES) {
      const status = await this.status(name)
      if (status === undefined) return false
      const up = (id: string): boolean => id !== victim.id && this.live().some((n) => n.id === id)
      if (!status.inSync.some(up)) return false
    }
    return true
  }

  // ------------------------------------------------------------------ clients

  /** One client: writes patterned blocks one after another, retrying each on another node until it is acknowledged or given up. */
  async writer (w: number): Promise<void> {
    const random = seededRandom(this.seed * 1000 + w + 1)
    let seq = 0
    while (!this.stopWriters) {
      const vol = Math.floor(random() * VOLUMES.length)
      const block = Math.floor(random() * BLOCKS)
      const concern = CONCERNS[Math.floor(random() * CONCERNS.length)] as string
      let target = Math.floor(random() * NODE_IDS.length)
      const op: WriteOp = { writer: w, seq: ++seq, vol, block, concern, start: this.now(), end: Infinity, outcome: 'pending', errors: [] }
      this.writes.push(op)
      const data = patterned(vol, block, w, op.seq).toString('base64')
      const volume = VOLUMES[vol]?.name as string
      while (op.outcome === 'pending') {
        const node = this.nodes[target % this.nodes.length] as Node
        target++
        if (node.daemon === undefined) { await sleep(20); continue }
        try {
          await this.api(node, 'POST', `/v1/volumes/${volume}/write`, { offset: block * BS, data, concern }, ATTEMPT_TIMEOUT_MS)
          op.outcome = 'ok'
          op.end = this.now()
          op.via = node.id
        } catch (err) {
          const code = err instanceof ApiError ? err.code : `NETWORK (${(err as Error).name}: ${String((err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message)})`
          op.errors.push(`${node.id}: ${code}`)
          // What the README says to retry elsewhere: a primary that changed, a concern not met in
          // time (stored there; retry), a coordinator that did not answer, a node that is down,
          // stopping, or holds no copy (it left the cluster). Anything else is noted as unexpected.
          const retry = !(err instanceof ApiError) || ['NOT_LEADER', 'WRITE_CONCERN_UNSATISFIED', 'BACKEND_UNAVAILABLE', 'BUSY', 'VOLUME_NOT_FOUND', 'DOWN', 'NOT_OPEN'].includes(err.code)
          if (!retry) this.unexpected.push(`writer ${w}'s write ${op.seq} (${concern}) of ${volume} block ${block} through ${node.id}: ${(err as Error).message}`)
          if (this.now() - op.start > WRITE_GIVE_UP_MS) op.outcome = 'failed'
          else await sleep(30 + Math.floor(random() * 70))
        }
      }
    }
  }

  /**
   * A reader: reads a whole volume through a random running node now and then, and checks it holds
   * every WriteReplicated write acknowledged before the read was sent (a node that was paused past
   * its lease and still believes it is the primary must not answer from its own stale copy).
   */
  async reader (r: number): Promise<void> {
    const random = seededRandom(this.seed * 1000 + 500 + r)
    while (!this.stopWriters) {
      await sleep(100 + Math.floor(random() * 400))
      const vol = Math.floor(random() * VOLUMES.length)
      const node = this.nodes[Math.floor(random() * this.nodes.length)] as Node
      if (node.daemon === undefined) continue
      const volume = VOLUMES[vol]?.name as string
      const sent = this.now()
      const bytes = await this.read(node, volume).catch(() => undefined)
      if (bytes === undefined) continue
      this.reads++
      const problems = checkRegister(this.writes, vol, bytes, BLOCKS, `a read of ${volume} through ${node.id} sent at ${Math.round(sent)} ms${node.paused ? ' (paused when sent)' : ''}`, sent)
      if (problems.length > 0) {
        this.note(`STALE READ ${problems.join('; ')}`)
        this.readProblems.push(...problems)
      }
    }
  }

  /** Reads volume `vol` through `node` and checks it against the WriteReplicated writes acknowledged before (see reader). */
  async probe (node: Node, vol: number, why: string): Promise<void> {
    const volume = VOLUMES[vol]?.name as string
    const sent = this.now()
    const bytes = await this.read(node, volume).catch((err: Error) => { this.note(`  ${why}: a read of ${volume} failed: ${err.message}`) })
    if (bytes === undefined) return
    this.reads++
    const problems = checkRegister(this.writes, vol, bytes, BLOCKS, `${why}: a read of ${volume} through ${node.id} sent at ${Math.round(sent)} ms`, sent)
    if (problems.length > 0) {
      this.note(`STALE READ ${problems.join('; ')}`)
      this.readProblems.push(...problems)
    }
  }

  // ------------------------------------------------------------------ steps

  /** One step: it always draws four numbers, so the seed fixes the schedule (timing aside). */
  async step (i: number): Promise<void> {
    const [what, r1, r2, r3] = [this.random(), this.random(), this.random(), this.random()]
    const node = this.nodes[Math.floor(r1 * this.nodes.length)] as Node
    const volume = VOLUMES[Math.floor(r2 * VOLUMES.length)]?.name as string
    const count = (kind: string): void => { this.stepCounts[kind] = (this.stepCounts[kind] ?? 0) + 1 }
    if (what < 0.3) {
      // SIGKILL: the primary of a volume more often than not.
      let victim = node
      if (r3 < 0.6) {
        const primary = (await this.status(volume))?.primary
        victim = this.nodes.find((n) => n.id === primary) ?? node
      }
      if (!(await this.mayTakeDown(victim))) { this.note(`step ${i}: no kill of ${victim.id} (it would leave a volume without a live in-sync copy, or it is down or out)`); return }
      count('kill')
      await this.kill(victim, `step ${i}${r3 < 0.6 ? `, primary of ${volume}` : ''}`)
    } else if (what < 0.52) {
      const dead = this.nodes.filter((n) => n.daemon === undefined)
      if (dead.length === 0) return
      const back = dead[Math.floor(r1 * dead.length)] as Node
      count('restart')
      this.note(`step ${i}: restart ${back.id}`)
      await this.start(back)
      this.note(`  ${back.id} is ready`)
    } else if (what < 0.64) {
      // Through a node holding a copy (it forwards to the primary); one without answers VOLUME_NOT_FOUND.
      const holders = (await this.status(volume))?.nodes ?? []
      const candidates = this.live().filter((n) => holders.includes(n.id))
      const via = candidates[Math.floor(r1 * candidates.length)]
      if (via === undefined) return
      const name = `s${++this.snapshots}`
      count('snapshot')
      this.note(`step ${i}: snapshot ${volume}@${name} through ${via.id}`)
      const began = Date.now()
      // In the background: the next steps (a kill of its primary, say) may come while it runs.
      this.background(this.api(via, 'POST', `/v1/volumes/${volume}/snapshots`, { name }, 90_000).then(
        () => { this.note(`  snapshot ${volume}@${name} taken (${Date.now() - began} ms)`) },
        (err: Error) => { this.note(`  snapshot ${volume}@${name} failed: ${err.message}`) }))
    } else if (what < 0.76) {
      // SIGSTOP for longer than the lease: the node's leases expire, its primaries fail over, and
      // when it goes on it must notice that it was replaced.
      let victim = node
      if (r3 < 0.6) {
        const primary = (await this.status(volume))?.primary
        victim = this.nodes.find((n) => n.id === primary) ?? node
      }
      if (!(await this.mayTakeDown(victim))) { this.note(`step ${i}: no pause of ${victim.id}`); return }
      const pauseMs = Math.round(LEASE_SECONDS * 1000 * (1.5 + r3))
      count('pause')
      this.note(`step ${i}: SIGSTOP ${victim.id} for ${pauseMs} ms${r3 < 0.6 ? ` (primary of ${volume})` : ''}`)
      victim.paused = true
      victim.daemon?.child.kill('SIGSTOP')
      await sleep(pauseMs)
      victim.daemon?.child.kill('SIGCONT')
      victim.paused = false
      this.note(`  SIGCONT ${victim.id}`)
      // At once, before it may have noticed that it was replaced: every volume read through it.
      await Promise.all(VOLUMES.map(async ({ name }, vol) => { await this.probe(victim, vol, `right after SIGCONT of ${victim.id}`) }))
    } else if (what < 0.84) {
      if (this.nodes.some((n) => n.leaving)) return
      const out = this.nodes.find((n) => n.left)
      if (out !== undefined) {
        await this.join(out, `step ${i}`)
        count('join')
        return
      }
      // A leave needs every other node up: the copies it holds move to the one node without a copy.
      if (this.down().length > 0 || node.daemon === undefined) { this.note(`step ${i}: no leave of ${node.id} (a node is down)`); return }
      count('leave')
      this.note(`step ${i}: ${node.id} leaves the cluster`)
      const began = Date.now()
      // In the background too: other nodes may be killed or paused while it hands its copies off.
      node.leaving = true
      this.background(this.api(node, 'POST', '/v1/cluster/leave', {}, 180_000).then(() => {
        node.left = true
        this.note(`  ${node.id} left (${Date.now() - began} ms)`)
      }, (err: Error) => {
        this.note(`  ${node.id} could not leave: ${err.message}`)
      }).finally(() => { node.leaving = false }))
    } else {
      count('sleep')
      await sleep(200 + Math.floor(r1 * 800))
    }
  }

  background (task: Promise<void>): void {
    this.pending.add(task)
    void task.finally(() => this.pending.delete(task))
  }

  async join (node: Node, why: string): Promise<void> {
    const through = this.live()[0]
    if (through === undefined || node.daemon === undefined) return
    this.note(`${why}: ${node.id} joins again through ${through.id}`)
    await this.api(node, 'POST', '/v1/cluster/join', { address: through.bind }, 60_000)
    node.left = false
    this.note(`  ${node.id} joined`)
  }

  // ------------------------------------------------------------------ checks

  /** Follows every volume's record in etcd: a change of primary to a copy that was not in sync is a violation. */
  async watchRecords (): Promise<void> {
    const coordinator = await EtcdCoordinator.connect({ endpoints: [(etcd as EtcdServer).endpoint], prefix: '/galleonfs/' })
    const stop = coordinator.watch(RECORD_PREFIX, (event) => {
      const volumeId = event.key.slice(RECORD_PREFIX.length)
      const before = this.records.get(volumeId)
      const record = event.type === 'put' && event.entry !== undefined ? parseRecord(event.entry.value) : undefined
      if (record === undefined) { this.records.delete(volumeId); return }
      this.records.set(volumeId, record)
      if (before !== undefined && record.primary !== before.primary) {
        this.note(`  record: ${record.spec.name} primary ${before.primary} -> ${record.primary} (epoch ${record.epoch}, in sync before: ${before.inSync.join(',')})`)
        if (!before.inSync.includes(record.primary)) {
          this.violations.push(`${record.spec.name}: ${record.primary} became primary (epoch ${record.epoch}) after ${before.primary} (epoch ${before.epoch}), but it was not in sync (in sync: ${before.inSync.join(', ')})`)
        }
      }
    })
    this.#watch = { coordinator, stop }
  }

  /** The volume's primary, once every copy is in sync with nothing unacknowledged. */
  async waitInSync (volume: string): Promise<{ node: Node, status: Replication }> {
    const limit = Date.now() + SETTLE_TIMEOUT_MS
    for (;;) {
      const seen: string[] = []
      for (const node of this.live()) {
        const status = await this.api(node, 'GET', `/v1/volumes/${volume}/replication`, undefined, 5000).catch((err: Error) => err.message) as Replication | string
        if (typeof status === 'string') { seen.push(`${node.id}: ${status}`); continue }
        seen.push(`${node.id}: role ${status.role}, primary ${status.primary ?? '-'} epoch ${status.epoch ?? '-'}, nodes ${status.nodes.join(',')}, in sync ${status.inSync.join(',')}, links ${status.links.map((l) => `${l.node} ${l.state} lag ${l.lagChanges}${l.lastError === undefined ? '' : ` (${l.lastError})`}`).join('; ')}`)
        if (status.role === 'primary' && status.nodes.length >= status.replicas && status.inSync.length === status.nodes.length && status.links.every((l) => l.state === 'streaming' && l.lagChanges === 0)) return { node, status }
      }
      if (Date.now() > limit) throw new Error(`${volume} did not get every copy in sync within ${SETTLE_TIMEOUT_MS / 1000} s (last seen: ${seen.join(' | ')})`)
      await sleep(200)
    }
  }

  async read (node: Node, volume: string): Promise<Buffer> {
    const answer = await this.api(node, 'POST', `/v1/volumes/${volume}/read`, { offset: 0, length: BLOCKS * BS }, 60_000) as { data: string }
    return Buffer.from(answer.data, 'base64')
  }

  async run (): Promise<void> {
    await this.watchRecords()
    for (const [k, id] of NODE_IDS.entries()) {
      const node: Node = { id, zone: `zone-${k + 1}`, dir: join(root, `${this.seed}-${id}`), bind: `127.0.0.1:${await restartablePort()}`, daemon: undefined, token: '', paused: false, left: false, leaving: false, logs: [] }
      this.nodes.push(node)
      await this.start(node)
    }
    const first = this.nodes[0] as Node
    await until('every node is a healthy member', async () => ((await this.api(first, 'GET', '/v1/cluster') as { members: Array<{ healthy: boolean }> }).members.filter((m) => m.healthy).length === NODE_IDS.length), 30_000)
    // Each created through another node (the creating node is its first primary), so that the volumes' primaries differ.
    for (const [vol, { name, replicas }] of VOLUMES.entries()) {
      const volume = await this.api(this.nodes[vol] as Node, 'POST', '/v1/volumes', { name, sizeBytes: BLOCKS * BS, replicas }) as { id: string }
      this.volumeNames.set(volume.id, name)
    }
    for (const { name } of VOLUMES) await this.waitInSync(name)
    this.note('volumes created, every copy in sync')
    this.writerTasks = [...Array.from({ length: WRITERS }, async (_, w) => { await this.writer(w) }), ...Array.from({ length: READERS }, async (_, r) => { await this.reader(r) })]
    for (let i = 0; i < STEPS; i++) {
      await this.step(i)
      if (this.violations.length > 0) assert.fail(`a copy that was not in sync became primary: ${this.violations.join('; ')}`)
      assert.deepEqual(this.readProblems, [], 'reads during the run hold every WriteReplicated write acknowledged before them')
      await sleep(Math.floor(this.random() * 300))
    }

    // Settle: no new writes, every node back (running, answering, a member), the clients' last writes done.
    this.stopWriters = true
    this.note('settle: restart every killed node, the left node joins again')
    for (const node of this.nodes) if (node.daemon === undefined) await this.start(node)
    await Promise.all([...this.pending])
    for (const node of this.nodes) if (node.left) await this.join(node, 'settle')
    await Promise.all(this.writerTasks)
    const primaries = new Map<string, { node: Node, status: Replication }>()
    for (const { name } of VOLUMES) primaries.set(name, await this.waitInSync(name))
    const acknowledged = this.writes.filter((w) => w.outcome === 'ok')
    this.note(`settled: ${this.writes.length} writes, ${acknowledged.length} acknowledged (${acknowledged.filter((w) => w.concern === 'WriteReplicated').length} WriteReplicated), ${this.writes.filter((w) => w.outcome === 'failed').length} given up; ${this.writes.filter((w) => w.errors.length > 0).length} needed retries; ${this.reads} reads checked; steps ${JSON.stringify(this.stepCounts)}`)
    if (this.violations.length > 0) assert.fail(`a copy that was not in sync became primary: ${this.violations.join('; ')}`)

    // Through each primary: every acknowledged WriteReplicated write is there.
    const expected = new Map<string, Buffer>()
    for (const [vol, { name }] of VOLUMES.entries()) {
      const { node, status } = primaries.get(name) as { node: Node, status: Replication }
      const bytes = await this.read(node, name)
      expected.set(name, bytes)
      const problems = checkRegister(this.writes, vol, bytes, BLOCKS, `${name} through its primary ${node.id} (epoch ${String(status.epoch)})`)
      assert.deepEqual(problems, [], 'the primary holds every acknowledged WriteReplicated write')
    }

    // Each copy from its own storage, the daemons stopped: the same bytes, live and in every snapshot.
    for (const node of this.nodes) {
      const daemon = node.daemon
      if (daemon === undefined) continue
      node.daemon = undefined
      daemon.child.kill('SIGTERM')
      const code = await daemon.exited
      if (code !== 0) this.unexpected.push(`${node.id} exited with ${String(code)} on SIGTERM`)
    }
    const copies = new Map<string, Map<string, Buffer>>()
    for (const node of this.nodes) {
      const g = await GalleonFS.open({ storagePath: node.dir })
      try {
        const held = new Map<string, Buffer>()
        for (const { name } of VOLUMES) {
          if (!(await g.getVolume(name).then(() => true, () => false))) continue
          held.set(name, Buffer.from(await g.read(name, 0, BLOCKS * BS)))
          for (const snapshot of await g.listSnapshots(name)) held.set(`${name}@${snapshot.name}`, Buffer.from(await g.read({ volume: name, snapshot: snapshot.id }, 0, BLOCKS * BS)))
        }
        copies.set(node.id, held)
      } finally {
        await g.close()
      }
    }
    for (const [vol, { name }] of VOLUMES.entries()) {
      const { status } = primaries.get(name) as { node: Node, status: Replication }
      const holders = [...copies].filter(([, held]) => held.has(name))
      assert.deepEqual(holders.map(([id]) => id).sort(), [...status.nodes].sort(), `${name}: the nodes holding a copy are those of its record`)
      const [refId, ref] = holders[0] as [string, Map<string, Buffer>]
      const views = [...ref.keys()].filter((k) => k === name || k.startsWith(`${name}@`)).sort()
      for (const view of views) assert.deepEqual(checkWritten(this.writes, vol, ref.get(view) as Buffer, BLOCKS, `${view} on ${refId}`), [])
      for (const [id, held] of holders) {
        assert.ok((held.get(name) as Buffer).equals(expected.get(name) as Buffer), `${name}: the copy on ${id} differs from what its primary read (blocks ${differing(held.get(name) as Buffer, expected.get(name) as Buffer, vol)})`)
        assert.deepEqual([...held.keys()].filter((k) => k === name || k.startsWith(`${name}@`)).sort(), views, `${name}: the snapshots on ${id} and on ${refId}`)
        for (const view of views) assert.ok((held.get(view) as Buffer).equals(ref.get(view) as Buffer), `${view}: the copies on ${refId} and ${id} differ (blocks ${differing(ref.get(view) as Buffer, held.get(view) as Buffer, vol)})`)
      }
    }
    assert.deepEqual(this.unexpected, [], 'no unexpected errors or exits')
  }

  async cleanup (): Promise<void> {
    this.stopWriters = true
    this.#watch?.stop()
    await this.#watch?.coordinator.close().catch(() => {})
    for (const node of this.nodes) {
      const daemon = node.daemon
      node.daemon = undefined
      if (daemon !== undefined) { daemon.child.kill('SIGCONT'); daemon.child.kill('SIGKILL'); await daemon.exited }
    }
    await Promise.race([Promise.allSettled(this.writerTasks), sleep(5000)])
  }

  /** Keeps the whole story of a failed run (step log, every write, each daemon's log) in a directory of its own; returns its path. */
  async keep (): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), `galleon-daemon-chaos-seed${this.seed}-`))
    await writeFile(join(dir, 'steps.log'), this.log.join('\n') + '\n')
    await writeFile(join(dir, 'writes.jsonl'), this.writes.map((w) => JSON.stringify({ ...w, start: Math.round(w.start), end: Number.isFinite(w.end) ? Math.round(w.end) : null, volume: VOLUMES[w.vol]?.name })).join('\n') + '\n')
    for (const node of this.nodes) await writeFile(join(dir, `${node.id}.log`), node.logs.join('\n') + '\n')
    return dir
  }

  report (err: unknown, kept: string): Error {
    const tail = this.log.slice(DEBUG ? 0 : -80).join('\n')
    const logs = this.nodes.map((n) => `${n.id}:\n    ${n.logs.filter((l) => /"level":"(warn|error)"/.test(l)).slice(-12).join('\n    ')}`).join('\n')
    return new Error(`daemon chaos run failed with seed ${this.seed} (replay: GALLEON_FUZZ_SEED=${this.seed} GALLEON_FUZZ_STEPS=${STEPS} node --import tsx --test test/daemon-chaos.test.ts): ${(err as Error)?.message ?? String(err)}\nthe step log, every write and each daemon's log are kept in ${kept}\nsteps so far:\n${tail}\nunexpected: ${this.unexpected.join('; ')}\ndaemon warnings and errors (last 12 per node):\n${logs}`, { cause: err })
  }
}

/** The blocks in which two reads of a volume differ, with what each holds (`a`'s first). */
function differing (a: Buffer, b: Buffer, vol: number): string {
  const out: string[] = []
  for (let k = 0; k < BLOCKS; k++) {
    const [x, y] = [a.subarray(k * BS, (k + 1) * BS), b.subarray(k * BS, (k + 1) * BS)]
    if (!x.equals(y)) out.push(`${k}: ${JSON.stringify(decode(x, vol, k))} vs ${JSON.stringify(decode(y, vol, k))}`)
  }
  return out.join('; ')
}

async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

async function until (what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const limit = Date.now() + timeoutMs
  while (!(await check().catch(() => false))) {
    if (Date.now() > limit) throw new Error(`timed out waiting until ${what}`)
    await sleep(100)
  }
}

describe('a cluster of daemon processes under SIGKILL, SIGSTOP, restarts, snapshots and a leave (seeded; GALLEON_FUZZ_SEED replays one)', { skip: SKIP }, () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: ${STEPS} steps lose no acknowledged WriteReplicated write, and every copy ends the same`, { timeout: 600_000 }, async (t) => {
      const run = new ChaosRun(seed)
      try {
        await run.run()
        for (const line of run.log.filter((l) => DEBUG || /settle|took|exited/.test(l))) t.diagnostic(line)
      } catch (err) {
        throw run.report(err, await run.keep().catch((e: Error) => `(not kept: ${e.message})`))
      } finally {
        await run.cleanup()
      }
    })
  }
})

