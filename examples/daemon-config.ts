// The daemon's settings: defaults, the TOML configuration file (`--config`), then command-line
// flags, each overriding the one before. Every bad value is reported with where it came from.

import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { parse as parseToml } from 'smol-toml'

/** What the daemon runs with. */
export interface DaemonConfig {
  storagePath: string
  blockSize: number
  /** Node-to-node address (clustering, a later release). */
  bindAddress: string
  /** HTTP/JSON API for the CLI. */
  ipcAddress: string
  /** With both set, the API is served over HTTPS with this certificate and key (PEM files). */
  ipcTlsCertFile: string | undefined
  ipcTlsKeyFile: string | undefined
  peerAddresses: string[]
  replicationStrategy: 'synchronous' | 'asynchronous'
  persistenceLevel: string
  /** Where volumes are mounted through FUSE (`<mountPoint>/<volume>/data`), if anywhere. */
  mountPoint: string | undefined
  /** Serve NBD exports here, if set. */
  nbdAddress: string | undefined
  /** Seconds an NBD client has to finish its handshake before it is disconnected (0: no limit). */
  nbdHandshakeTimeoutSeconds: number
  /** TLS for the NBD server (then required of every client): its certificate and key (PEM files)... */
  nbdTlsCertFile: string | undefined
  nbdTlsKeyFile: string | undefined
  /** ...the CA that every client's certificate must chain to (PEM), if clients must present one... */
  nbdTlsCaFile: string | undefined
  /** ...and/or pre-shared keys, `identity:hexkey` lines as psktool writes them (mode 0600). */
  nbdTlsPskFile: string | undefined
  /** Log level; when unset, GALLEONFS_LOG or RUST_LOG, else info. */
  logLevel: LogLevel | undefined
  /**
   * Who wraps the volumes' data keys: a key file in the storage path, a passphrase, a KMS command,
   * an HTTP KMS, or a key provider a driver module registered (by its name).
   */
  keyProvider: string
  /** Options of a registered key provider (not of the four above, which have settings of their own). */
  keyProviderOptions: Record<string, unknown> | undefined
  /** Modules imported at start-up, before the storage is opened, to register drivers (paths or package names). */
  driverModules: string[]
  /** The block store by its registered name (default: the built-in `file`). */
  blockStore: string | undefined
  blockStoreOptions: Record<string, unknown> | undefined
  /** The default backup target by its registered name (backups without --target go there). */
  backupTarget: string | undefined
  backupTargetOptions: Record<string, unknown> | undefined
  /** The mount driver by its registered name, for mounts under the mount point (default: `fuse`). */
  mountDriver: string | undefined
  mountDriverOptions: Record<string, unknown> | undefined
  /** The key's name in the KMS (command and http). */
  kmsKeyId: string | undefined
  /** The KMS program and its arguments (command). */
  kmsCommand: string[] | undefined
  /** The KMS endpoint (http). */
  kmsUrl: string | undefined
  /** A file holding the bearer token for the KMS endpoint (http). */
  kmsTokenFile: string | undefined
  /** A file holding the passphrase (passphrase; else GALLEONFS_PASSPHRASE). */
  passphraseFile: string | undefined
  /** Allow kms_url to be plain http to another host. */
  kmsInsecure: boolean
  /** This node's id in the cluster (default: the host name and the bind port). */
  nodeId: string | undefined
  /** This node's failure domain. */
  zone: string
  /** This node's labels, for placement. */
  labels: Record<string, string>
  /** etcd client URLs: the cluster's coordinator. */
  etcdEndpoints: string[]
  /** Key prefix of this cluster in etcd. */
  etcdPrefix: string
  /** A file holding the cluster's shared secret (else GALLEONFS_CLUSTER_SECRET). */
  clusterSecretFile: string | undefined
  /** etcd user, when etcd has authentication on; its password in etcdPasswordFile or GALLEONFS_ETCD_PASSWORD. */
  etcdUsername: string | undefined
  etcdPasswordFile: string | undefined
  /** PEM files for https etcd endpoints: the CA that signed etcd's certificate, and a client certificate and key. */
  etcdCaFile: string | undefined
  etcdCertFile: string | undefined
  etcdKeyFile: string | undefined
  /** host:port peers reach this node at, when the bind address is a wildcard or behind NAT. */
  advertiseAddress: string | undefined
  /** Seconds a node may be silent before it counts as failed (its volumes fail over). */
  leaseTtlSeconds: number
  /** Seconds a failed node's copies wait before the cluster replaces them on other nodes. */
  replicaReplacementDelaySeconds: number
  /** Seconds a call on a node without the primary of its volume keeps trying to reach one (through a failover) before it fails. */
  failoverWaitSeconds: number
  /** Seconds of hearing nothing on a connection to a peer before it sends a keepalive (0: none). */
  keepaliveIntervalSeconds: number
  /** Seconds a connection to a peer may stay silent (and take none of our bytes) after a keepalive before it is closed. */
  keepaliveTimeoutSeconds: number
  /** Seconds a joining node asks again a peer that answers it is starting (its storage opening) before it gives up (0: asked once). */
  peerWaitSeconds: number
}

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace'] as const
export type LogLevel = typeof LOG_LEVELS[number]

/** The persistence levels of the seed's `--persistence-level` (accepted and shown; not used by this release). */
const PERSISTENCE_LEVELS: readonly string[] = ['basic', 'enhanced', 'high', 'maximum']

export const DEFAULTS: DaemonConfig = {
  storagePath: './galleonfs_storage',
  blockSize: 4096,
  bindAddress: '127.0.0.1:8080',
  ipcAddress: '127.0.0.1:8090',
  peerAddresses: [],
  replicationStrategy: 'synchronous',
  persistenceLevel: 'enhanced',
  mountPoint: undefined,
  nbdAddress: undefined,
  nbdHandshakeTimeoutSeconds: 10,
  nbdTlsCertFile: undefined,
  ipcTlsCertFile: undefined,
  ipcTlsKeyFile: undefined,
  nbdTlsKeyFile: undefined,
  nbdTlsCaFile: undefined,
  nbdTlsPskFile: undefined,
  logLevel: undefined,
  keyProvider: 'internal',
  keyProviderOptions: undefined,
  driverModules: [],
  blockStore: undefined,
  blockStoreOptions: undefined,
  backupTarget: undefined,
  backupTargetOptions: undefined,
  mountDriver: undefined,
  mountDriverOptions: undefined,
  kmsKeyId: undefined,
  kmsCommand: undefined,
  kmsUrl: undefined,
  kmsTokenFile: undefined,
  passphraseFile: undefined,
  kmsInsecure: false,
  nodeId: undefined,
  zone: 'default',
  labels: {},
  etcdEndpoints: [],
  etcdPrefix: '/galleonfs/',
  clusterSecretFile: undefined,
  etcdUsername: undefined,
  etcdPasswordFile: undefined,
  etcdCaFile: undefined,
  etcdCertFile: undefined,
  etcdKeyFile: undefined,
  advertiseAddress: undefined,
  leaseTtlSeconds: 10,
  replicaReplacementDelaySeconds: 600,
  failoverWaitSeconds: 30,
  keepaliveIntervalSeconds: 5,
  keepaliveTimeoutSeconds: 10,
  peerWaitSeconds: 300
}

/** The key providers the daemon sets up from [security] settings of their own (any other name is a registered driver). */
export const DAEMON_KEY_PROVIDERS = ['internal', 'passphrase', 'command', 'http'] as const

const DRIVER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

/** A configuration problem: the daemon does not start, and says why. */
export class ConfigError extends Error {}

const ADDRESS = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/

/** host:port, checked. */
export function parseAddress (value: unknown, where: string): { host: string, port: number } {
  const match = typeof value === 'string' ? ADDRESS.exec(value) : null
  const port = match === null ? -1 : Number(match[2])
  if (match === null || port > 65535) throw new ConfigError(`${where} must be host:port such as 127.0.0.1:8090, got ${JSON.stringify(value)}`)
  return { host: (match[1] as string).replace(/^\[|\]$/g, ''), port }
}

/** `host:port`, with an IPv6 host in brackets (the form parseAddress() reads back). */
export function formatAddress (host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`
}

/** The keys the configuration file may hold, by section (the rest of the seed's keys are accepted and reported as not used yet). */
const FILE_KEYS: Record<string, Record<string, keyof DaemonConfig | null>> = {
  daemon: { storage_path: 'storagePath', block_size: 'blockSize', bind_address: 'bindAddress', ipc_address: 'ipcAddress', ipc_tls_cert_file: 'ipcTlsCertFile', ipc_tls_key_file: 'ipcTlsKeyFile', mount_point: 'mountPoint', nbd_address: 'nbdAddress', nbd_handshake_timeout: 'nbdHandshakeTimeoutSeconds', nbd_tls_cert_file: 'nbdTlsCertFile', nbd_tls_key_file: 'nbdTlsKeyFile', nbd_tls_ca_file: 'nbdTlsCaFile', nbd_tls_psk_file: 'nbdTlsPskFile', log_level: 'logLevel' },
  cluster: { peer_addresses: 'peerAddresses', auto_join: null, health_check_interval: null, node_id: 'nodeId', zone: 'zone', labels: 'labels', etcd_endpoints: 'etcdEndpoints', etcd_prefix: 'etcdPrefix', secret_file: 'clusterSecretFile', etcd_username: 'etcdUsername', etcd_password_file: 'etcdPasswordFile', etcd_ca_file: 'etcdCaFile', etcd_cert_file: 'etcdCertFile', etcd_key_file: 'etcdKeyFile', advertise_address: 'advertiseAddress', lease_ttl: 'leaseTtlSeconds', replica_replacement_delay: 'replicaReplacementDelaySeconds', failover_wait: 'failoverWaitSeconds', keepalive_interval: 'keepaliveIntervalSeconds', keepalive_timeout: 'keepaliveTimeoutSeconds', peer_wait: 'peerWaitSeconds' },
  replication: { strategy: 'replicationStrategy', min_replicas: null, max_replicas: null },
  persistence: { level: 'persistenceLevel', journal_size: null, checkpoint_interval: null },
  security: { encryption_at_rest: null, tls_enabled: null, auth_required: null, key_provider: 'keyProvider', key_provider_options: 'keyProviderOptions', kms_key_id: 'kmsKeyId', kms_command: 'kmsCommand', kms_url: 'kmsUrl', kms_token_file: 'kmsTokenFile', passphrase_file: 'passphraseFile', kms_insecure: 'kmsInsecure' },
  drivers: { modules: 'driverModules', block_store: 'blockStore', block_store_options: 'blockStoreOptions', backup_target: 'backupTarget', backup_target_options: 'backupTargetOptions', mount_driver: 'mountDriver', mount_driver_options: 'mountDriverOptions' }
}

/** How a setting is named where the user gave it: as its flag, or as its key in the configuration file. */
export type SettingName = (field: string) => string

/** A setting as its command-line flag: `ipcAddress` is `--ipc-address` (every flag is named after its setting). */
export const flagName: SettingName = (field) => `--${field.replace(/[A-Z]/g, (upper) => `-${upper.toLowerCase()}`)}`

/** A setting as its key in the configuration file: `ipcAddress` is `ipc_address in [daemon]`. */
export const fileKeyName: SettingName = (field) => {
  for (const [section, keys] of Object.entries(FILE_KEYS)) {
    const key = Object.entries(keys).find(([, known]) => known === field)?.[0]
    if (key !== undefined) return `${key} in [${section}]`
  }
  return field
}

/** Reads a TOML configuration file into settings (and the keys it holds that this release ignores). */
export async function readConfigFile (path: string): Promise<{ settings: Partial<DaemonConfig>, ignored: string[] }> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read the configuration file ${path}: ${(err as Error).message}`)
  }
  let document: Record<string, unknown>
  try {
    document = parseToml(text) as Record<string, unknown>
  } catch (err) {
    throw new ConfigError(`the configuration file ${path} is not valid TOML: ${(err as Error).message}`)
  }
  const settings: Record<string, unknown> = {}
  const ignored: string[] = []
  for (const [section, body] of Object.entries(document)) {
    // Own keys only: a section or key named like an Object.prototype member (constructor, toString) is unknown too.
    const keys = Object.hasOwn(FILE_KEYS, section) ? FILE_KEYS[section] : undefined
    if (keys === undefined) {
      // `storage_path = "..."` above every [section] header is a key, not a section.
      if (body === null || typeof body !== 'object' || Array.isArray(body) || body instanceof Date) {
        const home = Object.entries(FILE_KEYS).find(([, known]) => Object.hasOwn(known, section))?.[0]
        throw new ConfigError(`${path}: ${section} stands outside any section; every key belongs to one${home === undefined ? ` (sections are ${Object.keys(FILE_KEYS).map((s) => `[${s}]`).join(', ')})` : `: put it under [${home}]`}`)
      }
      throw new ConfigError(`${path}: unknown section [${section}]; sections are ${Object.keys(FILE_KEYS).map((s) => `[${s}]`).join(', ')}`)
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new ConfigError(`${path}: [${section}] must be a table`)
    for (const [key, value] of Object.entries(body as Record<string, unknown>)) {
      if (!Object.hasOwn(keys, key)) throw new ConfigError(`${path}: unknown key ${key} in [${section}]; allowed: ${Object.keys(keys).join(', ')}`)
      const field = keys[key]
      if (field === null || field === undefined) { ignored.push(`${section}.${key}`); continue }
      settings[field] = value
    }
  }
  const checked = check(settings, path, fileKeyName)
  // Module paths are relative to the file that names them; package names stay as they are.
  if (checked.driverModules !== undefined) checked.driverModules = checked.driverModules.map((spec) => spec.startsWith('./') || spec.startsWith('../') ? resolve(dirname(path), spec) : spec)
  return { settings: checked, ignored }
}

/**
 * Checks and normalizes settings from one source (`where`: a file path or "command line"); a bad
 * one is named as the user wrote it there (`nameOf`: {@link flagName} or {@link fileKeyName}).
 */
export function check (raw: Record<string, unknown>, where: string, nameOf: SettingName): Partial<DaemonConfig> {
  const out: Partial<DaemonConfig> = {}
  for (const [key, value] of Object.entries(raw)) {
    if (value === undefined) continue
    // `${where}: --ipc-address` or `daemon.toml: ipc_address in [daemon]`, the start of every complaint.
    const bad = `${where}: ${nameOf(key)}`
    switch (key as keyof DaemonConfig) {
      case 'persistenceLevel':
        // The seed's four levels: this release uses none of them (a warning says so), but a typo
        // ("enhancd") is a bad value like any other, not a level.
        if (typeof value !== 'string' || !PERSISTENCE_LEVELS.includes(value)) throw new ConfigError(`${bad} must be one of ${PERSISTENCE_LEVELS.join(', ')}, got ${JSON.stringify(value)}`)
        out.persistenceLevel = value
        break
      case 'storagePath':
        if (typeof value !== 'string' || value.length === 0) throw new ConfigError(`${bad} must be a non-empty string, got ${JSON.stringify(value)}`)
        out[key as 'storagePath'] = value
        break
      case 'mountPoint':
        if (typeof value !== 'string' || value.length === 0) throw new ConfigError(`${bad} must be a directory path, got ${JSON.stringify(value)}`)
        out.mountPoint = value
        break
      case 'kmsKeyId':
      case 'kmsTokenFile':
      case 'passphraseFile':
        if (typeof value !== 'string' || value.length === 0) throw new ConfigError(`${bad} must be a non-empty string, got ${JSON.stringify(value)}`)
        out[key as 'kmsKeyId'] = value
        break
      case 'logLevel':
        if (!LOG_LEVELS.includes(value as LogLevel)) throw new ConfigError(`${bad} must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(value)}`)
        out.logLevel = value as LogLevel
        break
      case 'keyProvider':
        if (typeof value !== 'string' || !DRIVER_NAME.test(value)) throw new ConfigError(`${bad} must be internal, passphrase, command, http or the name of a key provider a driver module registers, got ${JSON.stringify(value)}`)
        out.keyProvider = value
        break
      case 'blockStore':
      case 'backupTarget':
      case 'mountDriver':
        if (typeof value !== 'string' || !DRIVER_NAME.test(value)) throw new ConfigError(`${bad} must be the name of a registered driver (1 to 63 letters, digits, '.', '_' or '-'), got ${JSON.stringify(value)}`)
        out[key as 'blockStore'] = value
        break
      case 'keyProviderOptions':
      case 'blockStoreOptions':
      case 'backupTargetOptions':
      case 'mountDriverOptions':
        if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Date) throw new ConfigError(`${bad} must be a table of the driver's options, such as { location = "/srv/blocks" }, got ${JSON.stringify(value)}`)
        out[key as 'blockStoreOptions'] = { ...value as Record<string, unknown> }
        break
      case 'driverModules': {
        const list = typeof value === 'string' ? [value] : value
        if (!Array.isArray(list) || !list.every((spec) => typeof spec === 'string' && spec.length > 0)) throw new ConfigError(`${bad} must be a list of module paths (relative to the configuration file) or package names, such as ["./my-driver.js"], got ${JSON.stringify(value)}`)
        out.driverModules = [...list as string[]]
        break
      }
      case 'nodeId':
        if (typeof value !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(value)) throw new ConfigError(`${bad} must be 1 to 63 letters, digits, '.', '_' or '-', got ${JSON.stringify(value)}`)
        out.nodeId = value
        break
      case 'etcdPrefix':
        if (typeof value !== 'string' || !value.startsWith('/') || !value.endsWith('/') || value.length < 2) throw new ConfigError(`${bad} must start and end with / (such as "/galleonfs-prod/"), and clusters sharing an etcd need prefixes that do not nest; got ${JSON.stringify(value)}`)
        out.etcdPrefix = value
        break
      case 'zone':
      case 'clusterSecretFile':
      case 'etcdUsername':
      case 'etcdPasswordFile':
      case 'etcdCaFile':
      case 'etcdCertFile':
      case 'etcdKeyFile':
      case 'nbdTlsCertFile':
      case 'ipcTlsCertFile':
      case 'ipcTlsKeyFile':
      case 'nbdTlsKeyFile':
      case 'nbdTlsCaFile':
      case 'nbdTlsPskFile':
        if (typeof value !== 'string' || value.length === 0) throw new ConfigError(`${bad} must be a non-empty string, got ${JSON.stringify(value)}`)
        out[key as 'zone'] = value
        break
      case 'labels': {
        const parsed = typeof value === 'string'
          ? Object.fromEntries(value.split(',').map((pair) => pair.trim()).filter((pair) => pair.length > 0).map((pair) => {
            const at = pair.indexOf('=')
            if (at <= 0) throw new ConfigError(`${bad} takes key=value pairs, got ${JSON.stringify(pair)}`)
            return [pair.slice(0, at), pair.slice(at + 1)]
          }))
          : value
        if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed) || !Object.values(parsed).every((v) => typeof v === 'string')) throw new ConfigError(`${bad} must be a table of strings such as { disk = "ssd" }, got ${JSON.stringify(value)}`)
        out.labels = parsed as Record<string, string>
        break
      }
      case 'etcdEndpoints': {
        const list = typeof value === 'string' ? value.split(',').map((v) => v.trim()).filter((v) => v.length > 0) : value
        if (!Array.isArray(list) || list.length === 0 || !list.every((v) => typeof v === 'string' && /^https?:\/\/[^/]+/.test(v))) throw new ConfigError(`${bad} must be a list of URLs such as http://127.0.0.1:2379, got ${JSON.stringify(value)}`)
        out.etcdEndpoints = list as string[]
        break
      }
      case 'kmsInsecure':
        if (typeof value !== 'boolean') throw new ConfigError(`${bad} must be true or false, got ${JSON.stringify(value)}`)
        out.kmsInsecure = value
        break
      case 'kmsCommand': {
        if (typeof value === 'string' && /\s/.test(value)) throw new ConfigError(`${bad}: ${JSON.stringify(value)} holds spaces; give the program and its arguments as a list, such as ["/usr/local/bin/kms", "--profile", "prod"]`)
        const list = typeof value === 'string' ? [value] : value
        if (!Array.isArray(list) || list.length === 0 || !list.every((part) => typeof part === 'string' && part.length > 0)) {
          throw new ConfigError(`${bad} must be a program path or a list such as ["/usr/local/bin/kms", "--profile", "prod"], got ${JSON.stringify(value)}`)
        }
        out.kmsCommand = list as string[]
        break
      }
      case 'kmsUrl': {
        let url: URL | undefined
        try { url = new URL(String(value)) } catch {}
        if (typeof value !== 'string' || url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) throw new ConfigError(`${bad} must be an http: or https: address, got ${JSON.stringify(value)}`)
        if (url.username !== '' || url.password !== '') throw new ConfigError(`${bad} must not carry credentials (user:password@); put the token in a file named by kms_token_file`)
        out.kmsUrl = value
        break
      }
      case 'blockSize': {
        const size = typeof value === 'string' ? Number(value) : value
        if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 512 || size > 1 << 20 || (size & (size - 1)) !== 0) {
          throw new ConfigError(`${bad} must be a power of two from 512 to 1048576, got ${JSON.stringify(value)}`)
        }
        out.blockSize = size
        break
      }
      case 'bindAddress':
      case 'ipcAddress':
      case 'nbdAddress':
      case 'advertiseAddress':
        parseAddress(value, bad)
        out[key as 'ipcAddress'] = value as string
        break
      case 'peerAddresses': {
        const list = typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter((s) => s.length > 0) : value
        if (!Array.isArray(list)) throw new ConfigError(`${bad} must be a list of host:port, got ${JSON.stringify(value)}`)
        for (const peer of list) parseAddress(peer, `${bad}: each peer`)
        out.peerAddresses = list as string[]
        break
      }
      case 'leaseTtlSeconds': {
        const seconds = typeof value === 'string' ? Number(value) : value
        if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 1 || seconds > 3600) throw new ConfigError(`${bad} must be a number of seconds from 1 to 3600, got ${JSON.stringify(value)}`)
        out.leaseTtlSeconds = seconds
        break
      }
      case 'replicaReplacementDelaySeconds': {
        const seconds = typeof value === 'string' ? Number(value) : value
        if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 1 || seconds > 7 * 86_400) throw new ConfigError(`${bad} must be a number of seconds from 1 to 604800, got ${JSON.stringify(value)}`)
        out.replicaReplacementDelaySeconds = seconds
        break
      }
      case 'failoverWaitSeconds': {
        const seconds = typeof value === 'string' ? Number(value) : value
        if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 1 || seconds > 3600) throw new ConfigError(`${bad} must be a number of seconds from 1 to 3600, got ${JSON.stringify(value)}`)
        out.failoverWaitSeconds = seconds
        break
      }
      case 'nbdHandshakeTimeoutSeconds':
        out.nbdHandshakeTimeoutSeconds = secondsSetting(value, 0, `${bad} must be a number of seconds from 0 (no limit) to 3600`)
        break
      case 'keepaliveIntervalSeconds':
        out.keepaliveIntervalSeconds = secondsSetting(value, 0, `${bad} must be a number of seconds from 0 (no keepalives) to 3600`)
        break
      case 'keepaliveTimeoutSeconds':
        out.keepaliveTimeoutSeconds = secondsSetting(value, 0.001, `${bad} must be a number of seconds from 0.001 to 3600`)
        break
      case 'peerWaitSeconds':
        out.peerWaitSeconds = secondsSetting(value, 0, `${bad} must be a number of seconds from 0 (ask a starting peer once) to 3600`)
        break
      case 'replicationStrategy':
        if (value !== 'synchronous' && value !== 'asynchronous') throw new ConfigError(`${bad} must be synchronous or asynchronous, got ${JSON.stringify(value)}`)
        out.replicationStrategy = value
        break
      default:
        throw new ConfigError(`${where}: unknown setting ${nameOf(key)}`)
    }
  }
  return out
}

/** A number of seconds (a flag's string too) from `min` to an hour, to the millisecond; else a ConfigError saying `problem`. */
function secondsSetting (value: unknown, min: number, problem: string): number {
  const parsed = typeof value === 'string' && value.trim() !== '' ? Number(value) : value
  if (typeof parsed !== 'number' || !Number.isFinite(parsed) || parsed < min || parsed > 3600) throw new ConfigError(`${problem}, got ${JSON.stringify(value)}`)
  // Whole milliseconds; a value above 0 never rounds to 0 (which means "off" for some settings).
  return parsed > 0 ? Math.max(0.001, Math.round(parsed * 1000) / 1000) : 0
}

/** Defaults, then the file, then the flags; then the settings that depend on each other are checked. */
export function merge (...layers: Array<Partial<DaemonConfig>>): DaemonConfig {
  const config: DaemonConfig = { ...DEFAULTS, peerAddresses: [...DEFAULTS.peerAddresses] }
  for (const layer of layers) Object.assign(config, Object.fromEntries(Object.entries(layer).filter(([, v]) => v !== undefined)))
  const needs = (field: keyof DaemonConfig, setting: string): void => {
    if (config[field] === undefined) throw new ConfigError(`key provider ${config.keyProvider} needs ${setting} in [security]`)
  }
  if (config.keyProvider === 'command') { needs('kmsKeyId', 'kms_key_id'); needs('kmsCommand', 'kms_command') }
  if (config.keyProvider === 'http') { needs('kmsKeyId', 'kms_key_id'); needs('kmsUrl', 'kms_url') }
  if (config.keyProviderOptions !== undefined && (DAEMON_KEY_PROVIDERS as readonly string[]).includes(config.keyProvider)) {
    throw new ConfigError(`key_provider_options in [security] are the options of a key provider a driver module registers; key provider ${config.keyProvider} takes its settings from the other keys of [security]`)
  }
  for (const [name, options, setting] of [['blockStore', 'blockStoreOptions', 'block_store'], ['backupTarget', 'backupTargetOptions', 'backup_target'], ['mountDriver', 'mountDriverOptions', 'mount_driver']] as const) {
    if (config[options] !== undefined && config[name] === undefined) throw new ConfigError(`${setting}_options in [drivers] needs ${setting}, the name of the driver they are for`)
  }
  if ((config.ipcTlsCertFile === undefined) !== (config.ipcTlsKeyFile === undefined)) throw new ConfigError('HTTPS for the API needs both ipc_tls_cert_file and ipc_tls_key_file in [daemon] (--ipc-tls-cert-file, --ipc-tls-key-file)')
  const nbdTls = (['nbdTlsCertFile', 'nbdTlsKeyFile', 'nbdTlsCaFile', 'nbdTlsPskFile'] as const).filter((field) => config[field] !== undefined)
  if (nbdTls.length > 0) {
    const named = nbdTls.map((field) => `${fileKeyName(field)} (${flagName(field)})`).join(', ')
    if (config.nbdAddress === undefined) throw new ConfigError(`${named} set TLS for the NBD server, which runs only with nbd_address in [daemon] (--nbd-address); set it too, or remove them`)
    if ((config.nbdTlsCertFile === undefined) !== (config.nbdTlsKeyFile === undefined)) throw new ConfigError('the NBD server\'s certificate needs both nbd_tls_cert_file and nbd_tls_key_file in [daemon] (--nbd-tls-cert-file, --nbd-tls-key-file)')
    if (config.nbdTlsCaFile !== undefined && config.nbdTlsCertFile === undefined) throw new ConfigError('nbd_tls_ca_file in [daemon] (--nbd-tls-ca-file) checks the NBD clients\' certificates, which needs the server\'s own too: set nbd_tls_cert_file and nbd_tls_key_file')
  }
  if (config.mountDriver !== undefined && config.mountPoint === undefined) throw new ConfigError('mount_driver in [drivers] presents the volumes mounted under the mount point; set mount_point in [daemon] (or --mount-point) too')
  return config
}
