// The backup-lease tests' children (test/support/h69-child.ts, test/support/review-r30-child.ts),
// both sides: serveLeaseChild runs in a child started with the stepped wall clock preloaded
// (test/support/h65-clock-preload.ts) and takes, deletes (and more) backups on a directory target
// as the parent asks over IPC, stopping at a chosen call until released; LeaseChild and
// withLeaseChildren drive such children from a test; assertWhole and leaseFiles look at the target.
//
// Requests: { rid, op, ... }, each answered { rid, result } or { rid, error: { code, message } }:
//   backup  { instance, target, seed, encrypted, hold }  a new volume written with blockPattern(seed)
//           (of storage class 'sealed' when encrypted: the child's setup creates it), backed up;
//           hold: the backup stops in putManifest (after every chunk is stored and checked, before
//           its manifest is written) and says { event: 'held', rid }
//   delete  { instance, target, id, holdAt, graceSeconds }  deleteBackup; holdAt (see HoldAt): it
//           stops at its first such call and says { event: 'holding', rid }
//   release  every stopped call goes on (not answered)
//   exit     the child closes its instances and exits (not answered)
// plus the ops a child adds. `instance` (default 0) picks one of the child's GalleonFS instances.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { GalleonFS } from '../../src/index.js'
import { leaseTiming } from '../../src/backup/leases.js'
import type { SteppedChild } from './h65-child.js'
import { blockPattern } from './patterns.js'

export const HOUR = 3_600_000
export const BS = 4096
export const BLOCKS = 32
/** How long a test waits for a child's answer or event. */
export const REPLY_MS = 45_000

export const sha = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex')
export const exists = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)
/** The leases on a directory target (not the temporary files of lease writes in flight). */
export const leaseFiles = async (target: string): Promise<string[]> => (await readdir(join(target, 'leases')).catch(() => [] as string[])).filter((name) => name.endsWith('.json') && !name.startsWith('.tmp-'))

// ---- The parent's side ----

interface Reply { rid: number, result?: any, error?: { code: string, message: string } }

/** A child running `script` (which calls serveLeaseChild), answering requests over IPC. */
export class LeaseChild {
  #rid = 0
  constructor (readonly stepped: SteppedChild) {}

  static async start (script: string): Promise<LeaseChild> {
    // Imported here: the children import this module too, and need not load esbuild (child-script.ts).
    const { startStepped } = await import('./h65-child.js')
    const child = new LeaseChild(startStepped(script, []))
    await child.stepped.next('the child is ready', (m) => typeof m?.ready === 'number', REPLY_MS)
    return child
  }

  /** Sends a request; `reply` resolves with its answer (an error answer rejects, with its code). */
  send (request: Record<string, unknown>): { rid: number, reply: Promise<any> } {
    const rid = ++this.#rid
    this.stepped.process.send({ rid, ...request })
    const reply = this.stepped.next<Reply>(`the child answered ${String(request.op)} #${rid}`, (m) => m?.rid === rid && m?.event === undefined, REPLY_MS).then((m) => {
      if (m.error !== undefined) throw Object.assign(new Error(`${String(request.op)} failed in the child: ${m.error.message}`), { code: m.error.code })
      return m.result
    })
    reply.catch(() => {}) // awaited by the test; not an unhandled rejection meanwhile
    return { rid, reply }
  }

  async call (request: Record<string, unknown>): Promise<any> { return await this.send(request).reply }

  /** Sends a request that stops (hold, or holdAt) and resolves once the child says it has stopped there. */
  async sendStopped (request: Record<string, unknown>): Promise<{ rid: number, reply: Promise<any> }> {
    const sent = this.send(request)
    await this.event(request.holdAt === undefined ? 'held' : 'holding', sent.rid)
    return sent
  }

  async event (name: string, rid: number): Promise<void> { await this.stepped.next(`the child said ${name}`, (m) => m?.event === name && m?.rid === rid, REPLY_MS) }
  release (): void { this.stepped.process.send({ op: 'release' }) }
  signal (name: NodeJS.Signals): void { this.stepped.process.kill(name) }
}

/** Runs `task` with `n` children of `script`, and kills them after (stopped ones too). */
export async function withLeaseChildren (script: string, n: number, task: (children: LeaseChild[]) => Promise<void>): Promise<void> {
  const children: LeaseChild[] = []
  try {
    for (let i = 0; i < n; i++) children.push(await LeaseChild.start(script))
    await task(children)
  } finally {
    for (const child of children) {
      try { child.signal('SIGCONT') } catch {}
      await child.stepped.kill()
    }
  }
}

/** Runs `task` with a GalleonFS instance (in memory) of the test's process, closed after. */
export async function withInstance<T> (task: (g: GalleonFS) => Promise<T>): Promise<T> {
  const g = await GalleonFS.open({ inMemory: true })
  try {
    return await task(g)
  } finally {
    await g.close()
  }
}

/**
 * Runs `task` with an in-memory instance of the test's process (`g`) and one child of
 * test/support/h69-child.ts (`writer`, whose process id is `writerPid`): a backup writer in another
 * process. The instance is closed and the child killed after.
 */
export async function withWriterAndInstance (task: (g: GalleonFS, writer: LeaseChild, writerPid: number) => Promise<void>): Promise<void> {
  await withLeaseChildren('test/support/h69-child.ts', 1, async ([writer]) => {
    const child = writer as LeaseChild
    await withInstance(async (g) => { await task(g, child, child.stepped.process.pid as number) })
  })
}

/** Creates volume `name` on `g` (of `storageClass` when given) written with blockPattern(seed), and returns what it holds. */
export async function writeVolume (g: GalleonFS, name: string, seed: number, storageClass?: string): Promise<Uint8Array> {
  const data = blockPattern(BLOCKS, seed, BS)
  await g.createVolume({ name, sizeBytes: BLOCKS * BS, ...(storageClass === undefined ? {} : { storageClass }) })
  await g.write(name, 0, data)
  return data
}

/** Asserts that backup `held` on `target` verifies and restores the data it was taken of. */
export async function assertWhole (target: string, held: { id: string, sha256: string }): Promise<void> {
  await withInstance(async (g) => {
    const verification = await g.verifyBackup(held.id, { target })
    assert.equal(verification.ok, true, `backup ${held.id} reported success, so it must verify: ${JSON.stringify(verification.problems)}`)
    const restored = await g.restoreBackup(held.id, { name: 'restored', target })
    const data = await g.read(restored.id, 0, BLOCKS * BS)
    assert.equal(sha(data), held.sha256, 'the restore reads back what was backed up')
  })
}

// ---- The child's side ----

/**
 * Where a HeldTarget stops: putManifest (a backup or adoption, every chunk checked, before its
 * manifest), deleteChunk or deleteManifest (a deletion's first such call), chunkTime (the collection
 * runs, before it deletes anything) or removeDead (the re-read of a lease judged dead, just before
 * it is removed).
 */
export type HoldAt = 'putManifest' | 'deleteChunk' | 'deleteManifest' | 'chunkTime' | 'removeDead'

export interface LeaseRequest { rid: number, op: string, instance?: number, target: string, seed?: number, encrypted?: boolean, hold?: boolean, id?: string, holdAt?: HoldAt, graceSeconds?: number }

let releases: Array<() => void> = []
const released = async (): Promise<void> => { await new Promise<void>((resolve) => { releases.push(resolve) }) }
let volumes = 0

/** A directory target that stops once, at `at`, until the parent releases it. */
export class HeldTarget extends DirectoryBackupTarget {
  constructor (path: string, readonly rid: number, readonly at: HoldAt) { super({ path }) }
  #held = false
  async #hold (): Promise<void> {
    if (this.#held) return
    this.#held = true
    process.send?.({ event: this.at === 'putManifest' ? 'held' : 'holding', rid: this.rid })
    await released()
  }

  override async putManifest (id: string, data: Uint8Array): Promise<void> {
    if (this.at === 'putManifest') await this.#hold()
    await super.putManifest(id, data)
  }

  override async deleteChunk (id: string): Promise<void> {
    if (this.at === 'deleteChunk') await this.#hold()
    await super.deleteChunk(id)
  }

  override async deleteManifest (id: string): Promise<void> {
    if (this.at === 'deleteManifest') await this.#hold()
    await super.deleteManifest(id)
  }

  override async chunkTime (id: string): Promise<number | undefined> {
    if (this.at === 'chunkTime') await this.#hold()
    return await super.chunkTime(id)
  }

  override async getLease (id: string): Promise<Uint8Array | undefined> {
    // Called by leases.ts's removeDead (the re-read before a lease judged dead is removed).
    if (this.at === 'removeDead' && (new Error().stack ?? '').includes('removeDead')) await this.#hold()
    return await super.getLease(id)
  }
}

/** The target of a request: held at `at` when given, else the directory itself. */
export const heldOr = (request: LeaseRequest, at: HoldAt | undefined): string | HeldTarget => at === undefined ? request.target : new HeldTarget(request.target, request.rid, at)

type Op = (g: GalleonFS, request: LeaseRequest) => Promise<unknown>

const commonOps: Record<string, Op> = {
  backup: async (g, request) => {
    const name = `v${volumes++}`
    const data = await writeVolume(g, name, request.seed as number, request.encrypted === true ? 'sealed' : undefined)
    const backup = await g.createBackup(name, { target: heldOr(request, request.hold === true ? 'putManifest' : undefined) })
    return { id: backup.id, chunks: backup.chunks, sha256: sha(data) }
  },
  delete: async (g, request) => await g.deleteBackup(request.id as string, { target: heldOr(request, request.holdAt), ...(request.graceSeconds === undefined ? {} : { chunkGraceSeconds: request.graceSeconds }) })
}

/**
 * Serves the parent's requests in this child: opens `instances` GalleonFS instances (in memory),
 * runs `setup` on each, then answers backup, delete and the child's own `ops` until killed or told
 * to exit.
 */
export async function serveLeaseChild ({ instances: n, setup, ops = {} }: { instances: number, setup?: (g: GalleonFS) => Promise<void>, ops?: Record<string, Op> }): Promise<void> {
  // Leases refreshed every 200 ms instead of 10 s, so that one judged by watching it is taken for dead within seconds.
  leaseTiming.refreshMs = 200
  const instances: GalleonFS[] = []
  for (let i = 0; i < n; i++) instances.push(await GalleonFS.open({ inMemory: true }))
  for (const g of instances) await setup?.(g)
  const handle = async (request: LeaseRequest): Promise<unknown> => {
    const op = Object.hasOwn(ops, request.op) ? ops[request.op] : Object.hasOwn(commonOps, request.op) ? commonOps[request.op] : undefined
    if (op === undefined) throw new Error(`unknown op ${request.op}`)
    return await op(instances[request.instance ?? 0] as GalleonFS, request)
  }
  process.on('message', (message: LeaseRequest | null) => {
    if (message === null || typeof message !== 'object' || typeof message.op !== 'string') return
    if (message.op === 'release') {
      const waiting = releases
      releases = []
      for (const resolve of waiting) resolve()
      return
    }
    if (message.op === 'exit') {
      void Promise.allSettled(instances.map(async (g) => { await g.close() })).then(() => process.exit(0))
      return
    }
    handle(message).then((result) => { process.send?.({ rid: message.rid, result }) }, (err: Error & { code?: string }) => {
      process.send?.({ rid: message.rid, error: { code: err?.code ?? 'ERROR', message: err?.stack ?? String(err) } })
    })
  })
  // The preload unrefs the channel: this child lives until told to exit (or killed).
  ;(process.channel as { ref?: () => void } | undefined)?.ref?.()
  process.send?.({ ready: process.pid })
}
