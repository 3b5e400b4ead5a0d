// `galleonfs -d`: a thin daemon over the library. It opens one GalleonFS instance and serves an
// HTTP/JSON API on the IPC address for the CLI (and GET /metrics for Prometheus). Every request
// carries the API token (Authorization: Bearer ...), generated at first start and kept, mode 0600,
// in the storage path and in a per-user runtime file named after the IPC address, where the CLI on
// the same machine finds it.

import { spawn } from 'node:child_process'
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { rm, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { GalleonFS, GalleonError } from '../src/index.js'
import { DEFAULT_MAX_PENDING_CONNECTIONS, DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS, NbdServer, NbdStandIn } from '../backends/nbd/index.js'
import { ipcTlsOptions, nbdTlsOptions } from './daemon-tls.js'
import { createServer as createHttpsServer } from 'node:https'
import { ConfigError, formatAddress, parseAddress, type DaemonConfig } from './daemon-config.js'
import { createLogger, logEvents, type Logger } from './daemon-log.js'
import { DAEMON_HEADER, loadOrCreateToken, runtimeTokenPath, writeRuntimeToken } from './daemon-token.js'
import { readSavedMounts, writeSavedMounts, type SavedMount } from './daemon-mounts.js'
import { driverOptions, keyOptions } from './daemon-drivers.js'
import {
  answerClusterInfo, clusterOptions, clusterSecret, clusterTransport, discoverCluster, NO_SECRET, readSavedCluster, writeSavedCluster, type ClusterSettings, type EarlyTcpTransport, type PeerWaitReason
} from './daemon-cluster.js'
import { bindAddress, HeldPort, listenOn, ownPortClash, probeListen, type DaemonAddress } from './daemon-listen.js'
import { discardBody, type ReloadReport } from './daemon-routes.js'
import { applyReload, checkMountPoint, type ReloadContext } from './daemon-reload.js'
import { createClusterControl, waitingFor } from './daemon-cluster-control.js'
import { handleRequest, parserRefusal, type RequestContext } from './daemon-requests.js'

export { createLogger, runtimeTokenPath, type Logger, type ReloadReport }

/**
 * How long a stop waits for the requests in flight before it closes their connections (which
 * cancels what they asked for, as a client going away does).
 */
const STOP_GRACE_MS = 30_000

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
  // The same, shorter, for NBD clients (whose tools print it on one line).
  let nbdPeerWait: () => string = () => 'it asks its peers (--peer-addresses) where its cluster\'s coordinator is, and opens its storage once one has told'
  // Opened once the daemon listens (the closures below run only after that).
  let g!: GalleonFS
  let clusterSettings: ClusterSettings | undefined
  // Aborted as the daemon begins to stop: a `cluster join` waiting for a peer that is still
  // starting ends (it would otherwise hold the stop until its connection was closed after the grace period).
  const stopBegun = new AbortController()
  const clusterControl = createClusterControl({ config, log, g: () => g, stopBegun: stopBegun.signal, setClusterSettings: (settings) => { clusterSettings = settings } })
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
  // The NBD server a reload is moving to (listening, not yet `nbd`), and, once a stop has begun,
  // what every NBD server tells new clients: a server made or moved to during the stop refuses too.
  let nbdMoving: NbdServer | undefined
  let nbdStopping: string | undefined
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
      // NBD clients that connect from now on are told so (proto.md: NBD_REP_ERR_SHUTDOWN), rather
      // than served until the NBD server closes, after the API's requests in flight.
      nbdStopping = restartAfterStop
        ? 'the GalleonFS daemon is restarting: it takes no new NBD sessions until it has; retry in a moment'
        : 'the GalleonFS daemon is stopping: it takes no new NBD sessions; connect again once it runs again'
      nbd?.refuseNewSessions(nbdStopping)
      // A reload under way may be listening on a new NBD address already, closing the old one.
      nbdMoving?.refuseNewSessions(nbdStopping)
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
      // A reload that was under way may have moved the NBD server (refused already, as nbdMoving).
      nbd?.refuseNewSessions(nbdStopping)
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
  // What a reload reads and changes of this daemon (daemon-reload.ts), read as the reload runs.
  const reloadContext: ReloadContext = {
    config,
    log,
    loadConfig,
    ipcTls,
    stopping: () => stopping !== undefined,
    g: () => g,
    server: () => server,
    nbd: () => nbd,
    setNbd: (next) => { nbd = next },
    setMovingNbd: (next) => {
      nbdMoving = next
      if (nbdStopping !== undefined) next?.refuseNewSessions(nbdStopping)
    },
    nbdTls: () => nbdTls,
    setNbdTls: (next) => { nbdTls = next },
    ipcTlsInEffect: () => ipcTlsInEffect,
    setIpcTlsInEffect: (next) => { ipcTlsInEffect = next },
    nbdError
  }
  let reloading: Promise<unknown> = Promise.resolve()
  const reload = async (): Promise<ReloadReport> => {
    const run = reloading.then(async () => await applyReload(reloadContext))
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
    // How a request is answered once the daemon has started (daemon-requests.ts).
    const requests: RequestContext = {
      config,
      log,
      g: () => g,
      token: () => token,
      routes: { startedAt, stop, restart: () => { restartAfterStop = true; void stop() }, reload, nbd: () => nbd, cluster: clusterControl, updateSavedMounts }
    }
    const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => { await handleRequest(requests, request, response) }
    // Every address first (the API's server itself; the NBD server's port held until it starts; then,
    // once the peers named have told where the coordinator is, the cluster's transport), then the storage.
    const bound: DaemonAddress[] = []
    // A node that will ask its peers answers STARTING from its first request on (a request held
    // for the storage instead could wait the whole wait for peers, past any client's patience).
    if (askPeers !== undefined) peerWait = () => 'the daemon is starting: it asks its peers (--peer-addresses) where its cluster\'s coordinator is, and opens its storage once one has told; retry in a moment (`galleonfs daemon status --wait <seconds>` waits for it)'
    await bindAddress({ address: config.ipcAddress, what: 'IPC address', setting: '--ipc-address (ipc_address in [daemon])', ...ipc }, bound, async () => { await listenOn(server as Server, ipc.host, ipc.port) })
    // The NBD server's own caps on connections in their handshake (its defaults) hold meanwhile.
    const caps = { maxPending: DEFAULT_MAX_PENDING_CONNECTIONS, maxPendingPerAddress: DEFAULT_MAX_PENDING_CONNECTIONS_PER_ADDRESS }
    // NBD clients that come meanwhile are told the daemon is starting (an error to each option, with
    // the reason): at once while it waits for its peers (that can last --peer-wait-seconds), else
    // once they have waited HELD_CLIENT_WAIT_MS for the storage to open (a quick open serves them).
    const standIn = new NbdStandIn({ tls: nbdTls, handshakeTimeoutMs: Math.round(config.nbdHandshakeTimeoutSeconds * 1000) })
    const notReady = (): { reason: string, now: boolean } => peerWait !== undefined
      ? { reason: `the GalleonFS daemon is starting: ${nbdPeerWait()}; retry once it has started (\`galleonfs daemon status --wait <seconds>\` waits for it)`, now: true }
      : { reason: 'the GalleonFS daemon is starting: it is opening its storage (a journal to replay after a crash takes a while); retry in a moment (`galleonfs daemon status --wait <seconds>` waits for it)', now: false }
    if (nbdAddress !== undefined) heldNbd = await bindAddress(nbdAddress, bound, async () => await HeldPort.listen(nbdAddress.host, nbdAddress.port, caps, { answer: async (socket, reason) => { await standIn.answer(socket, reason) }, notReady }))
    const bindEntry: DaemonAddress | undefined = transport === undefined ? undefined : { address: config.bindAddress, what: 'bind address (the cluster\'s)', setting: '--bind-address (bind_address in [daemon])', ...parseAddress(config.bindAddress, 'bind address') }
    if (askPeers !== undefined) {
      // A bind address on this daemon's own IPC or NBD port fails now, not after the wait for peers.
      const clash = bindEntry === undefined ? undefined : ownPortClash(bindEntry, bound)
      if (clash !== undefined) throw clash
      // So does one another process holds (or that is not of this machine): listened on a moment
      // and closed, as the daemon listens there only once the peers have answered (below). A process
      // that takes it during the wait is found then, when the daemon listens there.
      if (bindEntry !== undefined && bindEntry.port !== 0) await bindAddress(bindEntry, [...bound], async () => { await probeListen(bindEntry.host, bindEntry.port) })
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
                nbdPeerWait = () => `it waits for peers that are ${which}, for at most ${Math.max(0, Math.ceil((endsAt - performance.now()) / 1000))} s more (--peer-wait-seconds ${waitMs / 1000}), and opens its storage after that`
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
