// The daemon's HTTP/JSON API: the routes (library calls, nothing more), what a route may use
// besides the library, request bodies, and the errors a route answers with.

import type { IncomingMessage } from 'node:http'
import { isAbsolute, join, resolve } from 'node:path'
import type { GalleonFS, ProgressListener } from '../src/index.js'
import type { NbdServer } from '../backends/nbd/index.js'
import { formatAddress, parseAddress, type DaemonConfig } from './daemon-config.js'
import type { SavedMount } from './daemon-mounts.js'
import { auditQuery, auditRoute } from './daemon-audit.js'

/** Standard base64, padded: what the write endpoint takes. */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/
/** Largest request body accepted. */
const MAX_BODY_BYTES = 1024 * 1024
/**
 * How long a request body may go without a byte arriving before it is answered 408 and its
 * connection closed (a body is at most MAX_BODY_BYTES of JSON: a client sends it at once). Without
 * it, a client that stopped mid-body held its request open until Node.js's own limit (300 s),
 * which ends the connection without an answer.
 */
export const BODY_IDLE_MS = 30_000
/** Bytes of a refused request's body read and dropped before its connection is closed. */
const MAX_DISCARD_BYTES = 16 * MAX_BODY_BYTES

/** What a route may use besides the library. */
export interface RouteContext {
  startedAt: number
  stop: () => Promise<void>
  restart: () => void
  reload: () => Promise<ReloadReport>
  nbd: () => NbdServer | undefined
  /** Set when the client streams: long operations report to it. */
  progress?: ProgressListener
  /** Aborted when the client goes away before the answer is complete. */
  signal: AbortSignal
  cluster: { join: (address: string, signal?: AbortSignal) => Promise<unknown>, leave: (force: boolean) => Promise<unknown> }
  /** Changes the saved mounts (one change at a time). */
  updateSavedMounts: (change: (saved: SavedMount[]) => SavedMount[]) => Promise<void>
}

/** What a reload changed, and which changed settings wait for a restart. */
export interface ReloadReport {
  applied: string[]
  needsRestart: string[]
}

export class HttpError extends Error {
  /** `closeConnection`: the request was not read to its end, so its connection cannot carry another one. */
  constructor (readonly status: number, readonly code: string, message: string, readonly closeConnection = false) { super(message) }
}

/** Option names whose values may be secrets. */
const SECRET_NAME = /secret|token|password|passphrase|credential|key/i

/** A value with every entry under a name that may be a secret left out, at every depth (tables, arrays of tables). */
function withoutSecrets (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutSecrets)
  if (value === null || typeof value !== 'object') return value
  return Object.fromEntries(Object.entries(value).map(([key, entry]) => [key, SECRET_NAME.test(key) ? '(not shown)' : withoutSecrets(entry)]))
}

/** Driver options as `GET /v1/config` shows them: values that may be secrets (or, with `all`, every value) left out. */
function redactedOptions (options: Record<string, unknown> | undefined, all: boolean): Record<string, unknown> | undefined {
  if (options === undefined) return undefined
  return all ? Object.fromEntries(Object.keys(options).map((key) => [key, '(not shown)'])) : withoutSecrets(options) as Record<string, unknown>
}

/** What `GET /v1/config` shows: KMS arguments and URL parts that may hold secrets left out. */
function redacted (config: DaemonConfig): Record<string, unknown> {
  const url = config.kmsUrl === undefined ? undefined : new URL(config.kmsUrl)
  return {
    ...config,
    keyProviderOptions: redactedOptions(config.keyProviderOptions, true),
    blockStoreOptions: redactedOptions(config.blockStoreOptions, false),
    backupTargetOptions: redactedOptions(config.backupTargetOptions, false),
    mountDriverOptions: redactedOptions(config.mountDriverOptions, false),
    ...(config.kmsCommand === undefined ? {} : { kmsCommand: [config.kmsCommand[0], ...(config.kmsCommand.length > 1 ? [`(${config.kmsCommand.length - 1} argument(s) not shown)`] : [])] }),
    ...(url === undefined ? {} : { kmsUrl: `${url.origin}${url.pathname}${url.search === '' ? '' : '?(not shown)'}` })
  }
}

/** Options of a long operation: progress to a streaming client, cancelled when the client goes. */
function progress (daemon: RouteContext): { onProgress?: ProgressListener, signal: AbortSignal } {
  return { signal: daemon.signal, ...(daemon.progress === undefined ? {} : { onProgress: daemon.progress }) }
}

/** A request refused for one field: 400 naming the field, what it must be, and what came. */
function invalid (field: string, expected: string, value: unknown): HttpError {
  return new HttpError(400, 'INVALID_ARGUMENT', `${field} must be ${expected}, got ${shown(value)}`)
}

/** A value as an error message shows it (strings quoted and cut short). */
function shown (value: unknown): string {
  if (value === undefined) return 'nothing'
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'a list'
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value)
  return typeof value === 'object' ? 'an object' : String(value)
}

/** The request body's fields: no body is no fields; any JSON other than an object is refused. */
function fieldsOf (body: unknown): Record<string, unknown> {
  if (body === undefined) return {}
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw invalid('the request body', 'a JSON object of fields', body)
  return body as Record<string, unknown>
}

/** An optional string field (absent: undefined); 400 naming it when it is there but no non-empty string. */
function optionalString (fields: Record<string, unknown>, field: string, expected = 'a non-empty string'): string | undefined {
  const value = fields[field]
  if (value === undefined) return undefined
  if (typeof value !== 'string' || value.length === 0) throw invalid(field, expected, value)
  return value
}

/** A string field the request cannot do without. */
function requiredString (fields: Record<string, unknown>, field: string, expected: string): string {
  const value = optionalString(fields, field, expected)
  if (value === undefined) throw invalid(field, expected, undefined)
  return value
}

/** An optional true/false field. */
function optionalBoolean (fields: Record<string, unknown>, field: string): boolean | undefined {
  const value = fields[field]
  if (value !== undefined && typeof value !== 'boolean') throw invalid(field, 'true or false', value)
  return value
}

/** A byte count or offset field the request cannot do without. */
function requiredNumber (fields: Record<string, unknown>, field: string, expected: string): number {
  const value = fields[field]
  if (typeof value !== 'number') throw invalid(field, expected, value)
  return value
}

/**
 * An optional path field. It must be absolute: the daemon runs in a working directory of its own,
 * so a relative path would name another place than the caller's (the CLI resolves it where it runs).
 */
function absolutePath (value: unknown, field: string, what: string): string | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'string' || value.length === 0) throw invalid(field, `${what}, an absolute path`, value)
  if (!isAbsolute(value)) throw invalid(field, `${what}, an absolute path (the daemon's working directory is not the caller's: resolve it first, as the CLI does)`, value)
  return value
}

/** A true/false query parameter such as `?force=true` (absent: false). */
function queryFlag (url: URL, name: string): boolean {
  const value = url.searchParams.get(name)
  if (value === null || value === 'false') return false
  if (value === 'true') return true
  throw invalid(`the query parameter ${name}`, 'true or false', value)
}

/**
 * The body fields each route reads. A field a route does not read is refused (400) rather than
 * ignored: a misspelt `targt` would otherwise back up to the default target, a misspelt `strategy`
 * take a full backup. Routes whose body the library checks itself (createVolume, QoS policies,
 * pools, storage classes, backup policies) are not listed, nor are GET and DELETE routes (which
 * read no body) and unknown routes (answered 404).
 */
const BODY_FIELDS: Readonly<Record<string, readonly string[]>> = {
  'POST /v1/volumes/:/write': ['offset', 'data', 'concern'],
  'POST /v1/volumes/:/read': ['offset', 'length'],
  'POST /v1/volumes/:/migrate': ['storageClass', 'pool', 'node'],
  'POST /v1/volumes/:/expand': ['sizeBytes'],
  'POST /v1/volumes/:/clone': ['name', 'snapshot'],
  'POST /v1/volumes/:/mount': ['path', 'options'],
  'POST /v1/unmount': ['target', 'path', 'force'],
  'POST /v1/volumes/:/snapshots': ['name'],
  'POST /v1/backups': ['volume', 'strategy', 'target'],
  'POST /v1/backups/:/restore': ['name', 'volume', 'pool', 'target'],
  'POST /v1/backups/:/verify': ['target'],
  'POST /v1/backups/:/adopt': ['target'],
  'POST /v1/cluster/:': ['force', 'node', 'address'],
  'POST /v1/volumes/:/flush': [],
  'POST /v1/volumes/:/snapshots/:/restore': [],
  'POST /v1/backup-policies/:/run': [],
  'POST /v1/shutdown': [],
  'POST /v1/reload': [],
  'POST /v1/restart': []
}

/** 400 naming the first body field `key`'s route does not read. */
function checkBodyFields (key: string, fields: Record<string, unknown>): void {
  const known = BODY_FIELDS[key]
  if (known === undefined) return
  const unknown = Object.keys(fields).find((field) => !known.includes(field))
  if (unknown === undefined) return
  throw new HttpError(400, 'INVALID_ARGUMENT', known.length === 0
    ? `${key.replace(/:/g, '<name>')} takes no body fields, got ${JSON.stringify(unknown)}`
    : `unknown field ${JSON.stringify(unknown)} for ${key.replace(/:/g, '<name>')}; it takes ${known.join(', ')}`)
}

/** The backup target a request names (body or query), if any: a directory path on the daemon's machine. */
function target (url: URL, fields: Record<string, unknown> = {}): { target?: string } {
  const value = absolutePath(fields.target ?? url.searchParams.get('target') ?? undefined, 'target', 'a backup target directory')
  return value === undefined ? {} : { target: value }
}

/** A body over the limit: refused as soon as that is known, from its Content-Length or as it comes. */
function tooLarge (): HttpError {
  return new HttpError(413, 'TOO_LARGE', `request bodies are limited to ${MAX_BODY_BYTES} bytes`)
}

/**
 * Reads and drops what is left of a request body that will not be used (the request was refused
 * before or while it was read), so that the client gets its answer rather than a reset; past a
 * bound the connection is closed.
 */
export function discardBody (request: IncomingMessage): void {
  if (request.complete || request.destroyed) return
  let size = 0
  request.on('data', (chunk: Buffer) => {
    size += chunk.byteLength
    if (size > MAX_DISCARD_BYTES) request.destroy()
  })
}

/**
 * The request body as JSON (none: undefined). Over the limit it is refused at once, not after the
 * client sent all of it (a body that never ends, chunked or of a large Content-Length, would be
 * answered never); the rest is dropped as {@link discardBody} does.
 */
export async function readBody (request: IncomingMessage, idleMs = BODY_IDLE_MS): Promise<unknown> {
  const declared = request.headers['content-length']
  if (declared !== undefined && Number(declared) > MAX_BODY_BYTES) {
    discardBody(request)
    throw tooLarge()
  }
  const text = await new Promise<string>((resolve, reject) => {
    // A client gone mid-body is no failure of the daemon's: answered (to no one) 499, not logged as an error.
    const gone = (): void => { reject(new HttpError(499, 'CANCELLED', 'the client went away before it had sent the whole request')) }
    if (request.destroyed) { gone(); return }
    const chunks: Buffer[] = []
    let size = 0
    const idle = setTimeout(() => {
      request.pause()
      reject(new HttpError(408, 'REQUEST_TIMEOUT', `the request body stopped arriving: nothing for ${idleMs / 1000} s after ${size} bytes${declared === undefined ? '' : ` of the ${declared} announced`}; the request was not run. Send the whole body at once, and check the client's connection`, true))
    }, idleMs)
    request.once('close', () => { clearTimeout(idle) })
    request.once('end', () => { clearTimeout(idle) })
    request.on('data', (chunk: Buffer) => {
      idle.refresh()
      size += chunk.byteLength
      if (size > MAX_DISCARD_BYTES) request.destroy()
      else if (size > MAX_BODY_BYTES) { clearTimeout(idle); reject(tooLarge()) }
      else chunks.push(chunk)
    })
    request.once('end', () => { resolve(Buffer.concat(chunks).toString('utf8')) })
    request.once('close', () => { if (!request.complete) gone() })
  })
  if (text.length === 0) return undefined
  try {
    return JSON.parse(text)
  } catch {
    throw new HttpError(400, 'INVALID_ARGUMENT', 'the request body is not valid JSON')
  }
}

/** The API: library calls, nothing more. */
export async function route (g: GalleonFS, config: DaemonConfig, method: string, url: URL, body: unknown, daemon: RouteContext): Promise<unknown> {
  const segments = url.pathname.split('/').slice(1)
  // An empty segment before the last (`/v1/volumes//qos`, a client's empty name) would otherwise
  // vanish and name another thing: DELETE /v1/volumes//qos would delete the volume "qos".
  if (segments.slice(0, -1).some((segment) => segment.length === 0)) {
    throw new HttpError(400, 'INVALID_ARGUMENT', `the path ${url.pathname} holds an empty segment; names and ids are never empty`)
  }
  const parts = segments.filter((p) => p.length > 0).map((part) => {
    try {
      return decodeURIComponent(part)
    } catch {
      throw new HttpError(400, 'INVALID_ARGUMENT', `the path segment ${JSON.stringify(part)} holds a malformed percent-escape; encode names with encodeURIComponent`)
    }
  })
  // Path shape: /v1/<collection>/<name>/<sub-collection>/<name>: names become ':'.
  const key = `${method} /${parts.map((p, i) => i === 2 || i === 4 ? ':' : p).join('/')}`
  const ref = parts[2] as string
  const sub = parts[4] as string
  const options = fieldsOf(body)
  checkBodyFields(key, options)
  switch (key) {
    case 'GET /metrics': return await g.metricsText()
    case 'GET /v1/status': {
      const volumes = await g.listVolumes()
      const nbd = daemon.nbd()
      return { state: 'running', pid: process.pid, uptimeSeconds: Math.round((Date.now() - daemon.startedAt) / 1000), storagePath: resolve(config.storagePath), backend: g.backend, blockSize: g.blockSize, volumes: volumes.length, mounts: g.mounts.listMounts().length, nbdAddress: nbd === undefined ? null : formatAddress(nbd.host, nbd.port), nbdTls: nbd === undefined ? null : nbd.tls ? 'required' : 'off', ipcTls: config.ipcTlsCertFile !== undefined }
    }
    case 'GET /v1/config': return redacted(config)
    case 'POST /v1/shutdown':
      setImmediate(() => { void daemon.stop() })
      return { state: 'stopping' }
    case 'POST /v1/reload': return await daemon.reload()
    case 'POST /v1/restart':
      setImmediate(() => { daemon.restart() })
      return { state: 'restarting', pid: process.pid }
    case 'GET /v1/volumes': return await g.listVolumes()
    case 'POST /v1/volumes': return await g.createVolume(options as never)
    case 'GET /v1/volumes/:': return { ...await g.getVolume(ref), usage: await g.getVolumeUsageDetails(ref) }
    case 'DELETE /v1/volumes/:':
      await g.deleteVolume(ref, { force: queryFlag(url, 'force') })
      // A forced delete unmounts the volume: a restart must not try to mount it again.
      if (config.mountPoint !== undefined) {
        const volumeIds = new Set((await g.listVolumes()).map((volume) => volume.id))
        await daemon.updateSavedMounts((saved) => saved.filter((m) => volumeIds.has(m.volumeId)))
      }
      return undefined
    case 'GET /v1/volumes/:/replication': return await g.replicationStatus(ref)
    case 'GET /v1/volumes/:/qos': return { ...await g.getQoSPolicy(ref), metrics: (await g.getVolumeMetrics(ref)).qos }
    case 'PUT /v1/volumes/:/qos': return await g.setQoSPolicy(ref, options as never)
    case 'DELETE /v1/volumes/:/qos': return await g.clearQoSPolicy(ref)
    case 'POST /v1/volumes/:/flush':
      await g.flush(ref)
      return undefined
    case 'POST /v1/volumes/:/write': {
      // Block I/O for scripts and checks: data in base64, with a write concern.
      const offset = requiredNumber(options, 'offset', 'the byte offset to write at (write takes { offset, data (base64), concern? })')
      if (typeof options.data !== 'string') throw invalid('data', 'the bytes to write, in base64', options.data)
      // Buffer.from() skips characters that are not base64, so a mistake would write other bytes.
      if (!BASE64.test(options.data)) throw new HttpError(400, 'INVALID_ARGUMENT', 'write data must be base64 (A-Z, a-z, 0-9, + and /, padded with = to a multiple of 4 characters)')
      const concern = optionalString(options, 'concern', 'a write concern such as WriteDurable') ?? 'WriteAcknowledged'
      await g.write(ref, offset, Buffer.from(options.data, 'base64'), concern as never)
      return undefined
    }
    case 'POST /v1/volumes/:/read': {
      const offset = requiredNumber(options, 'offset', 'the byte offset to read at (read takes { offset, length })')
      const length = requiredNumber(options, 'length', 'the number of bytes to read (read takes { offset, length })')
      if (length > 16 << 20) throw new HttpError(400, 'INVALID_ARGUMENT', `read at most 16 MiB at once, not ${length} bytes`)
      return { data: Buffer.from(await g.read(ref, offset, length)).toString('base64') }
    }
    case 'POST /v1/volumes/:/migrate': {
      // Progress in blocks, reported to a streaming client in bytes (what the CLI's bar draws).
      const storageClass = optionalString(options, 'storageClass', 'the name of a storage class')
      const pool = optionalString(options, 'pool', 'the name of a storage pool')
      const node = optionalString(options, 'node', 'a cluster node id')
      const blockSize = (await g.getVolume(ref)).blockSize
      const onProgress = daemon.progress
      return await g.migrateVolume(ref, {
        ...(storageClass === undefined ? {} : { storageClass }),
        ...(pool === undefined ? {} : { pool }),
        ...(node === undefined ? {} : { node })
      }, { signal: daemon.signal, ...(onProgress === undefined ? {} : { onProgress: (event) => { onProgress({ bytesDone: event.blocksDone * blockSize, bytesTotal: event.blocksTotal * blockSize }) } }) })
    }
    case 'POST /v1/volumes/:/expand': {
      const size = options.sizeBytes
      if (typeof size !== 'number' && typeof size !== 'string') throw invalid('sizeBytes', 'the new size: a number of bytes or a string such as "2G"', size)
      return await g.expandVolume(ref, size)
    }
    case 'POST /v1/volumes/:/clone': {
      const name = requiredString(options, 'name', 'the name of the new volume')
      const snapshot = optionalString(options, 'snapshot', 'the name or id of a snapshot of the volume')
      return await g.cloneVolume(snapshot === undefined ? ref : { volume: ref, snapshot }, name)
    }
    case 'POST /v1/volumes/:/mount': {
      if (config.mountPoint === undefined) throw new HttpError(409, 'NO_MOUNT_POINT', 'this daemon was started without --mount-point, so it cannot mount volumes; restart it with --mount-point <dir>')
      const path = absolutePath(options.path, 'path', 'the mount point') ?? join(config.mountPoint, ref)
      const given = options.options
      // Comma-separated (as the CLI sends them) or a list.
      if (given !== undefined && typeof given !== 'string' && !(Array.isArray(given) && given.every((o) => typeof o === 'string'))) throw invalid('options', 'mount options: a comma-separated string such as "ro,sync", or a list of strings', given)
      const strings = given === undefined ? [] : (typeof given === 'string' ? given.split(',') : given as string[]).map((o) => o.trim()).filter((o) => o.length > 0)
      const id = await g.mounts.mountVolume(ref, path, { options: strings })
      const mount = g.mounts.listMounts().find((m) => m.id === id)
      if (mount !== undefined) await daemon.updateSavedMounts((saved) => [...saved.filter((m) => m.path !== mount.path), { volumeId: mount.volumeId, path: mount.path, options: strings }])
      return mount
    }
    case 'POST /v1/unmount': {
      // { target, path?, force? }: target is a mount id, a volume name or id, or a mount point;
      // path is the mount point target names, made absolute by the caller (a relative target is
      // not resolved here: the daemon's working directory is not the caller's).
      const named = requiredString(options, 'target', 'what to unmount: a mount id, a volume name or id, or an absolute mount point')
      const path = absolutePath(options.path, 'path', 'the mount point the target names')
      const force = optionalBoolean(options, 'force') ?? false
      const at = path !== undefined ? resolve(path) : isAbsolute(named) ? resolve(named) : undefined
      const mounts = g.mounts.listMounts()
      const byPath = (): typeof mounts[number] | undefined => at === undefined ? undefined : mounts.find((m) => m.path === at)
      const byVolume = (): typeof mounts[number] | undefined => mounts.find((m) => m.volumeName === named || m.volumeId === named)
      // A target written as a path (`./data`, `mnt/data`) is a path first; a bare word a volume first.
      const asPath = named.includes('/') || named === '.' || named === '..'
      const mount = mounts.find((m) => m.id === named) ?? (asPath ? byPath() ?? byVolume() : byVolume() ?? byPath())
      if (mount === undefined) {
        throw new HttpError(400, 'INVALID_ARGUMENT', `nothing is mounted as ${JSON.stringify(named)}${at === undefined || at === named ? '' : ` (${at})`}; name a mount id, a volume name or id, or an absolute mount point (GET /v1/mounts lists the mounts)`)
      }
      await g.mounts.unmountVolume(mount.id, { force })
      await daemon.updateSavedMounts((saved) => saved.filter((m) => m.path !== mount.path))
      return undefined
    }
    case 'GET /v1/mounts': return g.mounts.listMounts()
    case 'GET /v1/volumes/:/snapshots': return await g.listSnapshots(ref)
    case 'POST /v1/volumes/:/snapshots': return await g.createSnapshot(ref, requiredString(options, 'name', 'the snapshot\'s name'))
    case 'DELETE /v1/volumes/:/snapshots/:':
      await g.deleteSnapshot(ref, sub, { force: queryFlag(url, 'force') })
      return undefined
    case 'POST /v1/volumes/:/snapshots/:/restore': return await g.restoreSnapshot(ref, sub)
    case 'GET /v1/backups': return await g.listBackups(url.searchParams.get('volume') ?? undefined, target(url))
    case 'POST /v1/backups': {
      const volume = requiredString(options, 'volume', 'the name or id of the volume to back up')
      const strategy = optionalString(options, 'strategy', 'full, incremental or differential')
      return await g.createBackup(volume, { ...(strategy === undefined ? {} : { strategy: strategy as never }), ...target(url, options), ...progress(daemon) })
    }
    case 'POST /v1/backups/:/restore': {
      const name = optionalString(options, 'name', 'the name of the new volume to restore into')
      const volume = optionalString(options, 'volume', 'the name or id of the volume to restore over')
      const pool = optionalString(options, 'pool', 'the name of a storage pool')
      return await g.restoreBackup(ref, { ...(name === undefined ? {} : { name }), ...(volume === undefined ? {} : { volume }), ...(pool === undefined ? {} : { pool }), ...target(url, options), ...progress(daemon) })
    }
    case 'POST /v1/backups/:/verify': return await g.verifyBackup(ref, target(url, options))
    case 'POST /v1/backups/:/adopt': return await g.adoptBackup(ref, target(url, options))
    case 'GET /v1/backup-policies': return await g.listBackupPolicies()
    case 'POST /v1/backup-policies':
      // The policy keeps its target for later runs: a relative one would be the daemon's.
      absolutePath(options.target, 'target', 'a backup target directory')
      // Without a target of its own a policy backs up to the daemon's default one: with none, every
      // run would fail (at night, unseen), so the policy is refused now.
      if (options.target === undefined && config.backupTarget === undefined) {
        throw new HttpError(400, 'INVALID_ARGUMENT', 'this daemon has no default backup target, so the policy needs a target of its own: give it --target <dir> (or set backup_target in [drivers] and restart the daemon)')
      }
      return await g.createBackupPolicy(options as never)
    case 'GET /v1/backup-policies/:': return await g.getBackupPolicy(ref)
    case 'DELETE /v1/backup-policies/:':
      await g.deleteBackupPolicy(ref)
      return undefined
    case 'POST /v1/backup-policies/:/run': return await g.runBackupPolicy(ref)
    // The audit log: read and checked, never written through the API (the library writes it).
    case 'GET /v1/audit': return await g.queryAuditLog(auditQuery(url))
    case 'GET /v1/audit/:': {
      const answer = await auditRoute(g, ref, url)
      if (answer === undefined) throw new HttpError(404, 'NOT_FOUND', `no API ${method} ${url.pathname}; the audit log has GET /v1/audit, /v1/audit/verify and /v1/audit/head`)
      return answer
    }
    case 'GET /v1/storage-classes': return await g.listStorageClasses()
    case 'POST /v1/storage-classes': return await g.createStorageClass(options)
    case 'DELETE /v1/storage-classes/:':
      await g.deleteStorageClass(ref)
      return undefined
    case 'GET /v1/pools': return await g.listPools()
    case 'POST /v1/pools': return await g.createPool(options as never)
    case 'GET /v1/pools/:': return await g.getPool(ref)
    case 'PATCH /v1/pools/:': return await g.updatePool(ref, options as never)
    case 'DELETE /v1/pools/:':
      await g.deletePool(ref)
      return undefined
    case 'GET /v1/cluster': {
      const status = await g.clusterStatus()
      return { ...status, members: status.members.map((m) => ({ ...m, address: m.address === '' ? config.bindAddress : m.address })) }
    }
    case 'POST /v1/cluster/:':
      if (ref === 'leave') return await daemon.cluster.leave(optionalBoolean(options, 'force') ?? false)
      if (ref === 'forget') {
        if (typeof options.node !== 'string' || options.node === '') throw new HttpError(400, 'INVALID_ARGUMENT', 'cluster forget needs { node }: the id of a node that is gone for good')
        return await g.forgetClusterNode(options.node)
      }
      if (ref !== 'join') throw new HttpError(404, 'NOT_FOUND', `no API ${method} ${url.pathname}`)
      if (typeof options.address !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'cluster join needs { address }: the bind address (host:port) of a node of the cluster')
      try {
        parseAddress(options.address, 'the address of a cluster node')
      } catch (err) {
        throw new HttpError(400, 'INVALID_ARGUMENT', (err as Error).message)
      }
      // A peer that is still starting is waited for; a client that goes away ends the wait.
      return await daemon.cluster.join(options.address, daemon.signal)
    default:
      throw new HttpError(404, 'NOT_FOUND', `no API ${method} ${url.pathname}`)
  }
}
