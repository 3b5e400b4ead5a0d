// FUSE mounts served by a process that is not root: libfuse then mounts through fusermount, started
// from the mount call on the event loop's thread. With a file of one of its own mounts open, that
// child would wait at exec for a flush only the event loop can answer, and the process would hang
// for good; the mount is refused instead. Run as the user nobody, with /dev/fuse opened to it for
// the test's length (the machine's mode is put back after).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { accessSync, constants, existsSync, statSync } from 'node:fs'
import { chmod, chown, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { mountsUnder, runWatched, type WatchedRun } from './support/fuse-fuzz-watchdog.js'

const NOBODY = { uid: 65534, gid: 65534 }
const ROOT = fileURLToPath(new URL('..', import.meta.url))

async function skipReason (): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (to run the child as another user)'
  try { accessSync('/dev/fuse', constants.R_OK | constants.W_OK) } catch { return 'no usable /dev/fuse on this machine' }
  const fusermount = ['/bin/fusermount', '/usr/bin/fusermount'].find((path) => existsSync(path))
  if (fusermount === undefined) return 'fusermount is not installed (Debian package fuse)'
  if ((statSync(fusermount).mode & 0o4000) === 0) return `${fusermount} is not setuid root, so no other user can mount`
  // The checkout must be readable by that user (not under a private home directory).
  const readable = await promisify(execFile)(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(join(ROOT, 'node_modules', 'tsx', 'package.json'))})`], NOBODY).then(() => true, () => false)
  if (!readable) return `the checkout at ${ROOT} is not readable by the user nobody`
  return undefined
}

const skip = await skipReason()
let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-fuse-nonroot-')) })
after(async () => {
  for (const path of await mountsUnder(root).catch(() => [])) await new Promise((resolve) => execFile('fusermount', ['-uz', path], resolve))
  await rm(root, { recursive: true, force: true })
})

/** Runs `script` as nobody in a directory of its own, with /dev/fuse opened to it meanwhile. */
async function runAsNobody (script: string, name: string): Promise<WatchedRun> {
  const dir = join(root, name)
  await chmod(root, 0o755)
  await mkdir(dir)
  await chown(dir, NOBODY.uid, NOBODY.gid)
  const mode = statSync('/dev/fuse').mode & 0o777
  await chmod('/dev/fuse', 0o666)
  try {
    return await runWatched(script, { FUSE_NON_ROOT_DIR: dir }, dir, 60_000, () => {}, NOBODY)
  } finally {
    await chmod('/dev/fuse', mode)
  }
}

describe('FUSE mounts of a process that is not root', { skip }, () => {
  it('mounting while the process has a file of its own mount open is refused with BUSY, not a hang; once closed it mounts', async () => {
    const run = await runAsNobody('test/support/fuse-non-root-child.ts', 'plain')
    assert.equal(run.hung, false, `the serving process hung after: ${JSON.stringify(run.lines)}`)
    assert.deepEqual(run.lines, [`uid ${NOBODY.uid}, mounted one`, 'while open: BUSY names the open file', 'closed it, mounted two', 'one 6161 two 6262', 'done'], run.stderr)
    assert.equal(run.code, 0)
  })

  // Found by review r7: /proc/self/fd names files by their real path, so a mount point reached
  // through a symbolic link must be compared by its real path too.
  it('also when the mount point was reached through a symbolic link', async () => {
    const run = await runAsNobody('test/support/fuse-non-root-symlink-child.ts', 'linked')
    assert.equal(run.hung, false, `the serving process hung after: ${JSON.stringify(run.lines)}`)
    assert.deepEqual(run.lines, ['mounted one through the link', 'while open: BUSY', 'done'], run.stderr)
    assert.equal(run.code, 0)
  })
})
