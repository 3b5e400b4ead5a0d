// What GalleonFS.open() gets from the daemon's configuration: the drivers of [drivers] (after the
// modules that register them load) and the key provider of [security], with secrets read from files.

import { constants as fsConstants } from 'node:fs'
import { access, readFile, stat } from 'node:fs/promises'
import { isAbsolute, join } from 'node:path'
import { pathToFileURL } from 'node:url'
import {
  checkDriverOptions, commandKeyProvider, httpKeyProvider, isGalleonError, listDrivers,
  type DriverKind, type DriverRef, type KeyProvider, type OpenOptions
} from '../src/index.js'
import { ConfigError, DAEMON_KEY_PROVIDERS, type DaemonConfig } from './daemon-config.js'
import type { Logger } from './daemon-log.js'

/** A secret kept in a file: its text without the final line break; refused if others may read it. */
export async function readSecret (path: string, what: string): Promise<string> {
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

/** The key provider options of GalleonFS.open() that the configuration asks for. */
export async function keyOptions (config: DaemonConfig): Promise<{ keyProvider?: KeyProvider | DriverRef, passphrase?: string }> {
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
export async function driverOptions (config: DaemonConfig, log: Logger): Promise<Pick<OpenOptions, 'backend' | 'backendOptions' | 'backupTarget' | 'mount'>> {
  await loadDriverModules(config.driverModules, log)
  checkConfiguredDriver('blockStore', config.blockStore, config.blockStoreOptions, '[drivers] block_store')
  checkConfiguredDriver('backupTarget', config.backupTarget, config.backupTargetOptions, '[drivers] backup_target')
  checkConfiguredDriver('mountDriver', config.mountDriver, config.mountDriverOptions, '[drivers] mount_driver')
  if (!(DAEMON_KEY_PROVIDERS as readonly string[]).includes(config.keyProvider)) checkConfiguredDriver('keyProvider', config.keyProvider, config.keyProviderOptions, '--key-provider (key_provider in [security])')
  return {
    ...(config.blockStore === undefined ? {} : { backend: config.blockStore, backendOptions: config.blockStoreOptions ?? {} }),
    ...(config.backupTarget === undefined ? {} : { backupTarget: { driver: config.backupTarget, options: config.backupTargetOptions ?? {} } }),
    ...(config.mountPoint === undefined ? {} : { mount: config.mountDriver === undefined ? 'fuse' : { driver: config.mountDriver, options: config.mountDriverOptions ?? {} } })
  }
}
