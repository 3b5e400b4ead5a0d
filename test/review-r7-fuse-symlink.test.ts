// Review r7: the non-root FUSE mount refusal (backends/fuse/index.ts, ownFilesOpenUnder) compares
// the kernel's paths of this process's descriptors (/proc/self/fd, symbolic links resolved) with the
// mount points as given. A mount point reached through a symbolic link must still be recognised, or
// the next mount hangs the process for good. Run as the user nobody, as test/fuse-non-root.test.ts.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { accessSync, constants, existsSync, statSync } from 'node:fs'
import { chmod, chown, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { mountsUnder, runWatched } from './support/fuse-fuzz-watchdog.js'

const NOBODY = { uid: 65534, gid: 65534 }
const ROOT = fileURLToPath(new URL('..', import.meta.url))

async function skipReason (): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (to run the child as another user)'
  try { accessSync('/dev/fuse', constants.R_OK | constants.W_OK) } catch { return 'no usable /dev/fuse on this machine' }
  const fusermount = ['/bin/fusermount', '/usr/bin/fusermount'].find((path) => existsSync(path))
  if (fusermount === undefined) return 'fusermount is not installed (Debian package fuse)'
  if ((statSync(fusermount).mode & 0o4000) === 0) return `${fusermount} is not setuid root, so no other user can mount`
  const readable = await promisify(execFile)(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(join(ROOT, 'node_modules', 'tsx', 'package.json'))})`], NOBODY).then(() => true, () => false)
  if (!readable) return `the checkout at ${ROOT} is not readable by the user nobody`
  return undefined
}

const skip = await skipReason()
let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r7-fuse-link-')) })
after(async () => {
  for (const path of await mountsUnder(root).catch(() => [])) await new Promise((resolve) => execFile('fusermount', ['-uz', path], resolve))
  await rm(root, { recursive: true, force: true })
})

describe('review r7: non-root FUSE mount refusal', { skip }, () => {
  it('recognises a file open under a mount point reached through a symbolic link: BUSY, not a hang', async () => {
    const dir = join(root, 'run')
    await chmod(root, 0o755)
    await mkdir(dir)
    await chown(dir, NOBODY.uid, NOBODY.gid)
    const mode = statSync('/dev/fuse').mode & 0o777
    await chmod('/dev/fuse', 0o666)
    let run
    try {
      run = await runWatched('test/support/review-r7-fuse-symlink-child.ts', { FUSE_NON_ROOT_DIR: dir }, dir, 60_000, () => {}, NOBODY)
    } finally {
      await chmod('/dev/fuse', mode)
    }
    assert.equal(run.hung, false, `the serving process hung after: ${JSON.stringify(run.lines)}`)
    assert.deepEqual(run.lines, ['mounted one through the link', 'while open: BUSY', 'done'], run.stderr)
    assert.equal(run.code, 0)
  })
})
