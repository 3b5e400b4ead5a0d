// `galleonfs -d`: a thin daemon over the library. It opens one GalleonFS instance and serves an
// HTTP/JSON API on the IPC address for the CLI (and GET /metrics for Prometheus). Every request
// carries the API token (Authorization: Bearer ...), generated at first start and kept, mode 0600,
// in the storage path and in a per-user runtime file named after the IPC address, where the CLI on
// the same machine finds it.

import { spawn } from 'node:child_process'
import { createServer, maxHeaderSize, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { rm, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { GalleonFS, isGalleonError, PROMETHEUS_CONTENT_TYPE, type GalleonErrorCode, GalleonError } from '../src/index.js'
import { DEFAULT_MAX_PENDING_CONNECTIONS, DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS, NbdServer } from '../backends/nbd/index.js'
import { ipcTlsOptions, nbdTlsOptions } from './daemon-tls.js'
import { createServer as createHttpsServer } from 'node:https'
import { ConfigError, formatAddress, parseAddress, type DaemonConfig } from './daemon-config.js'
import { createLogger, logEvents, type Logger } from './daemon-log.js'
import { DAEMON_HEADER, loadOrCreateToken, runtimeTokenPath, sameToken, writeRuntimeToken } from './daemon-token.js'
import { readSavedMounts, writeSavedMounts, type SavedMount } from './daemon-mounts.js'
import { driverOptions, keyOptions } from './daemon-drivers.js'
import {
  answerClusterInfo, clusterOptions, clusterSecret, clusterTransport, discoverCluster, NO_SECRET, readSavedCluster, writeSavedCluster, type ClusterSettings, type EarlyTcpTransport, type PeerWaitReason
} from './daemon-cluster.js'
import { bindAddress, HeldPort, listenOn, ownPortClash, type DaemonAddress } from './daemon-listen.js'
import { discardBody, HttpError, readBody, route, type ReloadReport, type RouteContext } from './daemon-routes.js'

export { createLogger, runtimeTokenPath, type Logger, type ReloadReport }

/** Media type of a streamed answer: progress lines, then the result (asked for with Accept). */
const NDJSON = 'application/x-ndjson'
/** Progress lines are sent at most this often. */
const PROGRESS_INTERVAL_MS = 100
/**
 * A streamed answer gets a line at least this often (an empty one when there is no progress to
 * report), so a client tells a long operation from a daemon that hangs (see STREAM_SILENCE_MS in
 * cli-client.ts).
 */
const STREAM_KEEPALIVE_MS = 5_000
/**
 * How long a stop waits for the requests in flight before it closes their connections (which
 * cancels what they asked for, as a client going away does).
 */
const STOP_GRACE_MS = 30_000

const STATUS: Partial<Record<GalleonErrorCode, number>> = {
  VOLUME_NOT_FOUND: 404, SNAPSHOT_NOT_FOUND: 404, BACKUP_NOT_FOUND: 404, POLICY_NOT_FOUND: 404, STORAGE_CLASS_NOT_FOUND: 404, POOL_NOT_FOUND: 404,
  VOLUME_EXISTS: 409, SNAPSHOT_EXISTS: 409, POLICY_EXISTS: 409, STORAGE_CLASS_EXISTS: 409, POOL_EXISTS: 409, BUSY: 409,
  INVALID_ARGUMENT: 400, OUT_OF_RANGE: 400, READ_ONLY: 409, PERMISSION_DENIED: 403, NOT_IMPLEMENTED: 501, NO_SPACE: 507,
  CANCELLED: 499, HOOK_FAILED: 424, BACKEND_UNAVAILABLE: 503, NOT_LEADER: 421, WRITE_CONCERN_UNSATISFIED: 503
}

/** The answer to a request Node's HTTP parser refused: status, code and what to do. */
function parserRefusal (err: NodeJS.ErrnoException & { reason?: string }): [number, string, string] {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW': return [431, 'TOO_LARGE', `the request line and headers are limited to ${maxHeaderSize} bytes (names in the API are short: a volume name has at most 63 characters)`]
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW': return [413, 'TOO_LARGE', 'the chunk extensions of the request body are too large; send the body without them']
    case 'ERR_HTTP_REQUEST_TIMEOUT': return [408, 'REQUEST_TIMEOUT', 'the request did not arrive in time; send its headers and body at once']
    default: return [400, 'BAD_REQUEST', `the request is not HTTP/1.1 the daemon reads (${err.reason ?? err.message}); the API takes GET, POST, PUT, PATCH and DELETE requests with JSON bodies`]
  }
}

/** Whether the API's socket is bound to this machine only. */
function isLoopback (ip: string): boolean {
  return /^(?:::ffff:)?127\.\d+\.\d+\.\d+$/i.test(ip) || ip === '::1'
}

/** A running daemon. */
export interface Daemon {
  readonly ipcAddress: string
  stop: () => Promise<void>
  /** Resolves when the daemon has stopped (by stop(), a signal or POST /v1/shutdown). */
  readonly stopped: Promise<void>
  /** Reads the configuration again (SIGHUP, POST /v1/reload) and applies what can change while running. */
  reload: () => Promise<ReloadReport>
}

/**
 * A mount point that is a file would let the daemon start (or a reload succeed) and fail every
 * `volume mount` later, naming a path below it: refused here, naming the setting.
 */
async function checkMountPoint (config: DaemonConfig): Promise<void> {
  if (config.mountPoint === undefined) return
  const kind = await stat(config.mountPoint).catch(() => undefined)
  if (kind !== undefined && !kind.isDirectory()) throw new ConfigError(`the mount point ${config.mountPoint} is not a directory; give --mount-point (mount_point in [daemon]) a directory, under which each volume is mounted (it is created if missing)`)
}

/** What a joining daemon says when it begins to wait for peers that are still starting, or (at its first start) not listening yet. */
function waitingFor (log: Logger): (peers: readonly string[], waitMs: number, reason: PeerWaitReason) => void {
  return (peers, waitMs, reason) => {
    // Said at once, not only when the wait fails: nodes that name only each other wait in vain.
    const note = reason === 'starting' ? {} : { note: 'a node listens on its bind address only once it has found its cluster: nodes that name only each other, none started with --etcd-endpoints, wait for each other until --peer-wait-seconds is out, then fail' }
    log('info', `waiting for peers that are ${reason === 'starting' ? 'still starting' : 'not listening yet'} (--peer-wait-seconds)`, { peers, waitSeconds: waitMs / 1000, ...note })
  }
}

/** Settings a reload applies in place; any other change waits for a restart. */
const LIVE_SETTINGS = new Set<keyof DaemonConfig>(['logLevel', 'nbdAddress', 'mountPoint', 'nbdTlsCertFile', 'nbdTlsKeyFile', 'nbdTlsCaFile', 'nbdTlsPskFile'])

/**
 * Starts the daemon: listens on its addresses, opens the storage, writes the token, serves.
 * `loadConfig` reads the configuration again for a reload (the file and the flags it started with).
 * `stopAsked` (a stop asked for while it starts: SIGTERM, SIGINT) ends a first join's wait for
 * peers that are still starting, with CANCELLED: nothing is open or created yet then. (A stop asked
 * for later in the start waits for it to finish, as the storage may be opening.)
 */
export async function startDaemon (initial: DaemonConfig, log: Logger = createLogger(), loadConfig?: () => Promise<DaemonConfig>, stopAsked?: AbortSignal): Promise<Daemon> {
  // What is in effect: a reload changes the live settings in here.
  const config: DaemonConfig = { ...initial }
  log.setLevel(config.logLevel)
  const ipc = parseAddress(config.ipcAddress, 'ipc address')
  // A storage path that is a file would fail further on, naming some file inside it.
  const storageKind = await stat(config.storagePath).catch(() => undefined)
  if (storageKind !== undefined && !storageKind.isDirectory()) throw new ConfigError(`the storage path ${config.storagePath} is not a directory; give --storage-path (storage_path in [daemon]) a directory, which is created if missing`)
  await checkMountPoint(config)
  // Driver modules load (and the drivers named are checked) before anything else is set up.
  const drivers = await driverOptions(config, log)
  // The NBD server's TLS files are read and checked before the storage opens (a change to them
  // waits for a restart; a move of nbd_address keeps them).
  let nbdTls = await nbdTlsOptions(config)
  const ipcTls = await ipcTlsOptions(config)
  let ipcTlsInEffect = ipcTls
  // Clustered when etcd is named, when peers are (they say where etcd is), or when an earlier
  // `cluster join` left its settings in the storage path.
  const secret = await clusterSecret(config)
  let cluster: ClusterSettings | undefined
  // A first join through peers (--peer-addresses without etcd) asks them where the coordinator is
  // once the daemon listens on its IPC and NBD addresses (below), so a busy one of those fails the
  // start at once, not after a wait for peers that are still starting (--peer-wait-seconds).
  let askPeers: { saved: ClusterSettings | undefined } | undefined
  if (config.etcdEndpoints.length > 0) cluster = { etcdEndpoints: config.etcdEndpoints, etcdPrefix: config.etcdPrefix }
  else if (config.peerAddresses.length > 0) {
    if (secret === undefined) throw new ConfigError(`--peer-addresses: ${NO_SECRET}`)
    askPeers = { saved: await readSavedCluster(config.storagePath) }
  } else cluster = await readSavedCluster(config.storagePath)
  if (cluster !== undefined && secret === undefined) throw new ConfigError(NO_SECRET)
  // Nothing is created on disk before the daemon listens on every address it serves (below): a busy
  // port fails the start before the storage opens, and no other process can take one while it opens.
  const nbdAddress: DaemonAddress | undefined = config.nbdAddress === undefined ? undefined : { address: config.nbdAddress, what: 'NBD address', setting: '--nbd-address (nbd_address in [daemon])', ...parseAddress(config.nbdAddress, 'nbd address') }
  // Made now (a wildcard bind address without an advertise address fails here), listening later.
  const transport = cluster === undefined && askPeers === undefined ? undefined : clusterTransport(config, secret as string)
  // While the daemon asks its peers, the API answers every request that it is starting (there is no
  // storage, nor token, yet); undefined once they have answered.
  let peerWait: (() => string) | undefined
  // Opened once the daemon listens (the closures below run only after that).
  let g!: GalleonFS
  let clusterSettings: ClusterSettings | undefined
  // Aborted as the daemon begins to stop: a `cluster join` waiting for a peer that is still
  // starting ends (it would otherwise hold the stop until its connection was closed after the grace period).
  const stopBegun = new AbortController()
  // The address a `cluster join` under way goes through: one at a time (a second, meanwhile, would
  // wait as long, and then find this daemon in a cluster).
  let joining: string | undefined
  const clusterControl = {
    join: async (address: string, signal?: AbortSignal): Promise<unknown> => {
      if (g.cluster !== undefined) throw new GalleonError('BUSY', `this daemon is in a cluster already, as node ${g.cluster.nodeId}; leave it first`)
      if (joining !== undefined) throw new GalleonError('BUSY', `this daemon is joining a cluster already, through ${joining} (which may be waiting for that peer to finish starting); wait for that join to end, or cancel it`)
      joining = address
      try {
        const joinSecret = await clusterSecret(config)
        if (joinSecret === undefined) throw new HttpError(409, 'NO_CLUSTER_SECRET', NO_SECRET)
        const ends = signal === undefined ? stopBegun.signal : AbortSignal.any([signal, stopBegun.signal])
        const found = await discoverCluster(config, joinSecret, [address], { onWait: waitingFor(log), signal: ends })
        if (ends.aborted) throw new GalleonError('CANCELLED', `the join through ${address} was cancelled${stopBegun.signal.aborted ? ' (the daemon is stopping)' : ''}; nothing was joined`)
        const joinTransport = clusterTransport(config, joinSecret)
        const options = await clusterOptions(config, found, joinSecret, joinTransport)
        let status: unknown
        try {
          status = await g.joinCluster(options)
        } catch (err) {
          // A join refused before the instance took the drivers over (this daemon stopping, a
          // join of its own under way) leaves them to us: the etcd client and the listening
          // socket would otherwise stay open. Closing them twice is harmless.
          await Promise.allSettled([options.coordinator.close(), joinTransport.close()])
          throw err
        }
        clusterSettings = found
        answerClusterInfo(g, found, joinTransport)
        await writeSavedCluster(config.storagePath, found)
        log('info', 'joined the cluster', { nodeId: (status as { nodeId?: string }).nodeId, through: address })
        return status
      } finally {
        joining = undefined
      }
    },
    leave: async (force: boolean): Promise<unknown> => {
      await g.leaveCluster({ force })
      clusterSettings = undefined
      await writeSavedCluster(config.storagePath, undefined)
      log('info', 'left the cluster')
      return await g.clusterStatus()
    }
  }
  // Mount requests run concurrently: each reads, changes and writes the saved list, so the changes
  // are made one after another (two at once each wrote its own list, and one mount was lost).
  let savedMountsUpdate: Promise<unknown> = Promise.resolve()
  const updateSavedMounts = async (change: (saved: SavedMount[]) => SavedMount[]): Promise<void> => {
    const run = savedMountsUpdate.then(async () => { await writeSavedMounts(config.storagePath, change(await readSavedMounts(config.storagePath))) })
    savedMountsUpdate = run.catch(() => {})
    await run
  }
  const startedAt = Date.now()
  let server: Server | undefined
  let nbd: NbdServer | undefined
  // The NBD server keeps listening when an accept fails (too many open files, say): logged here.
  const nbdError = (err: Error): void => { log('error', 'the NBD server could not accept a connection', { error: err.message }) }
  let tokenFile: string | undefined
  let finish!: () => void
  const stopped = new Promise<void>((resolve) => { finish = resolve })
  let stopping: Promise<void> | undefined
  let restartAfterStop = false
  // The API's open connections, and those of them with a request being answered (a stop ends the others).
  const connections = new Set<Socket>()
  const answering = new Set<Socket>()
  // With HTTPS, the TCP connections whose TLS handshake is not done (by peer address): no request
  // can be under way on them, so a stop ends them at once instead of waiting out the handshake timeout.
  const handshaking = new Map<string, Socket>()
  const peerOf = (socket: Socket): string => `${socket.remoteAddress ?? ''}|${socket.remotePort ?? ''}`
  const stop = async (): Promise<void> => {
    stopping ??= (async () => {
      log('info', 'shutting down: no new requests, finishing the ones in flight, flushing, unmounting')
      stopBegun.abort(new GalleonError('CANCELLED', 'the daemon is stopping'))
      const closed = new Promise<void>((resolve) => server === undefined ? resolve() : server.close(() => resolve()))
      // Once closed, the server no longer times out slow requests (headersTimeout, requestTimeout),
      // so a client that sent part of a request, or nothing, would hold the stop until it went
      // away: connections without a request being answered end now, the others at their answer's
      // end, and whatever is still open after the grace period is closed.
      for (const socket of connections) if (!answering.has(socket)) socket.destroy()
      for (const socket of handshaking.values()) socket.destroy()
      const grace = setTimeout(() => {
        if (answering.size > 0) log('warn', 'closing connections whose requests did not finish in time', { requests: answering.size, graceSeconds: STOP_GRACE_MS / 1000 })
        server?.closeAllConnections()
      }, STOP_GRACE_MS)
      await closed
      clearTimeout(grace)
      // A reload in progress finishes first (it may be moving the NBD listener); none starts now.
      await reloading
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
  let reloading: Promise<unknown> = Promise.resolve()
  const reload = async (): Promise<ReloadReport> => {
    const run = reloading.then(async () => {
      if (stopping !== undefined) throw new HttpError(409, 'BUSY', 'the daemon is stopping')
      if (loadConfig === undefined) return { applied: [], needsRestart: [] }
      const next = await loadConfig()
      const report: ReloadReport = { applied: [], needsRestart: [] }
      const changed = (Object.keys(next) as Array<keyof DaemonConfig>).filter((key) => JSON.stringify(next[key]) !== JSON.stringify(config[key]))
      // The mount driver is chosen at open: a mount point can move, not appear or go.
      const live = (key: keyof DaemonConfig): boolean => {
        if (key === 'ipcTlsCertFile' || key === 'ipcTlsKeyFile') return ipcTls !== undefined && next.ipcTlsCertFile !== undefined
        return LIVE_SETTINGS.has(key) && (key !== 'mountPoint' || (config.mountPoint !== undefined && next.mountPoint !== undefined))
      }
      // The steps that can fail (reading the NBD TLS files, listening on a new NBD address) come
      // first, so a reload either applies every live change or none. TLS files are read again at
      // every reload, so a renewed certificate under the same file name is taken too.
      if (changed.includes('mountPoint')) await checkMountPoint(next)
      const nextTls = await nbdTlsOptions(next)
      // The API's certificate can be renewed in place; HTTPS cannot be turned on or off (a restart).
      // Its files are read whenever they are named, so one that turns HTTPS on fails the reload now
      // if it cannot be read, not the restart it waits for.
      const namedIpcTls = await ipcTlsOptions(next)
      const nextIpcTls = ipcTls === undefined ? undefined : namedIpcTls
      let moved: NbdServer | undefined
      if (changed.includes('nbdAddress') && next.nbdAddress !== undefined) moved = await NbdServer.listen(g, { ...parseAddress(next.nbdAddress, 'nbd address'), handshakeTimeoutMs: Math.round(config.nbdHandshakeTimeoutSeconds * 1000), onError: nbdError, tls: nextTls })
      if (stopping !== undefined) {
        await moved?.close()
        throw new HttpError(409, 'BUSY', 'the daemon is stopping')
      }
      // New connections to a server that stays where it is get the new credentials (or none).
      if (moved === undefined && nbd !== undefined && JSON.stringify(nextTls) !== JSON.stringify(nbdTls)) {
        nbd.setTls(nextTls)
        log('info', 'NBD TLS credentials reloaded', { tls: nextTls === undefined ? 'off' : 'required' })
      }
      nbdTls = nextTls
      if (nextIpcTls !== undefined && server !== undefined) {
        ;(server as unknown as { setSecureContext: (options: { cert: string, key: string, minVersion: 'TLSv1.2' }) => void }).setSecureContext({ ...nextIpcTls, minVersion: 'TLSv1.2' })
        if (JSON.stringify(nextIpcTls) !== JSON.stringify(ipcTlsInEffect)) log('info', 'API TLS certificate reloaded')
        ipcTlsInEffect = nextIpcTls
      }
      for (const key of changed) {
        if (!live(key)) { report.needsRestart.push(key); continue }
        if (key === 'logLevel') log.setLevel(next.logLevel)
        if (key === 'nbdAddress') {
          // Sessions on the old address end (their requests in flight are answered first).
          await nbd?.close()
          nbd = moved
          if (nbd !== undefined) log('info', 'serving NBD exports', { nbdAddress: formatAddress(nbd.host, nbd.port) })
        }
        Object.assign(config, { [key]: next[key] })
        report.applied.push(key)
      }
      log('info', 'configuration reloaded', { ...report })
      if (report.needsRestart.length > 0) log('warn', 'changed settings that take effect only after a restart (galleonfs daemon restart)', { settings: report.needsRestart })
      return report
    })
    reloading = run.catch(() => {})
    return await run
  }
  // Requests that come while the daemon starts wait for this; if the start fails, their connections end.
  let opened!: () => void
  let failed!: (err: unknown) => void
  const ready = new Promise<void>((resolve, reject) => { opened = resolve; failed = reject })
  ready.catch(() => {})
  let token: string
  let heldNbd: HeldPort | undefined
  try {
    const answer = (request: IncomingMessage, response: ServerResponse): void => {
      const socket = request.socket
      answering.add(socket)
      // Every answer says it is a GalleonFS daemon's: the CLI tells another server's JSON from ours by it.
      response.setHeader(DAEMON_HEADER, '1')
      response.once('close', () => {
        answering.delete(socket)
        // A kept-alive connection would wait idle for its next request: while stopping it ends.
        if (stopping !== undefined) socket.end()
      })
      if (peerWait !== undefined) {
        // Answered at once: the wait can last --peer-wait-seconds (300 s by default), past any
        // client's patience. No token is checked (none may exist yet); nothing is told but that.
        discardBody(request)
        const text = JSON.stringify({ error: { code: 'STARTING', message: peerWait() } })
        response.writeHead(503, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'retry-after': '2' })
        response.end(text)
        log('debug', 'request', { method: request.method, url: request.url, status: 503, waitingForPeers: true })
        return
      }
      void ready.then(async () => { await handle(request, response) }, () => { socket.destroy() }).catch(() => {})
    }
    // With a certificate, HTTPS: a client has 10 s for its TLS handshake (a stop does not wait for
    // it), and connections count once they are secure (the socket a request comes on).
    // An HTTP/1.1 request without Host is refused in handle(), in JSON (Node's own refusal is a bare 400).
    server = ipcTls === undefined ? createServer({ requireHostHeader: false }, answer) : createHttpsServer({ ...ipcTls, minVersion: 'TLSv1.2', handshakeTimeout: 10_000, requireHostHeader: false }, answer)
    if (ipcTls !== undefined) {
      server.on('connection', (socket: Socket) => {
        const peer = peerOf(socket)
        handshaking.set(peer, socket)
        socket.once('close', () => { if (handshaking.get(peer) === socket) handshaking.delete(peer) })
      })
    }
    server.on(ipcTls === undefined ? 'connection' : 'secureConnection', (socket: Socket) => {
      if (ipcTls !== undefined) handshaking.delete(peerOf(socket))
      // Secure only after a stop began: no request is under way on it, so it ends like the idle ones.
      if (stopping !== undefined) { socket.destroy(); return }
      connections.add(socket)
      socket.once('close', () => connections.delete(socket))
    })
    // What Node's HTTP parser refuses (not HTTP, an unknown method, headers too large or too slow)
    // is answered in JSON like every other refusal, not with a bare status line. A connection with
    // an answer under way gets no second one: it is closed.
    server.on('clientError', (err: NodeJS.ErrnoException & { reason?: string }, socket: Socket) => {
      // A TLS client whose handshake failed or timed out gets no HTTP answer: written to a socket
      // that is not secure, it would wait for the handshake for ever, and the socket with it.
      if (ipcTls !== undefined && !connections.has(socket)) {
        log('debug', 'a client\'s TLS handshake failed', { error: err.message, code: err.code })
        socket.destroy()
        return
      }
      if (err.code === 'ECONNRESET' || !socket.writable || answering.has(socket)) { socket.destroy(); return }
      const [status, code, message] = parserRefusal(err)
      const text = JSON.stringify({ error: { code, message } })
      socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n${DAEMON_HEADER}: 1\r\nconnection: close\r\n\r\n${text}`, () => socket.destroy())
    })
    const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
      const send = (status: number, body: unknown, type = 'application/json', close = false): void => {
        const text = typeof body === 'string' ? body : JSON.stringify(body)
        response.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), ...(close ? { connection: 'close' } : {}) })
        response.end(text)
      }
      let streaming = false
      // A request refused before its body was read (no token, say): the body is dropped, up to a bound.
      let bodyTaken = false
      const began = performance.now()
      // A client that goes away mid-answer cancels what it asked for (a backup, a restore).
      const gone = new AbortController()
      response.once('close', () => {
        if (!response.writableFinished) gone.abort()
        log('debug', 'request', { method: request.method, url: request.url, status: response.statusCode, ms: Math.round((performance.now() - began) * 10) / 10, ...(response.writableFinished ? {} : { cancelled: true }) })
      })
      try {
        if (request.headers.host === undefined && request.httpVersion === '1.1') throw new HttpError(400, 'BAD_REQUEST', 'an HTTP/1.1 request needs a Host header (RFC 9112); send Host: with the daemon\'s address')
        // The scheme's name is case-insensitive (RFC 9110), the token is not.
        const offered = /^Bearer +(\S+) *$/i.exec(request.headers.authorization ?? '')?.[1] ?? ''
        if (!sameToken(offered, token)) throw new HttpError(401, 'UNAUTHORIZED', 'a valid API token is required (Authorization: Bearer <token>); the CLI finds it in the runtime file or takes --token / GALLEONFS_TOKEN')
        const url = (() => {
          try {
            return new URL(request.url ?? '/', 'http://daemon')
          } catch {
            throw new HttpError(400, 'INVALID_ARGUMENT', `the request target ${JSON.stringify(request.url)} is not a URL path such as /v1/volumes`)
          }
        })()
        // URL parsing resolves dot segments (also %2e), backslashes and a leading // into another
        // path: DELETE /v1/volumes/v1/snapshots/.. would delete the volume v1. A target that is not
        // already in that normal form is refused instead.
        const target = (request.url ?? '/').replace(/^[a-z][a-z\d+.-]*:\/\/[^/?#]*/i, '').split(/[?#]/)[0] || '/'
        if (target !== url.pathname) {
          throw new HttpError(400, 'INVALID_ARGUMENT', `the request path ${JSON.stringify(target)} would name another path, ${url.pathname} (it holds a "." or ".." segment, a backslash, a leading "//" or a character to percent-encode); names are never "." or "..", and each is sent encoded with encodeURIComponent`)
        }
        bodyTaken = true
        const body = await readBody(request)
        const context: RouteContext = { startedAt, stop, restart: () => { restartAfterStop = true; void stop() }, reload, nbd: () => nbd, signal: gone.signal, cluster: clusterControl, updateSavedMounts }
        if ((request.headers.accept ?? '').includes(NDJSON)) {
          // Progress lines while the operation runs, then one line with its result or error.
          streaming = true
          response.writeHead(200, { 'content-type': NDJSON })
          // The answer begins now (not with the first line): the client waits for its beginning
          // only so long, and an operation may run a while before it reports progress, or never.
          response.flushHeaders()
          const keepalive = setInterval(() => { if (!response.writableEnded) response.write('\n') }, STREAM_KEEPALIVE_MS)
          response.once('close', () => { clearInterval(keepalive) })
          let last = 0
          context.progress = ({ bytesDone, bytesTotal }) => {
            const now = Date.now()
            if (bytesDone < bytesTotal && bytesDone > 0 && now - last < PROGRESS_INTERVAL_MS) return
            last = now
            keepalive.refresh()
            response.write(JSON.stringify({ progress: { bytesDone, bytesTotal } }) + '\n')
          }
          try {
            const result = await route(g, config, request.method ?? 'GET', url, body, context)
            response.end(JSON.stringify({ result: result ?? null }) + '\n')
          } finally {
            clearInterval(keepalive)
          }
          return
        }
        const result = await route(g, config, request.method ?? 'GET', url, body, context)
        if (typeof result === 'string') send(200, result, PROMETHEUS_CONTENT_TYPE)
        else send(result === undefined ? 204 : 200, result ?? '')
      } catch (err) {
        const [status, error] = err instanceof HttpError
          ? [err.status, { code: err.code, message: err.message }]
          : err instanceof ConfigError
            ? [400, { code: 'INVALID_CONFIG', message: `${err.message}; the daemon keeps the configuration it had` }]
            : isGalleonError(err) ? [STATUS[err.code] ?? 500, { code: err.code, message: err.message }] : [500, { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) }]
        if (status === 500) log('error', 'request failed', { method: request.method, url: request.url, error: error.message })
        if (!bodyTaken) discardBody(request)
        if (streaming) response.end(JSON.stringify({ error }) + '\n')
        else send(status, { error }, undefined, err instanceof HttpError && err.closeConnection)
      }
    }
    // Every address first (the API's server itself; the NBD server's port held until it starts; then,
    // once the peers named have told where the coordinator is, the cluster's transport), then the storage.
    const bound: DaemonAddress[] = []
    // A node that will ask its peers answers STARTING from its first request on (a request held
    // for the storage instead could wait the whole wait for peers, past any client's patience).
    if (askPeers !== undefined) peerWait = () => 'the daemon is starting: it asks its peers (--peer-addresses) where its cluster\'s coordinator is, and opens its storage once one has told; retry in a moment (`galleonfs daemon status --wait <seconds>` waits for it)'
    await bindAddress({ address: config.ipcAddress, what: 'IPC address', setting: '--ipc-address (ipc_address in [daemon])', ...ipc }, bound, async () => { await listenOn(server as Server, ipc.host, ipc.port) })
    // The NBD server's own caps on connections in their handshake (its defaults) hold meanwhile.
    const caps = { maxPending: DEFAULT_MAX_PENDING_CONNECTIONS, maxPendingPerAddress: DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS }
    if (nbdAddress !== undefined) heldNbd = await bindAddress(nbdAddress, bound, async () => await HeldPort.listen(nbdAddress.host, nbdAddress.port, caps))
    const bindEntry: DaemonAddress | undefined = transport === undefined ? undefined : { address: config.bindAddress, what: 'bind address (the cluster\'s)', setting: '--bind-address (bind_address in [daemon])', ...parseAddress(config.bindAddress, 'bind address') }
    if (askPeers !== undefined) {
      // A bind address on this daemon's own IPC or NBD port fails now, not after the wait for peers.
      const clash = bindEntry === undefined ? undefined : ownPortClash(bindEntry, bound)
      if (clash !== undefined) throw clash
      const { saved } = askPeers
      const onWait = waitingFor(log)
      try {
        // A peer that says it is starting, or that is not there yet (nothing listening: nodes
        // started together, this one the faster), is waited for (--peer-wait-seconds) only on a
        // first join: a node that was in the cluster before starts at once with the coordinator it
        // knew. The peers are asked before this daemon listens on its bind address, so two nodes
        // starting at once that name each other never wait for each other's start (each finds the
        // other not listening: with neither naming etcd, both wait out --peer-wait-seconds, then fail).
        const waitBegan = performance.now()
        const reasons = new Set<PeerWaitReason>()
        cluster = await discoverCluster(config, secret as string, config.peerAddresses, saved === undefined
          ? {
              waitForAbsent: true,
              onWait: (peers, waitMs, reason) => {
                reasons.add(reason)
                const endsAt = waitBegan + waitMs
                const which = reasons.size === 2 ? 'still starting or not listening yet' : reason === 'starting' ? 'still starting' : 'not listening yet'
                peerWait = () => `the daemon is starting: it waits for peers that are ${which}, for at most ${Math.max(0, Math.ceil((endsAt - performance.now()) / 1000))} s more (--peer-wait-seconds ${waitMs / 1000}), to tell where its cluster's coordinator is, and opens its storage after that; retry once it has started (\`galleonfs daemon status --wait <seconds>\` waits for it)`
                onWait(peers, waitMs, reason)
              },
              ...(stopAsked === undefined ? {} : { signal: stopAsked })
            }
          : { waitMs: 0 })
      } catch (err) {
        // Every peer down (a whole cluster restarting): the coordinator this node knew will do.
        if (saved === undefined) throw err
        log('warn', 'no peer answered; joining the cluster this node was in before', { error: (err as Error).message, etcd: saved.etcdEndpoints })
        cluster = saved
      } finally {
        // Requests that come from now on wait for the storage to open, as without peers.
        peerWait = undefined
      }
    }
    clusterSettings = cluster
    if (transport !== undefined && bindEntry !== undefined) await bindAddress(bindEntry, bound, async () => await transport.listenEarly())
    g = await GalleonFS.open({
      storagePath: config.storagePath,
      blockSize: config.blockSize,
      ...drivers,
      ...await keyOptions(config),
      ...(cluster === undefined ? {} : { cluster: await clusterOptions(config, cluster, secret as string, transport) })
    })
    logEvents(g, log)
    if (clusterSettings !== undefined) {
      answerClusterInfo(g, clusterSettings, transport as EarlyTcpTransport)
      await writeSavedCluster(config.storagePath, clusterSettings)
      log('info', 'joined the cluster', { nodeId: g.cluster?.nodeId, bindAddress: g.cluster?.address, etcd: clusterSettings.etcdEndpoints })
    }
    token = await loadOrCreateToken(join(config.storagePath, 'ipc.token'))
    const address = server.address()
    const actual = typeof address === 'object' && address !== null ? formatAddress(ipc.host, address.port) : config.ipcAddress
    if (ipcTls === undefined && typeof address === 'object' && address !== null && !isLoopback(address.address)) {
      log('warn', 'the API listens on an address other machines can reach, in plain HTTP: its token and the data of reads and writes cross the network unencrypted; serve it over HTTPS (--ipc-tls-cert-file and --ipc-tls-key-file), or keep --ipc-address on 127.0.0.1 (or ::1) and reach it through SSH', { ipcAddress: actual })
    }
    tokenFile = runtimeTokenPath(actual)
    await writeRuntimeToken(tokenFile, token)
    // The requests that came while the daemon started are answered now.
    opened()
    // Mounts made before a restart (or before a crash) come back.
    if (config.mountPoint !== undefined) {
      const accepted = g.mounts.acceptedOptions
      for (const saved of await readSavedMounts(config.storagePath)) {
        // A release before 2026-12-06 handed every option word to the mount driver, which ignored
        // those it does not apply (such as noatime): such a mount comes back without them, as it
        // was mounted then, rather than not at all (a mountVolume call now refuses them).
        const dropped = accepted === undefined ? [] : saved.options.filter((word) => !accepted.includes(word))
        const options = saved.options.filter((word) => !dropped.includes(word))
        await g.mounts.mountVolume(saved.volumeId, saved.path, { options }).then(
          async () => {
            log('info', 'mounted again', { volumeId: saved.volumeId, path: saved.path })
            if (dropped.length === 0) return
            log('warn', 'mounted again without the mount options the mount driver does not apply (it ignored them before too); they are no longer saved', { volumeId: saved.volumeId, path: saved.path, dropped, driver: g.mounts.driver })
            await updateSavedMounts((list) => list.map((m) => m.path === saved.path && m.volumeId === saved.volumeId ? { ...m, options } : m)).catch((err: Error) => {
              log('warn', 'could not save the mounts again (the next start drops those options again)', { error: err.message })
            })
          },
          (err: Error) => log('warn', 'could not mount again', { volumeId: saved.volumeId, path: saved.path, error: err.message })
        )
      }
    }
    if (heldNbd !== undefined && nbdAddress !== undefined) {
      // The NBD server takes the held port over, with the clients that connected while the daemon started.
      const options = { host: nbdAddress.host, port: nbdAddress.port, handshakeTimeoutMs: Math.round(config.nbdHandshakeTimeoutSeconds * 1000), onError: nbdError, tls: nbdTls }
      nbd = await heldNbd.handOver(async (server) => await NbdServer.listen(g, { ...options, server }))
      log('info', 'serving NBD exports', { nbdAddress: formatAddress(nbd.host, nbd.port), tls: nbdTls === undefined ? 'off' : 'required' })
    }
    log('info', 'ready', { ipcAddress: actual, ipcTls: ipcTls !== undefined, ...(nbd === undefined ? {} : { nbdAddress: formatAddress(nbd.host, nbd.port) }), storagePath: resolve(config.storagePath), pid: process.pid })
    return { ipcAddress: actual, stop, stopped, reload }
  } catch (err) {
    failed(err)
    server?.close()
    // Every connection ends now: also (with HTTPS) those in their TLS handshake, which
    // closeAllConnections() does not know of; each would keep the process up until it timed out.
    server?.closeAllConnections()
    for (const socket of handshaking.values()) socket.destroy()
    heldNbd?.release()
    await nbd?.close().catch(() => {})
    await (g as GalleonFS | undefined)?.close().catch(() => {})
    await transport?.close().catch(() => {})
    throw err
  }
}
