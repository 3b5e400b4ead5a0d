// `galleonfs -d`: a thin daemon over the library. It opens one GalleonFS instance and serves an
// HTTP/JSON API on the IPC address for the CLI (and GET /metrics for Prometheus). Every request
// carries the API token (Authorization: Bearer ...), generated at first start and kept, mode 0600,
// in the storage path and in a per-user runtime file named after the IPC address, where the CLI on
// the same machine finds it.

import { spawn } from 'node:child_process'
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { GalleonFS, isGalleonError, PROMETHEUS_CONTENT_TYPE, type GalleonErrorCode } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { parseAddress, type DaemonConfig } from './daemon-config.js'

/** Largest request body accepted. */
const MAX_BODY_BYTES = 1024 * 1024

const LEVELS = ['error', 'warn', 'info', 'debug', 'trace'] as const
type Level = typeof LEVELS[number]

/** Structured logs (one JSON object per line on stderr); the level from GALLEONFS_LOG or RUST_LOG. */
export function createLogger (env: NodeJS.ProcessEnv = process.env): (level: Level, message: string, fields?: Record<string, unknown>) => void {
  const wanted = (env.GALLEONFS_LOG ?? env.RUST_LOG ?? 'info').toLowerCase().split(',')[0]?.split('=').pop() as Level
  const limit = LEVELS.includes(wanted) ? LEVELS.indexOf(wanted) : LEVELS.indexOf('info')
  return (level, message, fields = {}) => {
    if (LEVELS.indexOf(level) > limit) return
    process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, message, ...fields }) + '\n')
  }
}

/** Where the CLI finds the token of the daemon at `ipcAddress` (per user, mode 0600 in a 0700 directory). */
export function runtimeTokenPath (ipcAddress: string): string {
  const base = process.env.XDG_RUNTIME_DIR ?? join(tmpdir(), `galleonfs-${process.getuid?.() ?? 'user'}`)
  return join(base, 'galleonfs', `token-${ipcAddress.replace(/[^A-Za-z0-9.-]/g, '_')}`)
}

const STATUS: Partial<Record<GalleonErrorCode, number>> = {
  VOLUME_NOT_FOUND: 404, SNAPSHOT_NOT_FOUND: 404, BACKUP_NOT_FOUND: 404, POLICY_NOT_FOUND: 404, STORAGE_CLASS_NOT_FOUND: 404,
  VOLUME_EXISTS: 409, SNAPSHOT_EXISTS: 409, POLICY_EXISTS: 409, STORAGE_CLASS_EXISTS: 409, BUSY: 409,
  INVALID_ARGUMENT: 400, OUT_OF_RANGE: 400, READ_ONLY: 409, PERMISSION_DENIED: 403, NOT_IMPLEMENTED: 501, NO_SPACE: 507
}

class HttpError extends Error {
  constructor (readonly status: number, readonly code: string, message: string) { super(message) }
}

/** Mounts made through the API, kept in the storage path so a restart mounts them again. */
interface SavedMount { volumeId: string, path: string, options: string[] }

async function readSavedMounts (storagePath: string): Promise<SavedMount[]> {
  try {
    const list = JSON.parse(await readFile(join(storagePath, 'daemon-mounts.json'), 'utf8')) as SavedMount[]
    return Array.isArray(list) ? list : []
  } catch {
    return []
  }
}

async function writeSavedMounts (storagePath: string, list: SavedMount[]): Promise<void> {
  const { writeFileAtomically } = await import('../src/durable-files.js')
  await writeFileAtomically(join(storagePath, 'daemon-mounts.json'), new TextEncoder().encode(JSON.stringify(list, null, 2) + '\n'))
}

/** A running daemon. */
export interface Daemon {
  readonly ipcAddress: string
  stop: () => Promise<void>
  /** Resolves when the daemon has stopped (by stop(), a signal or POST /v1/shutdown). */
  readonly stopped: Promise<void>
}

/** Starts the daemon: opens the storage, writes the token, listens. */
export async function startDaemon (config: DaemonConfig, log = createLogger()): Promise<Daemon> {
  const ipc = parseAddress(config.ipcAddress, 'ipc address')
  const g = await GalleonFS.open({ storagePath: config.storagePath, blockSize: config.blockSize, ...(config.mountPoint === undefined ? {} : { mount: 'fuse' as const }) })
  const startedAt = Date.now()
  let server: Server | undefined
  let nbd: NbdServer | undefined
  let tokenFile: string | undefined
  let finish!: () => void
  const stopped = new Promise<void>((resolve) => { finish = resolve })
  let stopping: Promise<void> | undefined
  let restartAfterStop = false
  const stop = async (): Promise<void> => {
    stopping ??= (async () => {
      log('info', 'shutting down: no new requests, finishing the ones in flight, flushing, unmounting')
      await new Promise<void>((resolve) => server === undefined ? resolve() : server.close(() => resolve()))
      await nbd?.close()
      await g.close()
      if (tokenFile !== undefined) await rm(tokenFile, { force: true })
      log('info', 'stopped')
      if (restartAfterStop) {
        // The same program with the same arguments, on the same stderr; it mounts again what was mounted.
        const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { detached: true, stdio: ['ignore', 'inherit', 'inherit'] })
        child.unref()
        log('info', 'restarting', { pid: child.pid })
      }
      finish()
    })()
    await stopping
  }
  try {
    const token = await loadOrCreateToken(join(config.storagePath, 'ipc.token'))
    server = createServer((request, response) => { void handle(request, response).catch(() => {}) })
    const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
      const send = (status: number, body: unknown, type = 'application/json'): void => {
        const text = typeof body === 'string' ? body : JSON.stringify(body)
        response.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) })
        response.end(text)
      }
      try {
        const offered = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1] ?? ''
        if (!sameToken(offered, token)) throw new HttpError(401, 'UNAUTHORIZED', 'a valid API token is required (Authorization: Bearer <token>); the CLI finds it in the runtime file or takes --token / GALLEONFS_TOKEN')
        const url = new URL(request.url ?? '/', 'http://daemon')
        const body = await readBody(request)
        const result = await route(g, config, request.method ?? 'GET', url, body, { startedAt, stop, restart: () => { restartAfterStop = true; void stop() } })
        if (typeof result === 'string') send(200, result, PROMETHEUS_CONTENT_TYPE)
        else send(result === undefined ? 204 : 200, result ?? '')
      } catch (err) {
        if (err instanceof HttpError) { send(err.status, { error: { code: err.code, message: err.message } }); return }
        if (isGalleonError(err)) { send(STATUS[err.code] ?? 500, { error: { code: err.code, message: err.message } }); return }
        log('error', 'request failed', { method: request.method, url: request.url, error: (err as Error)?.message })
        send(500, { error: { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) } })
      }
    }
    await new Promise<void>((resolve, reject) => {
      (server as Server).once('error', reject)
      ;(server as Server).listen(ipc.port, ipc.host, () => resolve())
    })
    const address = server.address()
    const actual = typeof address === 'object' && address !== null ? `${ipc.host}:${address.port}` : config.ipcAddress
    tokenFile = runtimeTokenPath(actual)
    await mkdir(join(tokenFile, '..'), { recursive: true, mode: 0o700 })
    await writeFile(tokenFile, token + '\n', { mode: 0o600 })
    await chmod(tokenFile, 0o600)
    // Mounts made before a restart (or before a crash) come back.
    if (config.mountPoint !== undefined) {
      for (const saved of await readSavedMounts(config.storagePath)) {
        await g.mounts.mountVolume(saved.volumeId, saved.path, { options: saved.options }).then(
          () => log('info', 'mounted again', { volumeId: saved.volumeId, path: saved.path }),
          (err: Error) => log('warn', 'could not mount again', { volumeId: saved.volumeId, path: saved.path, error: err.message })
        )
      }
    }
    if (config.nbdAddress !== undefined) {
      const where = parseAddress(config.nbdAddress, 'nbd address')
      nbd = await NbdServer.listen(g, where)
      log('info', 'serving NBD exports', { nbdAddress: `${nbd.host}:${nbd.port}` })
    }
    log('info', 'ready', { ipcAddress: actual, ...(nbd === undefined ? {} : { nbdAddress: `${nbd.host}:${nbd.port}` }), storagePath: resolve(config.storagePath), pid: process.pid })
    return { ipcAddress: actual, stop, stopped }
  } catch (err) {
    server?.close()
    await nbd?.close().catch(() => {})
    await g.close().catch(() => {})
    throw err
  }
}

/** The backup target a request names (body or query), if any. */
function target (url: URL, options: Record<string, unknown> = {}): { target?: string } {
  const value = (options.target as string | undefined) ?? url.searchParams.get('target') ?? undefined
  return value === undefined ? {} : { target: value }
}

async function loadOrCreateToken (path: string): Promise<string> {
  try {
    const text = (await readFile(path, 'utf8')).trim()
    if (/^[0-9a-f]{64}$/.test(text)) return text
  } catch {}
  const token = randomBytes(32).toString('hex')
  await writeFile(path, token + '\n', { mode: 0o600 })
  await chmod(path, 0o600)
  return token
}

function sameToken (offered: string, token: string): boolean {
  const a = Buffer.from(offered)
  const b = Buffer.from(token)
  return a.byteLength === b.byteLength && timingSafeEqual(a, b)
}

async function readBody (request: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of request) {
    size += (chunk as Buffer).byteLength
    // Past the limit the rest is read and dropped (so the client gets the 413, not a reset), up to a bound.
    if (size > MAX_BODY_BYTES * 16) request.destroy()
    if (size <= MAX_BODY_BYTES) chunks.push(chunk as Buffer)
  }
  if (size > MAX_BODY_BYTES) throw new HttpError(413, 'TOO_LARGE', `request bodies are limited to ${MAX_BODY_BYTES} bytes`)
  if (size === 0) return undefined
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new HttpError(400, 'INVALID_ARGUMENT', 'the request body is not valid JSON')
  }
}

/** The API: library calls, nothing more. */
async function route (g: GalleonFS, config: DaemonConfig, method: string, url: URL, body: unknown, daemon: { startedAt: number, stop: () => Promise<void>, restart: () => void }): Promise<unknown> {
  const parts = url.pathname.split('/').filter((p) => p.length > 0).map(decodeURIComponent)
  // Path shape: /v1/<collection>/<name>/<sub-collection>/<name>: names become ':'.
  const key = `${method} /${parts.map((p, i) => i === 2 || i === 4 ? ':' : p).join('/')}`
  const ref = parts[2] as string
  const sub = parts[4] as string
  const options = (body ?? {}) as Record<string, unknown>
  switch (key) {
    case 'GET /metrics': return await g.metricsText()
    case 'GET /v1/status': {
      const volumes = await g.listVolumes()
      return { state: 'running', pid: process.pid, uptimeSeconds: Math.round((Date.now() - daemon.startedAt) / 1000), storagePath: resolve(config.storagePath), backend: g.backend, blockSize: g.blockSize, volumes: volumes.length, mounts: g.mounts.listMounts().length }
    }
    case 'GET /v1/config': return config
    case 'POST /v1/shutdown':
      setImmediate(() => { void daemon.stop() })
      return { state: 'stopping' }
    case 'POST /v1/restart':
      setImmediate(() => { daemon.restart() })
      return { state: 'restarting', pid: process.pid }
    case 'GET /v1/volumes': return await g.listVolumes()
    case 'POST /v1/volumes': return await g.createVolume(options as never)
    case 'GET /v1/volumes/:': return { ...await g.getVolume(ref), usage: await g.getVolumeUsageDetails(ref) }
    case 'DELETE /v1/volumes/:':
      await g.deleteVolume(ref, { force: url.searchParams.get('force') === 'true' })
      return undefined
    case 'POST /v1/volumes/:/expand': return await g.expandVolume(ref, options.sizeBytes as number)
    case 'POST /v1/volumes/:/clone': return await g.cloneVolume(options.snapshot === undefined ? ref : { volume: ref, snapshot: options.snapshot as string }, options.name as string)
    case 'POST /v1/volumes/:/mount': {
      if (config.mountPoint === undefined) throw new HttpError(409, 'NO_MOUNT_POINT', 'this daemon was started without --mount-point, so it cannot mount volumes; restart it with --mount-point <dir>')
      const path = typeof options.path === 'string' && options.path.length > 0 ? options.path : join(config.mountPoint, ref)
      const strings = typeof options.options === 'string' ? options.options.split(',').map((o) => o.trim()).filter((o) => o.length > 0) : []
      const id = await g.mounts.mountVolume(ref, path, { options: strings })
      const mount = g.mounts.listMounts().find((m) => m.id === id)
      if (mount !== undefined) {
        const saved = (await readSavedMounts(config.storagePath)).filter((m) => m.path !== mount.path)
        await writeSavedMounts(config.storagePath, [...saved, { volumeId: mount.volumeId, path: mount.path, options: strings }])
      }
      return mount
    }
    case 'POST /v1/unmount': {
      const target = options.target as string
      const mount = g.mounts.listMounts().find((m) => m.id === target || m.path === resolve(target) || m.volumeName === target || m.volumeId === target)
      await g.mounts.unmountVolume(mount?.id ?? target, { force: options.force === true })
      if (mount !== undefined) await writeSavedMounts(config.storagePath, (await readSavedMounts(config.storagePath)).filter((m) => m.path !== mount.path))
      return undefined
    }
    case 'GET /v1/mounts': return g.mounts.listMounts()
    case 'GET /v1/volumes/:/snapshots': return await g.listSnapshots(ref)
    case 'POST /v1/volumes/:/snapshots': return await g.createSnapshot(ref, options.name as string)
    case 'DELETE /v1/volumes/:/snapshots/:':
      await g.deleteSnapshot(ref, sub, { force: url.searchParams.get('force') === 'true' })
      return undefined
    case 'POST /v1/volumes/:/snapshots/:/restore': return await g.restoreSnapshot(ref, sub)
    case 'GET /v1/backups': return await g.listBackups(url.searchParams.get('volume') ?? undefined, target(url))
    case 'POST /v1/backups': return await g.createBackup(options.volume as string, { strategy: options.strategy as never, ...target(url, options) })
    case 'POST /v1/backups/:/restore': return await g.restoreBackup(ref, { ...(options.name === undefined ? {} : { name: options.name as string }), ...(options.volume === undefined ? {} : { volume: options.volume as string }), ...target(url, options) })
    case 'POST /v1/backups/:/verify': return await g.verifyBackup(ref, target(url, options))
    case 'GET /v1/backup-policies': return await g.listBackupPolicies()
    case 'POST /v1/backup-policies': return await g.createBackupPolicy(options as never)
    case 'GET /v1/backup-policies/:': return await g.getBackupPolicy(ref)
    case 'DELETE /v1/backup-policies/:':
      await g.deleteBackupPolicy(ref)
      return undefined
    case 'POST /v1/backup-policies/:/run': return await g.runBackupPolicy(ref)
    case 'GET /v1/storage-classes': return await g.listStorageClasses()
    case 'POST /v1/storage-classes': return await g.createStorageClass(options)
    case 'GET /v1/cluster': {
      // One node, this one: healthy and the leader, until clustering (a later release).
      const volumes = await g.listVolumes()
      return { nodes: [{ id: 'local', address: config.bindAddress, healthy: true, leader: true, volumes: volumes.length }], leader: 'local', clustering: false }
    }
    case 'POST /v1/cluster/:':
      if (ref !== 'join' && ref !== 'leave') throw new HttpError(404, 'NOT_FOUND', `no API ${method} ${url.pathname}`)
      throw new HttpError(501, 'NOT_IMPLEMENTED', 'clustering is not in this release: this daemon runs as a single node, so it cannot join or leave a cluster')
    default:
      throw new HttpError(404, 'NOT_FOUND', `no API ${method} ${url.pathname}`)
  }
}
