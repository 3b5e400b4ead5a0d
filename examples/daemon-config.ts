// The daemon's settings: defaults, the TOML configuration file (`--config`), then command-line
// flags, each overriding the one before. Every bad value is reported with where it came from.

import { readFile } from 'node:fs/promises'
import { parse as parseToml } from 'smol-toml'

/** What the daemon runs with. */
export interface DaemonConfig {
  storagePath: string
  blockSize: number
  /** Node-to-node address (clustering, a later release). */
  bindAddress: string
  /** HTTP/JSON API for the CLI. */
  ipcAddress: string
  peerAddresses: string[]
  replicationStrategy: 'synchronous' | 'asynchronous'
  persistenceLevel: string
  /** Where volumes are mounted through FUSE (`<mountPoint>/<volume>/data`), if anywhere. */
  mountPoint: string | undefined
  /** Serve NBD exports here, if set. */
  nbdAddress: string | undefined
}

export const DEFAULTS: DaemonConfig = {
  storagePath: './galleonfs_storage',
  blockSize: 4096,
  bindAddress: '127.0.0.1:8080',
  ipcAddress: '127.0.0.1:8090',
  peerAddresses: [],
  replicationStrategy: 'synchronous',
  persistenceLevel: 'enhanced',
  mountPoint: undefined,
  nbdAddress: undefined
}

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

/** The keys the configuration file may hold, by section (the rest of the seed's keys are accepted and reported as not used yet). */
const FILE_KEYS: Record<string, Record<string, keyof DaemonConfig | null>> = {
  daemon: { storage_path: 'storagePath', block_size: 'blockSize', bind_address: 'bindAddress', ipc_address: 'ipcAddress', mount_point: 'mountPoint', nbd_address: 'nbdAddress' },
  cluster: { peer_addresses: 'peerAddresses', auto_join: null, health_check_interval: null },
  replication: { strategy: 'replicationStrategy', min_replicas: null, max_replicas: null },
  persistence: { level: 'persistenceLevel', journal_size: null, checkpoint_interval: null },
  security: { encryption_at_rest: null, tls_enabled: null, auth_required: null }
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
    const keys = FILE_KEYS[section]
    if (keys === undefined) throw new ConfigError(`${path}: unknown section [${section}]; sections are ${Object.keys(FILE_KEYS).map((s) => `[${s}]`).join(', ')}`)
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new ConfigError(`${path}: [${section}] must be a table`)
    for (const [key, value] of Object.entries(body as Record<string, unknown>)) {
      if (!(key in keys)) throw new ConfigError(`${path}: unknown key ${key} in [${section}]; allowed: ${Object.keys(keys).join(', ')}`)
      const field = keys[key]
      if (field === null || field === undefined) { ignored.push(`${section}.${key}`); continue }
      settings[field] = value
    }
  }
  return { settings: check(settings, path), ignored }
}

/** Checks and normalizes settings from one source (`where`: a file path or "command line"). */
export function check (raw: Record<string, unknown>, where: string): Partial<DaemonConfig> {
  const out: Partial<DaemonConfig> = {}
  for (const [key, value] of Object.entries(raw)) {
    if (value === undefined) continue
    switch (key as keyof DaemonConfig) {
      case 'storagePath':
      case 'persistenceLevel':
        if (typeof value !== 'string' || value.length === 0) throw new ConfigError(`${where}: ${key} must be a non-empty string, got ${JSON.stringify(value)}`)
        out[key as 'storagePath'] = value
        break
      case 'mountPoint':
        if (typeof value !== 'string' || value.length === 0) throw new ConfigError(`${where}: mount point must be a directory path, got ${JSON.stringify(value)}`)
        out.mountPoint = value
        break
      case 'blockSize': {
        const size = typeof value === 'string' ? Number(value) : value
        if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 512 || size > 1 << 20 || (size & (size - 1)) !== 0) {
          throw new ConfigError(`${where}: block size must be a power of two from 512 to 1048576, got ${JSON.stringify(value)}`)
        }
        out.blockSize = size
        break
      }
      case 'bindAddress':
      case 'ipcAddress':
      case 'nbdAddress':
        parseAddress(value, `${where}: ${key}`)
        out[key as 'ipcAddress'] = value as string
        break
      case 'peerAddresses': {
        const list = typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter((s) => s.length > 0) : value
        if (!Array.isArray(list)) throw new ConfigError(`${where}: peer addresses must be a list of host:port, got ${JSON.stringify(value)}`)
        for (const peer of list) parseAddress(peer, `${where}: peer address`)
        out.peerAddresses = list as string[]
        break
      }
      case 'replicationStrategy':
        if (value !== 'synchronous' && value !== 'asynchronous') throw new ConfigError(`${where}: replication strategy must be synchronous or asynchronous, got ${JSON.stringify(value)}`)
        out.replicationStrategy = value
        break
      default:
        throw new ConfigError(`${where}: unknown setting ${key}`)
    }
  }
  return out
}

/** Defaults, then the file, then the flags. */
export function merge (...layers: Array<Partial<DaemonConfig>>): DaemonConfig {
  const config: DaemonConfig = { ...DEFAULTS, peerAddresses: [...DEFAULTS.peerAddresses] }
  for (const layer of layers) Object.assign(config, Object.fromEntries(Object.entries(layer).filter(([, v]) => v !== undefined)))
  return config
}
