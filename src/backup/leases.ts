// Leases on a backup target: one small record per backup, garbage collection or adoption running
// on it (in any process, on any host), rewritten while it runs. A collection deletes no unnamed
// chunk while a backup holds a live lease (its chunks are named by no manifest yet), and a backup
// waits for the collections that started before it; see collection.ts and createBackup in create.ts.
//
// Liveness never rests on the wall clock alone: a clock stepped forward (NTP, a resumed VM) makes
// every lease look old at once. A lease is live when its holder is this process (the process-wide
// set below), or is fresh by the wall clock; it is taken for dead only when its holder is a process
// of this machine that no longer exists (or, with our pid, this very thread, which does not hold
// it: a leftover of an earlier process; another thread of this process, worker_threads, has a set
// of its own and is judged as a process elsewhere), or when watched on the observer's monotonic
// clock it did not change for three of its holder's refresh intervals (a holder refreshes on a
// monotonic timer, so a step does not stop it); one that changed before it could be removed is
// live after all. Taking a live lease for dead is the only unsafe mistake, and it needs a holder
// stopped that long (SIGSTOP, a suspended VM): a backup then finds its lease gone or replaced,
// checks its chunks again after its manifest and fails (BUSY) rather than report a backup whose
// chunks were collected; a collection finds its lease gone before its next deletion and stops.

import { randomBytes, randomUUID } from 'node:crypto'
import { readFile, readlink } from 'node:fs/promises'
import { hostname } from 'node:os'
import { threadId } from 'node:worker_threads'
import type { BackupTarget } from '../drivers.js'
import { checkAborted } from './chunking.js'

/** Not public: how often a lease is rewritten (tests shorten it; observers read it from the lease). */
export const leaseTiming = { refreshMs: 10_000 }

/** What a lease's holder does on the target. */
export type LeaseRole = 'backup' | 'collect' | 'adopt'

/** A target that keeps leases (the optional lease methods of BackupTarget). */
export type LeasingTarget = BackupTarget & Required<Pick<BackupTarget, 'putLease' | 'getLease' | 'deleteLease' | 'listLeases'>>

/** Whether `target` keeps leases (targets without them are collected by chunk times alone, as before). */
export function leasing (target: BackupTarget): target is LeasingTarget {
  return typeof target.putLease === 'function' && typeof target.getLease === 'function' && typeof target.deleteLease === 'function' && typeof target.listLeases === 'function'
}

/** What a lease file holds (JSON). */
interface LeaseRecord {
  readonly kind: 'galleonfs-backup-lease'
  readonly format: 1
  readonly role: LeaseRole
  readonly host: string
  readonly pid: number
  /** The holder's thread (worker_threads.threadId; 0 is the main thread): threads share a pid. */
  readonly thread?: number
  /** Boot and pid namespace of the holder (Linux), within which its pid names it; absent elsewhere. */
  readonly scope?: string
  readonly startedAt: string
  /** Holder's wall clock at the last refresh (ms since the epoch): only ever a reason to think it live. */
  readonly refreshedAt: number
  readonly refreshMs: number
  readonly beat: number
  readonly nonce: string
}

/** Lease ids held by this process, shared by every copy of the library loaded in it. */
const HELD: Set<string> = ((globalThis as Record<symbol, unknown>)[Symbol.for('galleonfs.backupTargetLeases')] ??= new Set<string>()) as Set<string>
/** Fresh by the wall clock within this (or six refreshes, if longer): cross-host skew stays well inside it. */
const FRESH_MS = 60_000
/** Added to the three refresh intervals a lease is watched for, for a busy holder. */
const WATCH_SLACK_MS = 2_000
const MIN_REFRESH_MS = 10
const MAX_REFRESH_MS = 300_000

let scopeOfThisProcess: Promise<string | undefined> | undefined
/** This process's boot and pid namespace (Linux): two processes whose scopes are equal share pids. */
async function processScope (): Promise<string | undefined> {
  scopeOfThisProcess ??= (async () => {
    try {
      const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()
      const pids = await readlink('/proc/self/ns/pid')
      return boot.length > 0 && pids.length > 0 ? `${boot}/${pids}` : undefined
    } catch {
      return undefined
    }
  })()
  return await scopeOfThisProcess
}

function parse (bytes: Uint8Array): LeaseRecord | undefined {
  try {
    const record = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<LeaseRecord> | null
    if (record?.kind !== 'galleonfs-backup-lease' || typeof record.refreshedAt !== 'number' || typeof record.pid !== 'number') return undefined
    return record as LeaseRecord
  } catch {
    return undefined
  }
}

function same (a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  return a !== undefined && b !== undefined && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b)
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** A lease this process holds on a target, rewritten every leaseTiming.refreshMs until ended. */
export class TargetLease {
  readonly id = randomUUID()
  readonly #target: LeasingTarget
  readonly #role: LeaseRole
  readonly #scope: string | undefined
  readonly #startedAt = new Date().toISOString()
  readonly #nonce = randomBytes(8).toString('hex')
  readonly #refreshMs = Math.min(MAX_REFRESH_MS, Math.max(MIN_REFRESH_MS, leaseTiming.refreshMs))
  #beat = 0
  #bytes: Uint8Array | undefined
  #timer: NodeJS.Timeout | undefined
  /** Reads and writes of the lease, one at a time (the timer's and the holder's). */
  #chain: Promise<unknown> = Promise.resolve()
  #ended = false
  /**
   * Set when the lease was found gone or not as last written (a collection took it for dead, and
   * may have collected since), or could not be rewritten. The holder clears it once it has acted.
   */
  lost = false

  private constructor (target: LeasingTarget, role: LeaseRole, scope: string | undefined) {
    this.#target = target
    this.#role = role
    this.#scope = scope
  }

  /** Takes a lease on `target` (undefined for a target that keeps none); rejects if it cannot be written. */
  static async take (target: BackupTarget, role: LeaseRole): Promise<TargetLease | undefined> {
    if (!leasing(target)) return undefined
    const lease = new TargetLease(target, role, await processScope())
    HELD.add(lease.id)
    try {
      await lease.#write()
    } catch (err) {
      HELD.delete(lease.id)
      throw err
    }
    // On the monotonic clock: a wall-clock step neither delays nor hurries it.
    lease.#timer = setInterval(() => { lease.refresh().catch(() => {}) }, lease.#refreshMs)
    lease.#timer.unref()
    return lease
  }

  async #serial<T> (task: () => Promise<T>): Promise<T> {
    const run = this.#chain.catch(() => {}).then(task)
    this.#chain = run
    return await run
  }

  async #write (): Promise<void> {
    const record: LeaseRecord = { kind: 'galleonfs-backup-lease', format: 1, role: this.#role, host: hostname(), pid: process.pid, thread: threadId, ...(this.#scope === undefined ? {} : { scope: this.#scope }), startedAt: this.#startedAt, refreshedAt: Date.now(), refreshMs: this.#refreshMs, beat: this.#beat++, nonce: this.#nonce }
    const bytes = new Uint8Array(Buffer.from(JSON.stringify(record) + '\n'))
    await this.#target.putLease(this.id, bytes)
    this.#bytes = bytes
  }

  /** Rewrites the lease now (re-creating it if it was removed, which sets `lost`). */
  async refresh (): Promise<void> {
    await this.#serial(async () => {
      if (this.#ended) return
      try {
        if (!same(await this.#target.getLease(this.id), this.#bytes)) this.lost = true
        await this.#write()
      } catch (err) {
        this.lost = true
        throw err
      }
    })
  }

  /** Whether the lease is still there as last written (no collection removed it meanwhile). */
  async intact (): Promise<boolean> {
    return await this.#serial(async () => same(await this.#target.getLease(this.id), this.#bytes))
  }

  /** Stops refreshing and removes the lease. */
  async end (): Promise<void> {
    this.#ended = true
    clearInterval(this.#timer)
    await this.#chain.catch(() => {})
    try {
      await this.#target.deleteLease(this.id)
    } finally {
      HELD.delete(this.id)
    }
  }
}

/** Whether a lease is held by a running holder ('live'), by none ('dead'), or gone already. */
type Liveness = 'live' | 'dead' | 'gone'

/** Whether process `pid` of this machine's pid namespace exists (EPERM: it does, as another user's). */
function processExists (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH'
  }
}

/** Whether the holder of a lease (read as `bytes`, not held here) is known to be gone, without watching it. */
async function holderGone (bytes: Uint8Array): Promise<boolean> {
  const record = parse(bytes)
  const scope = await processScope()
  if (record === undefined || scope === undefined || record.scope !== scope || !Number.isSafeInteger(record.pid) || record.pid <= 0) return false
  // Its holder is (was) a process of this machine sharing our pids: present or not settles it, but
  // for a pid since reused by another process, which is only watched. With our pid: this thread
  // holds no such lease, so it is an earlier process's; another thread of ours is alive.
  if (record.pid === process.pid) return (record.thread ?? 0) === threadId
  return !processExists(record.pid)
}

/** Judges lease `id` (read as `bytes`); see the top of this file. */
async function judge (target: LeasingTarget, id: string, bytes: Uint8Array, signal?: AbortSignal): Promise<Liveness> {
  if (HELD.has(id)) return 'live'
  const record = parse(bytes)
  if (await holderGone(bytes)) return 'dead'
  const refreshMs = refreshOf(bytes)
  if (record !== undefined && Math.abs(Date.now() - record.refreshedAt) <= Math.max(FRESH_MS, 6 * refreshMs)) return 'live'
  // Looks old (or from the future): its holder is gone, or a clock stepped. Watch it change.
  const deadline = performance.now() + 3 * refreshMs + WATCH_SLACK_MS
  const every = Math.min(1000, Math.max(MIN_REFRESH_MS, Math.floor(refreshMs / 4)))
  while (performance.now() < deadline) {
    checkAborted(signal)
    await sleep(every)
    const now = await target.getLease(id)
    if (now === undefined) return 'gone'
    if (!same(now, bytes)) return 'live'
  }
  return 'dead'
}

/**
 * Removes a lease judged dead, unless it changed since it was read as `bytes`: its holder is back
 * (it resumed after the watch ended), so the lease is live after all ('changed').
 */
async function removeDead (target: LeasingTarget, id: string, bytes: Uint8Array): Promise<'removed' | 'changed' | 'gone'> {
  const now = await target.getLease(id)
  if (now === undefined) return 'gone'
  if (!same(now, bytes)) return 'changed'
  await target.deleteLease(id)
  return 'removed'
}

/** The refresh interval a lease (read as `bytes`) names, within bounds. */
function refreshOf (bytes: Uint8Array): number {
  const record = parse(bytes)
  return Math.min(MAX_REFRESH_MS, Math.max(MIN_REFRESH_MS, Number.isFinite(record?.refreshMs) ? record?.refreshMs as number : leaseTiming.refreshMs))
}

/** The other leases on the target, with what each holds and its role (unreadable ones count as backups). */
async function otherLeases (target: LeasingTarget, own: string | undefined): Promise<Array<{ id: string, bytes: Uint8Array, role: string }>> {
  const out: Array<{ id: string, bytes: Uint8Array, role: string }> = []
  for await (const id of target.listLeases()) {
    if (id === own) continue
    const bytes = await target.getLease(id)
    if (bytes !== undefined) out.push({ id, bytes, role: parse(bytes)?.role ?? 'backup' })
  }
  return out
}

/**
 * Who holds a lease (read as `bytes`), for messages: what runs, in which process on which host,
 * since when, and the lease's id (its file name in a directory target's `leases/`).
 */
export function describeLease (id: string, bytes: Uint8Array): string {
  const record = parse(bytes)
  if (record === undefined) return `a lease this version cannot read (${id}), taken for a running backup's`
  const what = record.role === 'adopt' ? 'an adoption' : record.role === 'collect' ? 'a garbage collection' : 'a backup'
  const where = HELD.has(id) || (record.pid === process.pid && record.host === hostname()) ? `this process (pid ${record.pid})` : `process ${record.pid} on host ${record.host}`
  return `${what} running in ${where} since ${record.startedAt} (lease ${id})`
}

/**
 * The live leases of backups and adoptions running on the target (not `own`), judged together,
 * each with its holder (describeLease); leases found dead are removed. A collection deletes no
 * unnamed chunk while there is one (an adoption rewrites manifests the deletion may have read, or
 * removed, whose chunks must stay).
 */
export async function liveBackupLeases (target: LeasingTarget, own: string | undefined): Promise<Array<{ id: string, holder: string }>> {
  const backups = (await otherLeases(target, own)).filter((lease) => lease.role !== 'collect')
  const judged = await Promise.all(backups.map(async (lease) => ({ ...lease, liveness: await judge(target, lease.id, lease.bytes) })))
  for (const lease of judged) {
    if (lease.liveness === 'dead' && await removeDead(target, lease.id, lease.bytes) === 'changed') lease.liveness = 'live'
  }
  return judged.filter((lease) => lease.liveness === 'live').map((lease) => ({ id: lease.id, holder: describeLease(lease.id, lease.bytes) }))
}

/**
 * Removes the leases (not `own`) whose holders are known to be gone without watching them (a
 * process of this machine that no longer exists): a backup or deletion calls it, so that a killed
 * process's lease does not keep the target's .tmp- files from being removed at open.
 */
export async function removeAbandoned (target: LeasingTarget, own: string | undefined): Promise<void> {
  for (const lease of await otherLeases(target, own)) {
    if (!HELD.has(lease.id) && await holderGone(lease.bytes)) await removeDead(target, lease.id, lease.bytes)
  }
}

/**
 * Waits until no collection runs on the target (leases of dead ones are removed). A backup calls
 * it once its own lease is written: a collection that started before may be deleting chunks the
 * backup is about to reuse; one that starts after sees the lease and collects nothing.
 */
export async function waitForCollections (target: LeasingTarget, own: string, signal?: AbortSignal): Promise<void> {
  // Each lease as first seen, and when (monotonic): one still fresh by the wall clock (a holder
  // killed on another host, or in a pid namespace of a restarted container) is taken for dead once
  // it did not change for as long as judge() would watch it, not first waited out on the wall clock.
  const seen = new Map<string, { bytes: Uint8Array, at: number }>()
  for (;;) {
    checkAborted(signal)
    const collections = (await otherLeases(target, own)).filter((lease) => lease.role === 'collect')
    if (collections.length === 0) return
    const judged = await Promise.all(collections.map(async (lease) => {
      let liveness = await judge(target, lease.id, lease.bytes, signal)
      const first = seen.get(lease.id)
      if (first === undefined || !same(first.bytes, lease.bytes)) seen.set(lease.id, { bytes: lease.bytes, at: performance.now() })
      else if (liveness === 'live' && !HELD.has(lease.id) && performance.now() - first.at > 3 * refreshOf(lease.bytes) + WATCH_SLACK_MS) liveness = 'dead'
      return { ...lease, liveness }
    }))
    for (const lease of judged) {
      if (lease.liveness === 'dead' && await removeDead(target, lease.id, lease.bytes) === 'changed') lease.liveness = 'live'
    }
    if (!judged.some((lease) => lease.liveness === 'live')) return
    await sleep(Math.min(100, Math.max(MIN_REFRESH_MS, Math.floor(leaseTiming.refreshMs / 4))))
  }
}

/** Whether the target holds any lease at all (a collection without its own lease checks before each deletion). */
export async function anyLease (target: LeasingTarget, own?: string): Promise<boolean> {
  for await (const id of target.listLeases()) if (id !== own) return true
  return false
}
