// The daemon's structured log (one JSON object per line on stderr), and what it logs of the
// instance's own events.

import type { GalleonFS } from '../src/index.js'
import { LOG_LEVELS, type LogLevel } from './daemon-config.js'

/** Structured logs (one JSON object per line on stderr). */
export interface Logger {
  (level: LogLevel, message: string, fields?: Record<string, unknown>): void
  /** The level in effect: the configured one, else GALLEONFS_LOG or RUST_LOG, else info. */
  setLevel: (configured: LogLevel | undefined) => void
  readonly level: LogLevel
}

/** A logger; `RUST_LOG`-style values such as `galleonfs=debug` are understood. */
export function createLogger (env: NodeJS.ProcessEnv = process.env, configured?: LogLevel): Logger {
  const fromEnv = (env.GALLEONFS_LOG ?? env.RUST_LOG ?? 'info').toLowerCase().split(',')[0]?.split('=').pop() as LogLevel
  let level: LogLevel = 'info'
  const log = ((at: LogLevel, message: string, fields: Record<string, unknown> = {}): void => {
    if (LOG_LEVELS.indexOf(at) > LOG_LEVELS.indexOf(level)) return
    process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: at, message, ...fields }) + '\n')
  }) as Logger
  log.setLevel = (wanted) => { level = wanted ?? (LOG_LEVELS.includes(fromEnv) ? fromEnv : 'info') }
  Object.defineProperty(log, 'level', { get: () => level })
  log.setLevel(configured)
  return log
}

/**
 * What an operator reads in the daemon's log of what the instance does by itself: failures as
 * warnings; migrations (each phase once), replication roles, copies placed, dropped and resynced,
 * membership and leadership, and backup policy runs as info (a run with failures, and missed runs,
 * as warnings); replication links going down at debug (they retry).
 */
export function logEvents (g: GalleonFS, log: Logger): void {
  const on = (event: string, level: LogLevel, message: string, fields: (...args: never[]) => Record<string, unknown> = (payload: object) => ({ ...payload })): void => {
    (g.on as (event: string, listener: (...args: unknown[]) => void) => unknown)(event, (...args: unknown[]) => { log(level, message, fields(...(args as never[]))) })
  }
  // Events whose payload is logged as it is.
  const plain: Array<[string, LogLevel, string]> = [
    ['io:error', 'warn', 'I/O error'],
    ['checksum:mismatch', 'warn', 'checksum mismatch'],
    ['replication:error', 'warn', 'replication error'],
    ['replication:failover', 'warn', 'failed a volume over to another copy'],
    ['replication:out-of-sync', 'warn', 'a copy fell out of sync'],
    ['replication:link-down', 'debug', 'a replication link is down; retrying'],
    ['replication:in-sync', 'info', 'a copy is in sync'],
    ['replication:resynced', 'info', 'a copy was resynced'],
    ['replication:primary', 'info', 'this node is the primary of a volume'],
    ['replication:demoted', 'info', 'this node is no longer the primary of a volume'],
    ['replication:replica-added', 'info', 'copies placed'],
    ['replication:replica-removed', 'info', 'copies given up'],
    ['replication:copy-dropped', 'info', 'deleted a copy that was replaced']
  ]
  for (const [event, level, message] of plain) on(event, level, message)
  on('cluster:member-joined', 'info', 'a node joined', (m: { id: string, zone: string }) => ({ nodeId: m.id, zone: m.zone }))
  on('cluster:member-left', 'info', 'a node left', (m: { id: string }) => ({ nodeId: m.id }))
  on('cluster:member-health', 'info', 'a node changed health', (m: { id: string, healthy: boolean }) => ({ nodeId: m.id, healthy: m.healthy }))
  on('cluster:leader', 'info', 'this node leads the cluster')
  // Scheduled backups run with nobody watching: each run is logged, a failing one as a warning.
  g.on('backup-policy:ran', (run) => {
    const fields = { policy: run.policy, scheduledAt: run.scheduledAt, backups: run.backups.length, pruned: run.pruned.length, ...(run.collectionDeferred ? { collectionDeferred: run.deferredReasons } : {}) }
    if (run.errors.length === 0) log('info', 'backup policy ran', fields)
    else log('warn', 'backup policy run failed for some volumes', { ...fields, errors: run.errors })
  })
  on('backup-policy:missed', 'warn', 'backup policy runs were missed while the daemon was not running; one catch-up run follows')
  on('volume:migrated', 'info', 'volume migrated', (volume: { id: string, name: string, storageClass: string, pool?: string }, from: { storageClass: string, pool?: string }) => ({ volumeId: volume.id, volume: volume.name, storageClass: volume.storageClass, ...(volume.pool === undefined ? {} : { pool: volume.pool }), from }))
  // Progress comes often: a volume's migration is logged when its phase changes, and at most every
  // 5 s within one (so a migration that starts again after a failed one is seen).
  const phases = new Map<string, { phase: string, at: number }>()
  g.on('volume:migration-progress', (e) => {
    const last = phases.get(e.volumeId)
    const now = Date.now()
    if (last !== undefined && last.phase === e.phase && now - last.at < 5000) return
    if (e.phase === 'done') phases.delete(e.volumeId)
    else phases.set(e.volumeId, { phase: e.phase, at: now })
    log('info', 'volume migrating', { volumeId: e.volumeId, volume: e.volumeName, phase: e.phase, blocksDone: e.blocksDone, blocksTotal: e.blocksTotal })
  })
}
