// What a reload of the daemon's configuration (SIGHUP, POST /v1/reload) changes: the settings it
// applies in place (log level, NBD address and TLS, mount point, the API's certificate), and which wait for a restart.

import { stat } from 'node:fs/promises'
import type { Server } from 'node:http'
import type { GalleonFS } from '../src/index.js'
import { NbdServer, type NbdTlsOptions } from '../backends/nbd/index.js'
import { ConfigError, formatAddress, parseAddress, type DaemonConfig } from './daemon-config.js'
import type { Logger } from './daemon-log.js'
import { HttpError, type ReloadReport } from './daemon-routes.js'
import { ipcTlsOptions, nbdTlsOptions } from './daemon-tls.js'

/** Settings a reload applies in place; any other change waits for a restart. */
const LIVE_SETTINGS = new Set<keyof DaemonConfig>(['logLevel', 'nbdAddress', 'mountPoint', 'nbdTlsCertFile', 'nbdTlsKeyFile', 'nbdTlsCaFile', 'nbdTlsPskFile'])

/**
 * A mount point that is a file would let the daemon start (or a reload succeed) and fail every
 * `volume mount` later, naming a path below it: refused here, naming the setting.
 */
export async function checkMountPoint (config: DaemonConfig): Promise<void> {
  if (config.mountPoint === undefined) return
  const kind = await stat(config.mountPoint).catch(() => undefined)
  if (kind !== undefined && !kind.isDirectory()) throw new ConfigError(`the mount point ${config.mountPoint} is not a directory; give --mount-point (mount_point in [daemon]) a directory, under which each volume is mounted (it is created if missing)`)
}

/** The API's HTTPS certificate and key. */
type IpcTls = { cert: string, key: string } | undefined

/** What a reload reads and changes of the running daemon; each getter reads the daemon's state as it is at that moment. */
export interface ReloadContext {
  /** The configuration in effect: the live settings that change are changed in it. */
  readonly config: DaemonConfig
  readonly log: Logger
  /** Reads the configuration again; without it a reload changes nothing. */
  readonly loadConfig: (() => Promise<DaemonConfig>) | undefined
  /** The API's TLS at the start (HTTPS cannot be turned on or off by a reload). */
  readonly ipcTls: IpcTls
  readonly stopping: () => boolean
  readonly g: () => GalleonFS
  readonly server: () => Server | undefined
  readonly nbd: () => NbdServer | undefined
  readonly setNbd: (nbd: NbdServer | undefined) => void
  /**
   * The NBD server a reload listens with before it replaces `nbd` (undefined once it has, or has
   * closed it): a stop that begins meanwhile has it refuse new sessions too.
   */
  readonly setMovingNbd: (nbd: NbdServer | undefined) => void
  readonly nbdTls: () => NbdTlsOptions | undefined
  readonly setNbdTls: (tls: NbdTlsOptions | undefined) => void
  readonly ipcTlsInEffect: () => IpcTls
  readonly setIpcTlsInEffect: (tls: IpcTls) => void
  /** The NBD server's accept errors are logged by this. */
  readonly nbdError: (err: Error) => void
}

/** Reads the configuration again and applies what can change while running (one reload at a time: the caller chains them). */
export async function applyReload (daemon: ReloadContext): Promise<ReloadReport> {
  const { config, log, loadConfig, ipcTls } = daemon
  if (daemon.stopping()) throw new HttpError(409, 'BUSY', 'the daemon is stopping')
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
  if (changed.includes('nbdAddress') && next.nbdAddress !== undefined) moved = await NbdServer.listen(daemon.g(), { ...parseAddress(next.nbdAddress, 'nbd address'), handshakeTimeoutMs: Math.round(config.nbdHandshakeTimeoutSeconds * 1000), onError: daemon.nbdError, tls: nextTls })
  // Serving already: a stop that begins before it replaces the old server must reach it too.
  daemon.setMovingNbd(moved)
  if (daemon.stopping()) {
    await moved?.close()
    daemon.setMovingNbd(undefined)
    throw new HttpError(409, 'BUSY', 'the daemon is stopping')
  }
  // New connections to a server that stays where it is get the new credentials (or none).
  const nbd = daemon.nbd()
  if (moved === undefined && nbd !== undefined && JSON.stringify(nextTls) !== JSON.stringify(daemon.nbdTls())) {
    nbd.setTls(nextTls)
    log('info', 'NBD TLS credentials reloaded', { tls: nextTls === undefined ? 'off' : 'required' })
  }
  daemon.setNbdTls(nextTls)
  const server = daemon.server()
  if (nextIpcTls !== undefined && server !== undefined) {
    ;(server as unknown as { setSecureContext: (options: { cert: string, key: string, minVersion: 'TLSv1.2' }) => void }).setSecureContext({ ...nextIpcTls, minVersion: 'TLSv1.2' })
    if (JSON.stringify(nextIpcTls) !== JSON.stringify(daemon.ipcTlsInEffect())) log('info', 'API TLS certificate reloaded')
    daemon.setIpcTlsInEffect(nextIpcTls)
  }
  for (const key of changed) {
    if (!live(key)) { report.needsRestart.push(key); continue }
    if (key === 'logLevel') log.setLevel(next.logLevel)
    if (key === 'nbdAddress') {
      // Sessions on the old address end (their requests in flight are answered first).
      await daemon.nbd()?.close()
      daemon.setNbd(moved)
      daemon.setMovingNbd(undefined)
      if (moved !== undefined) log('info', 'serving NBD exports', { nbdAddress: formatAddress(moved.host, moved.port) })
    }
    Object.assign(config, { [key]: next[key] })
    report.applied.push(key)
  }
  log('info', 'configuration reloaded', { ...report })
  if (report.needsRestart.length > 0) log('warn', 'changed settings that take effect only after a restart (galleonfs daemon restart)', { settings: report.needsRestart })
  return report
}
