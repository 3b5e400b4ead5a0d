// The daemon's API token: made at first start and kept in the storage path, copied to a per-user
// runtime file where the CLI finds it, and compared in constant time.

import { randomBytes, timingSafeEqual } from 'node:crypto'
import { chmod, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { formatAddress, parseAddress } from './daemon-config.js'

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

export async function loadOrCreateToken (path: string): Promise<string> {
  try {
    const text = (await readFile(path, 'utf8')).trim()
    if (/^[0-9a-f]{64}$/.test(text)) return text
  } catch {}
  const token = randomBytes(32).toString('hex')
  await writeFile(path, token + '\n', { mode: 0o600 })
  await chmod(path, 0o600)
  return token
}

export function sameToken (offered: string, token: string): boolean {
  const a = Buffer.from(offered)
  const b = Buffer.from(token)
  return a.byteLength === b.byteLength && timingSafeEqual(a, b)
}
