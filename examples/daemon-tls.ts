// The daemon's TLS settings (the NBD server's and the API's): credentials read from the files the
// configuration names, checked before the storage is opened, so a wrong path or a key that does not
// match its certificate stops the start with a message naming the setting.

import { readFile } from 'node:fs/promises'
import { createSecureContext } from 'node:tls'
import { checkTlsOptions } from '../backends/nbd/tls.js'
import { parsePskFile, type NbdTlsOptions } from '../backends/nbd/index.js'
import { isGalleonError } from '../src/errors.js'
import { ConfigError, type DaemonConfig } from './daemon-config.js'
import { readSecret } from './daemon-drivers.js'

async function readPem (path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read the ${what} ${path}: ${(err as Error).message}`)
  }
}

/** The NBD server's TLS options from nbd_tls_* in [daemon], or undefined when none is set. */
export async function nbdTlsOptions (config: DaemonConfig): Promise<NbdTlsOptions | undefined> {
  if (config.nbdTlsCertFile === undefined && config.nbdTlsPskFile === undefined) return undefined
  const tls: { cert?: string, key?: string, ca?: string, psk?: Record<string, string> } = {}
  if (config.nbdTlsCertFile !== undefined) {
    tls.cert = await readPem(config.nbdTlsCertFile, 'NBD TLS certificate (nbd_tls_cert_file)')
    tls.key = await readSecret(config.nbdTlsKeyFile as string, 'NBD TLS key (nbd_tls_key_file)')
  }
  if (config.nbdTlsCaFile !== undefined) tls.ca = await readPem(config.nbdTlsCaFile, 'NBD TLS CA file (nbd_tls_ca_file)')
  try {
    if (config.nbdTlsPskFile !== undefined) tls.psk = parsePskFile(await readSecret(config.nbdTlsPskFile, 'NBD TLS PSK file (nbd_tls_psk_file)'), `the NBD TLS PSK file ${config.nbdTlsPskFile}`)
    checkTlsOptions(tls)
  } catch (err) {
    if (isGalleonError(err)) throw new ConfigError(`NBD TLS (nbd_tls_* in [daemon]): ${err.message}`)
    throw err
  }
  return tls
}

/** The API's HTTPS certificate and key from ipc_tls_* in [daemon], or undefined when none is set. */
export async function ipcTlsOptions (config: DaemonConfig): Promise<{ cert: string, key: string } | undefined> {
  if (config.ipcTlsCertFile === undefined) return undefined
  const cert = await readPem(config.ipcTlsCertFile, 'API TLS certificate (ipc_tls_cert_file)')
  const key = await readSecret(config.ipcTlsKeyFile as string, 'API TLS key (ipc_tls_key_file)')
  try {
    createSecureContext({ cert, key })
  } catch (err) {
    throw new ConfigError(`API TLS (ipc_tls_cert_file, ipc_tls_key_file in [daemon]): the certificate and key were refused: ${(err as Error).message} (check that they are the PEM files meant, and that the key belongs to the certificate)`)
  }
  return { cert, key }
}
