// The daemon's API token: made at first start and kept in the storage path, copied to a per-user
// runtime file where the CLI finds it, and compared in constant time.

import { randomBytes, timingSafeEqual } from 'node:crypto'
import { chmod, lstat, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { ConfigError, formatAddress, parseAddress } from './daemon-config.js'
import { makeDirectories } from '../src/make-directories.js'

/** The header on every answer of the daemon's API (value `1`): the CLI takes an answer without it for another server's. */
export const DAEMON_HEADER = 'x-galleonfs'

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

/** The token kept at `path` (made there at first start); the file is kept at mode 0600 (a copy restored with another mode is set back). */
export async function loadOrCreateToken (path: string): Promise<string> {
  try {
    const text = (await readFile(path, 'utf8')).trim()
    if (/^[0-9a-f]{64}$/.test(text)) {
      await chmod(path, 0o600)
      return text
    }
  } catch {}
  const token = randomBytes(32).toString('hex')
  await writeFile(path, token + '\n', { mode: 0o600 })
  await chmod(path, 0o600)
  return token
}

/**
 * Writes the runtime token file. Its directory must be this user's (made mode 0700, and set back
 * to 0700 when found looser), below directories no other user can change: otherwise another user
 * could read the token or swap the directory. The file is written under another name and renamed
 * into place, so a link left where the file goes is replaced, never followed.
 */
export async function writeRuntimeToken (path: string, token: string): Promise<void> {
  const directory = dirname(path)
  await makeDirectories(directory, 0o700)
  const uid = process.getuid?.()
  if (uid !== undefined) {
    const fix = 'set XDG_RUNTIME_DIR to a directory of your own (mode 0700), or remove that one'
    // Only its owner (or root) can swap what is in a directory that is not writable by others or is
    // sticky (/tmp); and so for every directory above it, up to the root (as OpenSSH's StrictModes),
    // or another user could rename a whole branch away and put one of its own in its place. Both
    // the path as given (where a symlink on it lives) and the real path it leads to (where the
    // directories the token lands in live) are walked.
    const runtime = resolve(dirname(directory))
    const real = await realpath(runtime)
    for (const start of real === runtime ? [runtime] : [runtime, real]) {
      for (let at = start; ; at = dirname(at)) {
        const info = await stat(at)
        if ((info.uid !== uid && info.uid !== 0) || ((info.mode & 0o022) !== 0 && (info.mode & 0o1000) === 0)) {
          const where = at === start ? `the runtime directory ${at}` : `${at}, above the runtime directory ${runtime}${start === runtime ? '' : ` (which is ${real})`}`
          throw new ConfigError(`${where}, where the API token is left for the CLI, can be changed by another user (owner uid ${info.uid}, mode ${(info.mode & 0o7777).toString(8)}); ${fix}`)
        }
        if (dirname(at) === at) break
      }
    }
    const own = await lstat(directory)
    if (!own.isDirectory() || own.uid !== uid) {
      throw new ConfigError(`${directory}, where the API token is left for the CLI, is ${own.isDirectory() ? `a directory of another user (uid ${own.uid})` : 'not a directory'}; ${fix}`)
    }
    if ((own.mode & 0o077) !== 0) await chmod(directory, 0o700)
  }
  const written = `${path}.${process.pid}.tmp`
  await rm(written, { force: true })
  await writeFile(written, token + '\n', { mode: 0o600, flag: 'wx' })
  await rename(written, path)
}

export function sameToken (offered: string, token: string): boolean {
  const a = Buffer.from(offered)
  const b = Buffer.from(token)
  return a.byteLength === b.byteLength && timingSafeEqual(a, b)
}
