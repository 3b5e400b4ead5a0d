// The daemon in a cluster: its secret, how it reaches etcd, how a joining node finds the cluster
// through a peer, and the cluster's settings kept in the storage path so a restart joins again.

import { readFile, rm } from 'node:fs/promises'
import { hostname } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { join } from 'node:path'
import { GalleonError, OLDEST_PROTOCOL_VERSION, PROTOCOL_FIELD, PROTOCOL_VERSION, type GalleonFS, type TransportHandler, type TransportMessage } from '../src/index.js'
import type { ClusterOptions } from '../src/cluster/manager.js'
import { TcpTransport } from '../backends/tcp/index.js'
import { EtcdCoordinator, type EtcdCoordinatorOptions } from '../backends/etcd/index.js'
import { ConfigError, parseAddress, type DaemonConfig } from './daemon-config.js'
import { readSecret } from './daemon-drivers.js'

/** Where a clustered daemon finds its coordinator; kept in the storage path so a restart joins again. */
export interface ClusterSettings { etcdEndpoints: string[], etcdPrefix: string }

const CLUSTER_FILE = 'daemon-cluster.json'

export async function readSavedCluster (storagePath: string): Promise<ClusterSettings | undefined> {
  const path = join(storagePath, CLUSTER_FILE)
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return undefined
    throw new ConfigError(`cannot read ${path}, where an earlier \`cluster join\` left this node's cluster: ${(err as Error).message}`)
  }
  let saved: ClusterSettings | undefined
  try {
    saved = JSON.parse(text) as ClusterSettings
  } catch {}
  if (saved === undefined || !Array.isArray(saved.etcdEndpoints) || saved.etcdEndpoints.length === 0 || typeof saved.etcdPrefix !== 'string') {
    throw new ConfigError(`${path} is damaged; fix it, or delete it to start this node outside its cluster (then \`galleonfs cluster join\` again)`)
  }
  return saved
}

export async function writeSavedCluster (storagePath: string, settings: ClusterSettings | undefined): Promise<void> {
  if (settings === undefined) { await rm(join(storagePath, CLUSTER_FILE), { force: true }); return }
  const { writeFileAtomically } = await import('../src/durable-files.js')
  await writeFileAtomically(join(storagePath, CLUSTER_FILE), new TextEncoder().encode(JSON.stringify(settings, null, 2) + '\n'))
}

/** The cluster's shared secret: the file named in [cluster] secret_file, else GALLEONFS_CLUSTER_SECRET. */
export async function clusterSecret (config: DaemonConfig): Promise<string | undefined> {
  const secret = config.clusterSecretFile !== undefined ? await readSecret(config.clusterSecretFile, 'cluster secret file') : process.env.GALLEONFS_CLUSTER_SECRET
  if (secret === undefined || secret === '') return undefined
  // The handshake's proofs travel in the clear: a short secret could be guessed from them offline.
  if (secret.length < MIN_SECRET_LENGTH) throw new ConfigError(`the cluster secret is ${secret.length} characters long; use at least ${MIN_SECRET_LENGTH} (for example: openssl rand -hex 32)`)
  return secret
}

const MIN_SECRET_LENGTH = 16

/**
 * How this node signs in to etcd: user and password ([cluster] etcd_username, and the password in
 * etcd_password_file or GALLEONFS_ETCD_PASSWORD), and TLS material for https endpoints. Each node
 * is given its own: peers tell a joining node where etcd is, never how to sign in.
 */
async function etcdAccess (config: DaemonConfig, settings: ClusterSettings): Promise<Pick<EtcdCoordinatorOptions, 'auth' | 'tls'>> {
  const out: { auth?: EtcdCoordinatorOptions['auth'], tls?: EtcdCoordinatorOptions['tls'] } = {}
  const password = config.etcdPasswordFile !== undefined ? await readSecret(config.etcdPasswordFile, 'etcd password file') : process.env.GALLEONFS_ETCD_PASSWORD
  if (config.etcdUsername !== undefined) {
    if (password === undefined || password === '') throw new ConfigError(`etcd user ${config.etcdUsername} needs its password: put it in a file named by --etcd-password-file (etcd_password_file in [cluster], mode 0600), or in GALLEONFS_ETCD_PASSWORD`)
    out.auth = { username: config.etcdUsername, password }
  } else if (config.etcdPasswordFile !== undefined) {
    throw new ConfigError('an etcd password file is set but no etcd user: add --etcd-username (etcd_username in [cluster])')
  }
  if ((config.etcdCertFile === undefined) !== (config.etcdKeyFile === undefined)) throw new ConfigError('an etcd client certificate needs both --etcd-cert-file and --etcd-key-file (etcd_cert_file and etcd_key_file in [cluster])')
  const https = settings.etcdEndpoints.some((url) => url.startsWith('https://'))
  if (config.etcdCaFile !== undefined || config.etcdCertFile !== undefined) {
    if (!settings.etcdEndpoints.every((url) => url.startsWith('https://'))) throw new ConfigError(`etcd TLS files are set, but the etcd endpoints ${settings.etcdEndpoints.join(', ')} are not all https:// URLs`)
    const read = async (path: string, what: string): Promise<string> => {
      try {
        return await readFile(path, 'utf8')
      } catch (err) {
        throw new ConfigError(`cannot read the ${what} ${path}: ${(err as Error).message}`)
      }
    }
    const ca = config.etcdCaFile === undefined ? undefined : await read(config.etcdCaFile, 'etcd CA file')
    if (ca === undefined) throw new ConfigError('an etcd client certificate needs the CA that signed etcd\'s certificate too: add --etcd-ca-file (etcd_ca_file in [cluster])')
    out.tls = {
      ca,
      ...(config.etcdCertFile === undefined ? {} : { cert: await read(config.etcdCertFile, 'etcd client certificate'), key: await readSecret(config.etcdKeyFile as string, 'etcd client key') })
    }
  } else if (https) {
    throw new ConfigError(`the etcd endpoints ${settings.etcdEndpoints.join(', ')} use https: name the CA that signed etcd's certificate with --etcd-ca-file (etcd_ca_file in [cluster])`)
  }
  return out
}

export const NO_SECRET = 'clustering needs the cluster\'s shared secret: start the daemon with --cluster-secret-file <file> (secret_file in [cluster]; the file of mode 0600), or with GALLEONFS_CLUSTER_SECRET in its environment'

function nodeIdOf (config: DaemonConfig): string {
  if (config.nodeId !== undefined) return config.nodeId
  const port = parseAddress(config.bindAddress, 'bind address').port
  return `${hostname().replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 50) || 'node'}-${port}`
}

/** The message kind a joining node asks a member where the cluster's coordinator is. */
const CLUSTER_INFO = 'cluster-info'

/**
 * What a node answers a message it does not serve yet because it is starting (the same words as
 * the cluster manager's own answer while it starts): BACKEND_UNAVAILABLE, which senders retry.
 */
function starting (nodeId: string, kind: string): GalleonError {
  return new GalleonError('BACKEND_UNAVAILABLE', `node ${nodeId} is starting and does not serve ${kind} messages yet; retry in a moment`)
}

/** Whether `err` is a node's answer that it is starting (the cluster manager's, or an EarlyTcpTransport's). */
function isStartingAnswer (err: unknown): boolean {
  return (err as { code?: string }).code === 'BACKEND_UNAVAILABLE' && / is starting and does not serve \S+ messages yet/.test((err as Error).message)
}

/**
 * The TCP transport of a daemon in a cluster. It listens on the bind address before the storage
 * opens (listenEarly()), so that a busy port stops the start before anything is created on disk
 * and no other process takes the port meanwhile; until the cluster manager takes the transport
 * (its listen(), as the instance joins), every request is answered at once that the node is
 * starting (BACKEND_UNAVAILABLE, which senders retry; a request kept waiting instead ran into its
 * sender's timeout while a big journal was replayed). A joining node's cluster-info is answered so
 * until the daemon serves it (servingClusterInfo(), once the instance has joined): in between, the
 * cluster manager would answer that it does not serve such messages at all, which a joining node
 * takes for a node outside any cluster. Without listenEarly() it listens in listen(), as any
 * TcpTransport.
 */
export class EarlyTcpTransport extends TcpTransport {
  #early: Promise<string> | undefined
  #handler: TransportHandler | undefined
  #clusterInfo = false

  /** Listens now (once); until listen() is given the cluster manager's handler, requests are answered "starting". */
  async listenEarly (): Promise<string> {
    this.#early ??= super.listen(async (from, request) => await this.#serve(from, request))
    return await this.#early
  }

  /** Starts serving with `handler`: on the address listened on already, once listenEarly() was called. */
  override async listen (handler: TransportHandler): Promise<string> {
    // A second listen, or no function: refused as by any transport.
    if (this.#handler !== undefined || typeof handler !== 'function') return await super.listen(handler)
    this.#handler = handler
    if (this.#early === undefined) return await super.listen(async (from, request) => await this.#serve(from, request))
    return await this.#early
  }

  /** The daemon answers cluster-info now (see answerClusterInfo). */
  servingClusterInfo (): void { this.#clusterInfo = true }

  async #serve (from: string, request: TransportMessage): Promise<TransportMessage> {
    const handler = this.#handler
    if (handler === undefined || (request.kind === CLUSTER_INFO && !this.#clusterInfo)) throw starting(this.nodeId, request.kind)
    return await handler(from, request)
  }
}

/** This node's transport: TCP on the bind address (refused: a wildcard one without an advertise address). */
export function clusterTransport (config: DaemonConfig, secret: string): EarlyTcpTransport {
  const bind = parseAddress(config.bindAddress, 'bind address')
  const wildcard = bind.host === '0.0.0.0' || bind.host === '::'
  if (wildcard && config.advertiseAddress === undefined) {
    throw new ConfigError(`bind address ${config.bindAddress} listens on every interface, so peers cannot be told where to reach this node; set --advertise-address (advertise_address in [cluster]) to host:port as the peers see it`)
  }
  const advertise = config.advertiseAddress === undefined ? undefined : parseAddress(config.advertiseAddress, 'advertise address')
  return new EarlyTcpTransport({ nodeId: nodeIdOf(config), clusterSecret: secret, host: bind.host, port: bind.port, ...keepaliveOptions(config), ...(advertise === undefined ? {} : { advertiseHost: advertise.host }) })
}

/** This node's cluster drivers: `transport` (TCP on the bind address), etcd as coordinator. */
export async function clusterOptions (config: DaemonConfig, settings: ClusterSettings, secret: string, transport: TcpTransport = clusterTransport(config, secret)): Promise<ClusterOptions> {
  const nodeId = nodeIdOf(config)
  try {
    const coordinator = await EtcdCoordinator.connect({ endpoints: settings.etcdEndpoints, prefix: settings.etcdPrefix, ...await etcdAccess(config, settings) })
    return { nodeId, transport, coordinator, zone: config.zone, labels: config.labels, leaseTtlMs: Math.round(config.leaseTtlSeconds * 1000), replicaReplacementDelayMs: Math.round(config.replicaReplacementDelaySeconds * 1000), failoverWaitMs: Math.round(config.failoverWaitSeconds * 1000), replication: config.replicationStrategy, ...(config.advertiseAddress === undefined ? {} : { advertiseAddress: config.advertiseAddress }) }
  } catch (err) {
    await transport.close().catch(() => {})
    throw err
  }
}

/** The transport's keepalive settings, from the daemon's (seconds) to the transport's (milliseconds). */
function keepaliveOptions (config: DaemonConfig): { keepaliveIntervalMs: number, keepaliveTimeoutMs: number } {
  return { keepaliveIntervalMs: Math.round(config.keepaliveIntervalSeconds * 1000), keepaliveTimeoutMs: Math.round(config.keepaliveTimeoutSeconds * 1000) }
}

/**
 * Asks one node where its cluster's coordinator is, in the newest inter-node protocol version
 * this release speaks that the node does too: a node that does not speak one says so (IO_ERROR
 * naming the protocol), and the next older one is tried.
 */
async function askClusterInfo (probe: TcpTransport, address: string, signal: AbortSignal | undefined): Promise<TransportMessage> {
  for (let version = PROTOCOL_VERSION; ; version--) {
    try {
      return await probe.request(address, { kind: CLUSTER_INFO, header: { [PROTOCOL_FIELD]: version } }, { timeoutMs: 5000, ...(signal === undefined ? {} : { signal }) })
    } catch (err) {
      const unspoken = (err as { code?: string }).code === 'IO_ERROR' && /inter-node protocol version/.test((err as Error).message)
      if (!unspoken || version <= OLDEST_PROTOCOL_VERSION) throw err
    }
  }
}

/** How long discoverCluster waits between rounds of asking the peers that are starting, at first and at most. */
const FIRST_RETRY_MS = 100
const LONGEST_RETRY_MS = 2000
/**
 * The same for peers that are not there yet (nothing listening): first asked again after 200 ms,
 * not 100 ms, as such a peer's process is still starting up (a few hundred ms at least).
 */
const FIRST_ABSENT_RETRY_MS = 200

/** Why discoverCluster waits for a peer: it answered that it is starting, or it is not there yet. */
export type PeerWaitReason = 'starting' | 'not-listening'

export interface DiscoverOptions {
  /**
   * How long peers that answer that they are starting (their storage opening, a big journal
   * replaying), and with `waitForAbsent` peers that are not there yet, are asked again before
   * giving up (default: --peer-wait-seconds, peer_wait in [cluster]); 0: asked once.
   */
  readonly waitMs?: number
  /**
   * Peers that are not there yet (the connection refused, reset, the host unreachable, its name
   * not resolving yet: see notThereYet) are waited for too, as those that are starting (a first
   * start of nodes started together, where this one was faster). Without it, such a peer fails at
   * once (a `cluster join` asked by hand: its address is most likely wrong).
   */
  readonly waitForAbsent?: boolean
  /**
   * Ends the wait, and a request under way (CANCELLED; a GalleonError as the signal's reason says
   * why, such as the daemon stopping).
   */
  readonly signal?: AbortSignal
  /**
   * Called once for each reason to wait, when the first peer is waited for for it: the peers that
   * said they are starting (`starting`), or that are not there yet (`not-listening`), then.
   */
  readonly onWait?: (peers: readonly string[], waitMs: number, reason: PeerWaitReason) => void
}

/**
 * Whether a failure to ask a peer means the peer is not there yet (its process not started, or
 * not yet listening; its container's or pod's address or name not yet published): the connection
 * refused or reset as it is made, the host or network unreachable, the connection timing out, the
 * name not resolving; and what to call it (such as "not listening (connection refused at
 * <address>)"). A failure once connected (a wrong secret, another protocol, a TLS port, not a
 * GalleonFS node) or an answer (a node outside any cluster) is not: the peer is there, and asking
 * again changes nothing.
 */
export function notThereYet (err: unknown, address: string): string | undefined {
  if ((err as { code?: string }).code !== 'BACKEND_UNAVAILABLE') return undefined
  // The transport's words for a connection that failed before the handshake began (TcpTransport):
  // one that ended later (a peer that hung up during the handshake, a TLS port, an HTTP server) is
  // a peer there. The probe dials plain TCP: with TLS, a failed TLS handshake would read so too.
  // The connection being made past the request's timeout (a peer whose packets are dropped) fails
  // with "no reply", not retried: it cannot be told from a peer that took the connection and is mute.
  const why = /^cannot connect to \S+: (.*); is the node running and listening there\?$/.exec((err as Error).message)?.[1]
  if (why === undefined) return undefined
  // Node's connect to a name of several addresses (IPv4 and IPv6) fails, when each of them did,
  // with an AggregateError whose message is empty.
  if (why === '') return `not reachable (no address of ${address} took the connection)`
  const errno = /\b(ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|EHOSTDOWN|ETIMEDOUT|ENOTFOUND|EAI_AGAIN)\b/.exec(why)?.[1]
  switch (errno) {
    case 'ECONNREFUSED': return `not listening (connection refused at ${address})`
    case 'ENOTFOUND': case 'EAI_AGAIN': return `not reachable (its name does not resolve, at ${address})`
    case 'EHOSTUNREACH': case 'EHOSTDOWN': return `not reachable (host unreachable at ${address})`
    case 'ENETUNREACH': return `not reachable (network unreachable at ${address})`
    case 'ETIMEDOUT': return `not reachable (the connection timed out at ${address})`
    case 'ECONNRESET': return `not reachable (the connection was reset at ${address})`
    default: return undefined
  }
}

/**
 * Asks the nodes at `addresses` where their cluster's coordinator is (the first that answers).
 * While none has answered but some say they are starting (or, with `waitForAbsent`, are not there
 * yet), those are asked again (after 100 ms, 200 ms for those not there, then twice as long each
 * time up to 2 s) until `waitMs` has passed; any other failure (a wrong secret, a node outside any
 * cluster, and without `waitForAbsent` no node there) is final at once.
 */
export async function discoverCluster (config: DaemonConfig, secret: string, addresses: readonly string[], options: DiscoverOptions = {}): Promise<ClusterSettings> {
  const waitMs = options.waitMs ?? Math.round(config.peerWaitSeconds * 1000)
  const waitForAbsent = options.waitForAbsent === true && waitMs > 0
  const began = performance.now()
  const probe = new TcpTransport({ nodeId: `${nodeIdOf(config)}-joining`.slice(0, 63), clusterSecret: secret, ...keepaliveOptions(config) })
  const failures = new Map<string, string>()
  // The peers waited for, and why (from the last time each was asked).
  const waited = new Map<string, PeerWaitReason>()
  const told = new Set<PeerWaitReason>()
  let asking = [...addresses]
  const signal = options.signal
  const cancelled = (): GalleonError => {
    const why = signal?.reason instanceof GalleonError ? ` (${signal.reason.message})` : ''
    return new GalleonError('CANCELLED', `the wait for ${asking.join(', ')} to tell where the cluster's coordinator is was cancelled${why}; nothing was joined`)
  }
  // A function, not a test of signal.aborted inline: it changes while a request is under way.
  const aborted = (): boolean => signal?.aborted === true
  try {
    for (let round = 0, retryMs = 0; ; round++) {
      const waitNow: string[] = []
      waited.clear()
      for (const address of asking) {
        if (aborted()) throw cancelled()
        try {
          const reply = await askClusterInfo(probe, address, signal)
          const settings = reply.header as unknown as ClusterSettings
          if (Array.isArray(settings.etcdEndpoints) && settings.etcdEndpoints.length > 0) return { etcdEndpoints: settings.etcdEndpoints, etcdPrefix: settings.etcdPrefix }
          failures.set(address, 'no coordinator in its answer')
        } catch (err) {
          // Cancelled mid-request: not a failure of that peer.
          if (aborted()) throw cancelled()
          const absent = waitForAbsent ? notThereYet(err, address) : undefined
          if (isStartingAnswer(err)) waited.set(address, 'starting')
          else if (absent !== undefined) waited.set(address, 'not-listening')
          if (waited.has(address)) waitNow.push(address)
          const code = (err as { code?: string }).code
          failures.set(address, absent !== undefined ? absent : code === 'NOT_IMPLEMENTED' ? 'not a cluster member' : (err as Error).message)
        }
      }
      asking = waitNow
      const left = waitMs - (performance.now() - began)
      if (asking.length === 0 || left <= 0) break
      for (const reason of ['not-listening', 'starting'] as const) {
        const peers = asking.filter((address) => waited.get(address) === reason)
        if (peers.length > 0 && !told.has(reason)) {
          told.add(reason)
          options.onWait?.(peers, waitMs, reason)
        }
      }
      // Starting peers are asked again sooner at first: their process is up and answering.
      retryMs = round === 0 ? ([...waited.values()].includes('starting') ? FIRST_RETRY_MS : FIRST_ABSENT_RETRY_MS) : Math.min(retryMs * 2, LONGEST_RETRY_MS)
      try {
        await sleep(Math.min(retryMs, left), undefined, signal === undefined ? undefined : { signal })
      } catch {
        throw cancelled()
      }
    }
  } finally {
    await probe.close().catch(() => {})
  }
  if (asking.length > 0) {
    const others = [...failures].filter(([address]) => !asking.includes(address)).map(([address, why]) => `${address}: ${why}`)
    const seconds = Math.round((performance.now() - began) / 100) / 10
    const absent = asking.filter((address) => waited.get(address) === 'not-listening')
    if (absent.length === 0) {
      const one = asking.length === 1
      throw new GalleonError('BACKEND_UNAVAILABLE', `the peer${one ? '' : 's'} ${asking.join(', ')} ${one ? 'is' : 'are'} still starting after ${seconds} s (a node tells joining nodes where the cluster's coordinator is once its storage is open and it has joined; a big journal to replay takes a while)${others.length === 0 ? '' : `, and no other peer told (${others.join('; ')})`}: try again once ${one ? 'it is' : 'they are'} up, name a peer that is running, or let the daemon wait longer with --peer-wait-seconds (peer_wait in [cluster]; now ${waitMs / 1000} s)`)
    }
    // Some peer was never there: name each, and why, with what was heard from the others.
    const each = addresses.map((address) => `${address}: ${waited.get(address) === 'starting' ? 'still starting' : failures.get(address) ?? 'not asked'}`)
    const one = absent.length === 1
    throw new GalleonError('BACKEND_UNAVAILABLE', `no peer told where the cluster's coordinator is after waiting ${seconds} s for peers that are not listening yet (${each.join('; ')}): start ${one ? 'that peer' : 'those peers'} (a node listens on its bind address only once it has found its cluster, so nodes that name only each other, none started with --etcd-endpoints, each wait for the other until this fails: the first node of a cluster is started with --etcd-endpoints, the others join it by its bind address), check ${one ? 'its address' : 'their addresses'} in --peer-addresses (peer_addresses in [cluster]), or let the daemon wait longer with --peer-wait-seconds (peer_wait in [cluster]; now ${waitMs / 1000} s; 0: no wait)`)
  }
  throw new GalleonError('BACKEND_UNAVAILABLE', `no peer told where the cluster's coordinator is (${[...failures].map(([address, why]) => `${address}: ${why}`).join('; ')}); the first node of a cluster is started with --etcd-endpoints (clustering needs etcd), the others join it by its bind address`)
}

/**
 * A clustered daemon tells joining nodes (who know the secret) where the coordinator is; `transport`
 * (the cluster's) stops answering them that it is starting.
 */
export function answerClusterInfo (g: GalleonFS, settings: ClusterSettings, transport: EarlyTcpTransport): void {
  g.cluster?.handle(CLUSTER_INFO, async () => ({ kind: CLUSTER_INFO, header: { etcdEndpoints: settings.etcdEndpoints, etcdPrefix: settings.etcdPrefix } }))
  transport.servingClusterInfo()
}
