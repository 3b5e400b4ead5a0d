// `galleonfs -d`: a thin daemon over the library. It opens one GalleonFS instance and serves an
// HTTP/JSON API on the IPC address for the CLI (and GET /metrics for Prometheus). Every request
// carries the API token (Authorization: Bearer ...), generated at first start and kept, mode 0600,
// in the storage path and in a per-user runtime file named after the IPC address, where the CLI on
// the same machine finds it.

import { spawn } from 'node:child_process'
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { constants as fsConstants } from 'node:fs'
import { access, chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import {
  checkDriverOptions, commandKeyProvider, GalleonFS, httpKeyProvider, isGalleonError, listDrivers, PROMETHEUS_CONTENT_TYPE,
  type DriverKind, type DriverRef, type GalleonErrorCode, type KeyProvider, type OpenOptions, type ProgressListener, GalleonError
} from '../src/index.js'
import type { ClusterOptions } from '../src/cluster/manager.js'
import { NbdServer } from '../backends/nbd/index.js'
import { TcpTransport } from '../backends/tcp/index.js'
import { EtcdCoordinator, type EtcdCoordinatorOptions } from '../backends/etcd/index.js'
import { ConfigError, DAEMON_KEY_PROVIDERS, formatAddress, LOG_LEVELS, parseAddress, type DaemonConfig, type LogLevel } from './daemon-config.js'

/** Standard base64, padded: what the write endpoint takes. */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/
/** Largest request body accepted. */
const MAX_BODY_BYTES = 1024 * 1024
/** Media type of a streamed answer: progress lines, then the result (asked for with Accept). */
const NDJSON = 'application/x-ndjson'
/** Progress lines are sent at most this often. */
const PROGRESS_INTERVAL_MS = 100
/**
 * How long a stop waits for the requests in flight before it closes their connections (which
 * cancels what they asked for, as a client going away does).
 */
const STOP_GRACE_MS = 30_000

/** What a route may use besides the library. */
interface RouteContext {
  startedAt: number
  stop: () => Promise<void>
  restart: () => void
  reload: () => Promise<ReloadReport>
  nbd: () => NbdServer | undefined
  /** Set when the client streams: long operations report to it. */
  progress?: ProgressListener
  /** Aborted when the client goes away before the answer is complete. */
  signal: AbortSignal
  cluster: { join: (address: string) => Promise<unknown>, leave: (force: boolean) => Promise<unknown> }
  /** Changes the saved mounts (one change at a time). */
  updateSavedMounts: (change: (saved: SavedMount[]) => SavedMount[]) => Promise<void>
}

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
 * membership and leadership as info; replication links going down at debug (they retry).
 */
function logEvents (g: GalleonFS, log: Logger): void {
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

/** Where the CLI finds the token of the daemon at `ipcAddress` (per user, mode 0600 in a 0700 directory). */
export function runtimeTokenPath (ipcAddress: string): string {
  const base = process.env.XDG_RUNTIME_DIR ?? join(tmpdir(), `galleonfs-${process.getuid?.() ?? 'user'}`)
  // The daemon and the CLI name the file after the same form of the address (IPv6 in brackets).
  let canonical = ipcAddress
  try {
    const { host, port } = parseAddress(ipcAddress, 'ipc address')
    canonical = formatAddress(host, port)
  } catch {}
  return join(base, 'galleonfs', `token-${canonical.replace(/[^A-Za-z0-9.-]/g, '_')}`)
}

const STATUS: Partial<Record<GalleonErrorCode, number>> = {
  VOLUME_NOT_FOUND: 404, SNAPSHOT_NOT_FOUND: 404, BACKUP_NOT_FOUND: 404, POLICY_NOT_FOUND: 404, STORAGE_CLASS_NOT_FOUND: 404, POOL_NOT_FOUND: 404,
  VOLUME_EXISTS: 409, SNAPSHOT_EXISTS: 409, POLICY_EXISTS: 409, STORAGE_CLASS_EXISTS: 409, POOL_EXISTS: 409, BUSY: 409,
  INVALID_ARGUMENT: 400, OUT_OF_RANGE: 400, READ_ONLY: 409, PERMISSION_DENIED: 403, NOT_IMPLEMENTED: 501, NO_SPACE: 507,
  CANCELLED: 499, HOOK_FAILED: 424, BACKEND_UNAVAILABLE: 503, NOT_LEADER: 421, WRITE_CONCERN_UNSATISFIED: 503
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
  /** Reads the configuration again (SIGHUP, POST /v1/reload) and applies what can change while running. */
  reload: () => Promise<ReloadReport>
}

/** What a reload changed, and which changed settings wait for a restart. */
export interface ReloadReport {
  applied: string[]
  needsRestart: string[]
}

/** Settings a reload applies in place; any other change waits for a restart. */
const LIVE_SETTINGS = new Set<keyof DaemonConfig>(['logLevel', 'nbdAddress', 'mountPoint'])

/** A secret kept in a file: its text without the final line break; refused if others may read it. */
async function readSecret (path: string, what: string): Promise<string> {
  let text: string
  try {
    const mode = (await stat(path)).mode
    if ((mode & 0o077) !== 0) throw new ConfigError(`the ${what} ${path} may be read by other users (mode ${(mode & 0o777).toString(8)}); chmod 600 it`)
    text = (await readFile(path, 'utf8')).replace(/\r?\n$/, '')
  } catch (err) {
    if (err instanceof ConfigError) throw err
    throw new ConfigError(`cannot read the ${what} ${path}: ${(err as Error).message}`)
  }
  if (text.length === 0) throw new ConfigError(`the ${what} ${path} is empty`)
  return text
}

/** Whether `command` names a program that can be run (a path, or a name found on PATH). */
async function runnable (command: string): Promise<boolean> {
  const candidates = command.includes('/') ? [command] : (process.env.PATH ?? '').split(':').filter((dir) => dir.length > 0).map((dir) => join(dir, command))
  for (const candidate of candidates) {
    try {
      await access(candidate, fsConstants.X_OK)
      if ((await stat(candidate)).isFile()) return true
    } catch {}
  }
  return false
}

/** Driver options as `GET /v1/config` shows them: values that may be secrets (or, with `all`, every value) left out. */
function redactedOptions (options: Record<string, unknown> | undefined, all: boolean): Record<string, unknown> | undefined {
  if (options === undefined) return undefined
  return Object.fromEntries(Object.entries(options).map(([key, value]) => [key, all || /secret|token|password|passphrase|credential|key/i.test(key) ? '(not shown)' : value]))
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

/** The key provider options of GalleonFS.open() that the configuration asks for. */
async function keyOptions (config: DaemonConfig): Promise<{ keyProvider?: KeyProvider | DriverRef, passphrase?: string }> {
  switch (config.keyProvider) {
    case 'internal': return {}
    case 'passphrase': {
      const passphrase = config.passphraseFile !== undefined ? await readSecret(config.passphraseFile, 'passphrase file') : process.env.GALLEONFS_PASSPHRASE
      if (passphrase === undefined || passphrase === '') throw new ConfigError('key provider passphrase needs passphrase_file in [security] or the GALLEONFS_PASSPHRASE environment variable')
      return { passphrase }
    }
    case 'command': {
      const [command, ...args] = config.kmsCommand as string[]
      if (!await runnable(command as string)) throw new ConfigError(`the KMS command ${command as string} is not an executable program${(command as string).includes('/') ? '' : ' on PATH'}; check kms_command in [security]`)
      return { keyProvider: commandKeyProvider({ keyId: config.kmsKeyId as string, command: command as string, args }) }
    }
    case 'http': {
      const token = config.kmsTokenFile === undefined ? undefined : await readSecret(config.kmsTokenFile, 'KMS token file')
      try {
        return { keyProvider: httpKeyProvider({ keyId: config.kmsKeyId as string, url: config.kmsUrl as string, insecure: config.kmsInsecure, ...(token === undefined ? {} : { token }) }) }
      } catch (err) {
        throw new ConfigError(`[security] kms_url: ${(err as Error).message}`)
      }
    }
    // A key provider a driver module registered (checked by driverOptions()).
    default: return { keyProvider: { driver: config.keyProvider, options: config.keyProviderOptions ?? {} } }
  }
}

/**
 * Imports the modules named in [drivers] modules (absolute paths, or package names), each of which
 * registers drivers as it loads; logs what each one registered.
 */
async function loadDriverModules (modules: readonly string[], log: Logger): Promise<void> {
  for (const spec of modules) {
    const before = new Set(listDrivers().map((driver) => `${driver.kind}:${driver.name}`))
    try {
      await import(isAbsolute(spec) ? pathToFileURL(spec).href : spec)
    } catch (err) {
      throw new ConfigError(`cannot load the driver module ${spec} named in [drivers] modules (paths there are relative to the configuration file): ${(err as Error)?.message ?? String(err)}`)
    }
    const added = listDrivers().filter((driver) => !before.has(`${driver.kind}:${driver.name}`)).map((driver) => `${driver.kind} ${driver.name}`)
    log(added.length === 0 ? 'warn' : 'info', added.length === 0 ? 'the driver module registered no driver' : 'driver module loaded', { module: spec, registered: added })
  }
}

/** Checks that a driver the configuration names is registered and accepts its options. */
function checkConfiguredDriver (kind: DriverKind, name: string | undefined, options: Record<string, unknown> | undefined, setting: string): void {
  if (name === undefined) return
  const registered = listDrivers(kind).map((driver) => driver.name)
  if (!registered.includes(name)) throw new ConfigError(`${setting} names ${JSON.stringify(name)}, which no loaded module registered (registered: ${registered.join(', ')}); list the module that registers it in [drivers] modules`)
  try {
    checkDriverOptions(kind, name, options ?? {}, setting)
  } catch (err) {
    if (!isGalleonError(err, 'INVALID_ARGUMENT')) throw err
    throw new ConfigError(err.message)
  }
}

/** The drivers GalleonFS.open() gets from [drivers] (and a registered key provider from [security]). */
async function driverOptions (config: DaemonConfig, log: Logger): Promise<Pick<OpenOptions, 'backend' | 'backendOptions' | 'backupTarget' | 'mount'>> {
  await loadDriverModules(config.driverModules, log)
  checkConfiguredDriver('blockStore', config.blockStore, config.blockStoreOptions, '[drivers] block_store')
  checkConfiguredDriver('backupTarget', config.backupTarget, config.backupTargetOptions, '[drivers] backup_target')
  checkConfiguredDriver('mountDriver', config.mountDriver, config.mountDriverOptions, '[drivers] mount_driver')
  if (!(DAEMON_KEY_PROVIDERS as readonly string[]).includes(config.keyProvider)) checkConfiguredDriver('keyProvider', config.keyProvider, config.keyProviderOptions, '[security] key_provider')
  return {
    ...(config.blockStore === undefined ? {} : { backend: config.blockStore, backendOptions: config.blockStoreOptions ?? {} }),
    ...(config.backupTarget === undefined ? {} : { backupTarget: { driver: config.backupTarget, options: config.backupTargetOptions ?? {} } }),
    ...(config.mountPoint === undefined ? {} : { mount: config.mountDriver === undefined ? 'fuse' : { driver: config.mountDriver, options: config.mountDriverOptions ?? {} } })
  }
}

/** Where a clustered daemon finds its coordinator; kept in the storage path so a restart joins again. */
interface ClusterSettings { etcdEndpoints: string[], etcdPrefix: string }

const CLUSTER_FILE = 'daemon-cluster.json'

async function readSavedCluster (storagePath: string): Promise<ClusterSettings | undefined> {
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

async function writeSavedCluster (storagePath: string, settings: ClusterSettings | undefined): Promise<void> {
  if (settings === undefined) { await rm(join(storagePath, CLUSTER_FILE), { force: true }); return }
  const { writeFileAtomically } = await import('../src/durable-files.js')
  await writeFileAtomically(join(storagePath, CLUSTER_FILE), new TextEncoder().encode(JSON.stringify(settings, null, 2) + '\n'))
}

/** The cluster's shared secret: the file named in [cluster] secret_file, else GALLEONFS_CLUSTER_SECRET. */
async function clusterSecret (config: DaemonConfig): Promise<string | undefined> {
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

const NO_SECRET = 'clustering needs the cluster\'s shared secret: put it in a file named by secret_file in [cluster] (mode 0600), or in GALLEONFS_CLUSTER_SECRET'

function nodeIdOf (config: DaemonConfig): string {
  if (config.nodeId !== undefined) return config.nodeId
  const port = parseAddress(config.bindAddress, 'bind address').port
  return `${hostname().replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 50) || 'node'}-${port}`
}

/** This node's cluster drivers: TCP on the bind address, etcd as coordinator. */
async function clusterOptions (config: DaemonConfig, settings: ClusterSettings, secret: string): Promise<ClusterOptions> {
  const bind = parseAddress(config.bindAddress, 'bind address')
  const nodeId = nodeIdOf(config)
  const wildcard = bind.host === '0.0.0.0' || bind.host === '::'
  if (wildcard && config.advertiseAddress === undefined) {
    throw new ConfigError(`bind address ${config.bindAddress} listens on every interface, so peers cannot be told where to reach this node; set --advertise-address (advertise_address in [cluster]) to host:port as the peers see it`)
  }
  const advertise = config.advertiseAddress === undefined ? undefined : parseAddress(config.advertiseAddress, 'advertise address')
  const transport = new TcpTransport({ nodeId, clusterSecret: secret, host: bind.host, port: bind.port, ...(advertise === undefined ? {} : { advertiseHost: advertise.host }) })
  try {
    const coordinator = await EtcdCoordinator.connect({ endpoints: settings.etcdEndpoints, prefix: settings.etcdPrefix, ...await etcdAccess(config, settings) })
    return { nodeId, transport, coordinator, zone: config.zone, labels: config.labels, leaseTtlMs: Math.round(config.leaseTtlSeconds * 1000), replicaReplacementDelayMs: Math.round(config.replicaReplacementDelaySeconds * 1000), replication: config.replicationStrategy, ...(config.advertiseAddress === undefined ? {} : { advertiseAddress: config.advertiseAddress }) }
  } catch (err) {
    await transport.close().catch(() => {})
    throw err
  }
}

/** Asks the nodes at `addresses` where their cluster's coordinator is (the first that answers). */
async function discoverCluster (config: DaemonConfig, secret: string, addresses: readonly string[]): Promise<ClusterSettings> {
  const probe = new TcpTransport({ nodeId: `${nodeIdOf(config)}-joining`.slice(0, 63), clusterSecret: secret })
  const failures: string[] = []
  try {
    for (const address of addresses) {
      try {
        const reply = await probe.request(address, { kind: 'cluster-info', header: {} }, { timeoutMs: 5000 })
        const settings = reply.header as unknown as ClusterSettings
        if (Array.isArray(settings.etcdEndpoints) && settings.etcdEndpoints.length > 0) return { etcdEndpoints: settings.etcdEndpoints, etcdPrefix: settings.etcdPrefix }
        failures.push(`${address}: no coordinator in its answer`)
      } catch (err) {
        const code = (err as { code?: string }).code
        failures.push(`${address}: ${code === 'NOT_IMPLEMENTED' ? 'not a cluster member' : (err as Error).message}`)
      }
    }
  } finally {
    await probe.close().catch(() => {})
  }
  throw new GalleonError('BACKEND_UNAVAILABLE', `no peer told where the cluster's coordinator is (${failures.join('; ')}); the first node of a cluster is started with --etcd-endpoints (clustering needs etcd), the others join it by its bind address`)
}

/** A clustered daemon tells joining nodes (who know the secret) where the coordinator is. */
function answerClusterInfo (g: GalleonFS, settings: ClusterSettings): void {
  g.cluster?.handle('cluster-info', async () => ({ kind: 'cluster-info', header: { etcdEndpoints: settings.etcdEndpoints, etcdPrefix: settings.etcdPrefix } }))
}

/**
 * Starts the daemon: opens the storage, writes the token, listens. `loadConfig` reads the
 * configuration again for a reload (the file and the flags it started with).
 */
export async function startDaemon (initial: DaemonConfig, log: Logger = createLogger(), loadConfig?: () => Promise<DaemonConfig>): Promise<Daemon> {
  // What is in effect: a reload changes the live settings in here.
  const config: DaemonConfig = { ...initial }
  log.setLevel(config.logLevel)
  const ipc = parseAddress(config.ipcAddress, 'ipc address')
  // Driver modules load (and the drivers named are checked) before anything else is set up.
  const drivers = await driverOptions(config, log)
  // Clustered when etcd is named, when peers are (they say where etcd is), or when an earlier
  // `cluster join` left its settings in the storage path.
  const secret = await clusterSecret(config)
  let cluster: ClusterSettings | undefined
  if (config.etcdEndpoints.length > 0) cluster = { etcdEndpoints: config.etcdEndpoints, etcdPrefix: config.etcdPrefix }
  else if (config.peerAddresses.length > 0) {
    if (secret === undefined) throw new ConfigError(`--peer-addresses: ${NO_SECRET}`)
    const saved = await readSavedCluster(config.storagePath)
    try {
      cluster = await discoverCluster(config, secret, config.peerAddresses)
    } catch (err) {
      // Every peer down (a whole cluster restarting): the coordinator this node knew will do.
      if (saved === undefined) throw err
      log('warn', 'no peer answered; joining the cluster this node was in before', { error: (err as Error).message, etcd: saved.etcdEndpoints })
      cluster = saved
    }
  } else cluster = await readSavedCluster(config.storagePath)
  if (cluster !== undefined && secret === undefined) throw new ConfigError(NO_SECRET)
  const g = await GalleonFS.open({
    storagePath: config.storagePath,
    blockSize: config.blockSize,
    ...drivers,
    ...await keyOptions(config),
    ...(cluster === undefined ? {} : { cluster: await clusterOptions(config, cluster, secret as string) })
  })
  logEvents(g, log)
  let clusterSettings = cluster
  if (clusterSettings !== undefined) {
    answerClusterInfo(g, clusterSettings)
    await writeSavedCluster(config.storagePath, clusterSettings)
    log('info', 'joined the cluster', { nodeId: g.cluster?.nodeId, bindAddress: g.cluster?.address, etcd: clusterSettings.etcdEndpoints })
  }
  const clusterControl = {
    join: async (address: string): Promise<unknown> => {
      if (g.cluster !== undefined) throw new GalleonError('BUSY', `this daemon is in a cluster already, as node ${g.cluster.nodeId}; leave it first`)
      const joinSecret = await clusterSecret(config)
      if (joinSecret === undefined) throw new HttpError(409, 'NO_CLUSTER_SECRET', NO_SECRET)
      const found = await discoverCluster(config, joinSecret, [address])
      const status = await g.joinCluster(await clusterOptions(config, found, joinSecret))
      clusterSettings = found
      answerClusterInfo(g, found)
      await writeSavedCluster(config.storagePath, found)
      log('info', 'joined the cluster', { nodeId: (status as { nodeId?: string }).nodeId, through: address })
      return status
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
  let tokenFile: string | undefined
  let finish!: () => void
  const stopped = new Promise<void>((resolve) => { finish = resolve })
  let stopping: Promise<void> | undefined
  let restartAfterStop = false
  // The API's open connections, and those of them with a request being answered (a stop ends the others).
  const connections = new Set<Socket>()
  const answering = new Set<Socket>()
  const stop = async (): Promise<void> => {
    stopping ??= (async () => {
      log('info', 'shutting down: no new requests, finishing the ones in flight, flushing, unmounting')
      const closed = new Promise<void>((resolve) => server === undefined ? resolve() : server.close(() => resolve()))
      // Once closed, the server no longer times out slow requests (headersTimeout, requestTimeout),
      // so a client that sent part of a request, or nothing, would hold the stop until it went
      // away: connections without a request being answered end now, the others at their answer's
      // end, and whatever is still open after the grace period is closed.
      for (const socket of connections) if (!answering.has(socket)) socket.destroy()
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
      const live = (key: keyof DaemonConfig): boolean => LIVE_SETTINGS.has(key) && (key !== 'mountPoint' || (config.mountPoint !== undefined && next.mountPoint !== undefined))
      // The one step that can fail (listening on the new NBD address) comes first, so a reload
      // either applies every live change or none.
      let moved: NbdServer | undefined
      if (changed.includes('nbdAddress') && next.nbdAddress !== undefined) moved = await NbdServer.listen(g, parseAddress(next.nbdAddress, 'nbd address'))
      if (stopping !== undefined) {
        await moved?.close()
        throw new HttpError(409, 'BUSY', 'the daemon is stopping')
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
  try {
    const token = await loadOrCreateToken(join(config.storagePath, 'ipc.token'))
    server = createServer((request, response) => {
      const socket = request.socket
      answering.add(socket)
      response.once('close', () => {
        answering.delete(socket)
        // A kept-alive connection would wait idle for its next request: while stopping it ends.
        if (stopping !== undefined) socket.end()
      })
      void handle(request, response).catch(() => {})
    })
    server.on('connection', (socket: Socket) => {
      connections.add(socket)
      socket.once('close', () => connections.delete(socket))
    })
    const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
      const send = (status: number, body: unknown, type = 'application/json'): void => {
        const text = typeof body === 'string' ? body : JSON.stringify(body)
        response.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) })
        response.end(text)
      }
      let streaming = false
      const began = performance.now()
      // A client that goes away mid-answer cancels what it asked for (a backup, a restore).
      const gone = new AbortController()
      response.once('close', () => {
        if (!response.writableFinished) gone.abort()
        log('debug', 'request', { method: request.method, url: request.url, status: response.statusCode, ms: Math.round((performance.now() - began) * 10) / 10, ...(response.writableFinished ? {} : { cancelled: true }) })
      })
      try {
        const offered = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1] ?? ''
        if (!sameToken(offered, token)) throw new HttpError(401, 'UNAUTHORIZED', 'a valid API token is required (Authorization: Bearer <token>); the CLI finds it in the runtime file or takes --token / GALLEONFS_TOKEN')
        const url = new URL(request.url ?? '/', 'http://daemon')
        const body = await readBody(request)
        const context: RouteContext = { startedAt, stop, restart: () => { restartAfterStop = true; void stop() }, reload, nbd: () => nbd, signal: gone.signal, cluster: clusterControl, updateSavedMounts }
        if ((request.headers.accept ?? '').includes(NDJSON)) {
          // Progress lines while the operation runs, then one line with its result or error.
          streaming = true
          response.writeHead(200, { 'content-type': NDJSON })
          // The answer begins now (not with the first line): the client waits for its beginning
          // only so long, and an operation may run a while before it reports progress, or never.
          response.flushHeaders()
          let last = 0
          context.progress = ({ bytesDone, bytesTotal }) => {
            const now = Date.now()
            if (bytesDone < bytesTotal && bytesDone > 0 && now - last < PROGRESS_INTERVAL_MS) return
            last = now
            response.write(JSON.stringify({ progress: { bytesDone, bytesTotal } }) + '\n')
          }
          const result = await route(g, config, request.method ?? 'GET', url, body, context)
          response.end(JSON.stringify({ result: result ?? null }) + '\n')
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
        if (streaming) response.end(JSON.stringify({ error }) + '\n')
        else send(status, { error })
      }
    }
    await new Promise<void>((resolve, reject) => {
      (server as Server).once('error', reject)
      ;(server as Server).listen(ipc.port, ipc.host, () => resolve())
    })
    const address = server.address()
    const actual = typeof address === 'object' && address !== null ? formatAddress(ipc.host, address.port) : config.ipcAddress
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
      log('info', 'serving NBD exports', { nbdAddress: formatAddress(nbd.host, nbd.port) })
    }
    log('info', 'ready', { ipcAddress: actual, ...(nbd === undefined ? {} : { nbdAddress: formatAddress(nbd.host, nbd.port) }), storagePath: resolve(config.storagePath), pid: process.pid })
    return { ipcAddress: actual, stop, stopped, reload }
  } catch (err) {
    server?.close()
    await nbd?.close().catch(() => {})
    await g.close().catch(() => {})
    throw err
  }
}

/** Options of a long operation: progress to a streaming client, cancelled when the client goes. */
function progress (daemon: RouteContext): { onProgress?: ProgressListener, signal: AbortSignal } {
  return { signal: daemon.signal, ...(daemon.progress === undefined ? {} : { onProgress: daemon.progress }) }
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
async function route (g: GalleonFS, config: DaemonConfig, method: string, url: URL, body: unknown, daemon: RouteContext): Promise<unknown> {
  const parts = url.pathname.split('/').filter((p) => p.length > 0).map((part) => {
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
  const options = (body ?? {}) as Record<string, unknown>
  switch (key) {
    case 'GET /metrics': return await g.metricsText()
    case 'GET /v1/status': {
      const volumes = await g.listVolumes()
      const nbd = daemon.nbd()
      return { state: 'running', pid: process.pid, uptimeSeconds: Math.round((Date.now() - daemon.startedAt) / 1000), storagePath: resolve(config.storagePath), backend: g.backend, blockSize: g.blockSize, volumes: volumes.length, mounts: g.mounts.listMounts().length, nbdAddress: nbd === undefined ? null : formatAddress(nbd.host, nbd.port) }
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
      await g.deleteVolume(ref, { force: url.searchParams.get('force') === 'true' })
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
      if (typeof options.offset !== 'number' || typeof options.data !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'write needs { offset, data (base64), concern? }')
      // Buffer.from() skips characters that are not base64, so a mistake would write other bytes.
      if (!BASE64.test(options.data)) throw new HttpError(400, 'INVALID_ARGUMENT', 'write data must be base64 (A-Z, a-z, 0-9, + and /, padded with = to a multiple of 4 characters)')
      await g.write(ref, options.offset, Buffer.from(options.data, 'base64'), (options.concern ?? 'WriteAcknowledged') as never)
      return undefined
    }
    case 'POST /v1/volumes/:/read': {
      if (typeof options.offset !== 'number' || typeof options.length !== 'number') throw new HttpError(400, 'INVALID_ARGUMENT', 'read needs { offset, length }')
      if (options.length > 16 << 20) throw new HttpError(400, 'INVALID_ARGUMENT', `read at most 16 MiB at once, not ${options.length} bytes`)
      return { data: Buffer.from(await g.read(ref, options.offset, options.length)).toString('base64') }
    }
    case 'POST /v1/volumes/:/migrate': {
      // Progress in blocks, reported to a streaming client in bytes (what the CLI's bar draws).
      const blockSize = (await g.getVolume(ref)).blockSize
      const onProgress = daemon.progress
      return await g.migrateVolume(ref, {
        ...(options.storageClass === undefined ? {} : { storageClass: options.storageClass as string }),
        ...(options.pool === undefined ? {} : { pool: options.pool as string }),
        ...(options.node === undefined ? {} : { node: options.node as string })
      }, { signal: daemon.signal, ...(onProgress === undefined ? {} : { onProgress: (event) => { onProgress({ bytesDone: event.blocksDone * blockSize, bytesTotal: event.blocksTotal * blockSize }) } }) })
    }
    case 'POST /v1/volumes/:/expand': return await g.expandVolume(ref, options.sizeBytes as number)
    case 'POST /v1/volumes/:/clone': return await g.cloneVolume(options.snapshot === undefined ? ref : { volume: ref, snapshot: options.snapshot as string }, options.name as string)
    case 'POST /v1/volumes/:/mount': {
      if (config.mountPoint === undefined) throw new HttpError(409, 'NO_MOUNT_POINT', 'this daemon was started without --mount-point, so it cannot mount volumes; restart it with --mount-point <dir>')
      const path = typeof options.path === 'string' && options.path.length > 0 ? options.path : join(config.mountPoint, ref)
      const strings = typeof options.options === 'string' ? options.options.split(',').map((o) => o.trim()).filter((o) => o.length > 0) : []
      const id = await g.mounts.mountVolume(ref, path, { options: strings })
      const mount = g.mounts.listMounts().find((m) => m.id === id)
      if (mount !== undefined) await daemon.updateSavedMounts((saved) => [...saved.filter((m) => m.path !== mount.path), { volumeId: mount.volumeId, path: mount.path, options: strings }])
      return mount
    }
    case 'POST /v1/unmount': {
      const target = options.target as string
      const mount = g.mounts.listMounts().find((m) => m.id === target || m.path === resolve(target) || m.volumeName === target || m.volumeId === target)
      await g.mounts.unmountVolume(mount?.id ?? target, { force: options.force === true })
      if (mount !== undefined) await daemon.updateSavedMounts((saved) => saved.filter((m) => m.path !== mount.path))
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
    case 'POST /v1/backups': return await g.createBackup(options.volume as string, { strategy: options.strategy as never, ...target(url, options), ...progress(daemon) })
    case 'POST /v1/backups/:/restore': return await g.restoreBackup(ref, { ...(options.name === undefined ? {} : { name: options.name as string }), ...(options.volume === undefined ? {} : { volume: options.volume as string }), ...(options.pool === undefined ? {} : { pool: options.pool as string }), ...target(url, options), ...progress(daemon) })
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
      if (ref === 'leave') return await daemon.cluster.leave(options.force === true)
      if (ref !== 'join') throw new HttpError(404, 'NOT_FOUND', `no API ${method} ${url.pathname}`)
      if (typeof options.address !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'cluster join needs { address }: the bind address (host:port) of a node of the cluster')
      try {
        parseAddress(options.address, 'the address of a cluster node')
      } catch (err) {
        throw new HttpError(400, 'INVALID_ARGUMENT', (err as Error).message)
      }
      return await daemon.cluster.join(options.address)
    default:
      throw new HttpError(404, 'NOT_FOUND', `no API ${method} ${url.pathname}`)
  }
}
