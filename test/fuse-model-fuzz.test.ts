// A seeded randomized run of a read-write FUSE mount against a plain model of the volume's bytes
// (test/support/fuse-fuzz-run.ts says what it does and which README promises it checks), and the
// defect it found: the process serving a mount, holding `data` open itself, hung for good when a
// mount was unmounted (fusermount was started from the event loop's thread). Both run in a child
// process watched with a deadline, since a deadlocked server cannot be waited for in-process.
// GALLEON_FUZZ_SEED replays a run (a failure prints its seed and the operations so far);
// GALLEON_FUZZ_STEPS sets its length. Skipped, visibly, without /dev/fuse or fusermount.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { mountsUnder, runWatched } from './support/fuse-fuzz-watchdog.js'
import { testSeed } from './support/test-seed.js'
import { fuseMissing } from './support/fuse-available.js'

const SEED = testSeed('GALLEON_FUZZ_SEED', 20261206)
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 1000)
if (!Number.isSafeInteger(SEED) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

function fuseOrToolMissing (): string | undefined {
  const fuse = fuseMissing()
  if (fuse !== undefined) return fuse
  if (!['/bin/python3', '/usr/bin/python3', '/usr/local/bin/python3'].some((path) => existsSync(path)) && process.env.PATH?.split(':').every((dir) => !existsSync(join(dir, 'python3'))) === true) return 'python3 is not installed'
  return undefined
}
const skip = fuseOrToolMissing()
if (skip !== undefined) process.stdout.write(`# SKIP FUSE model fuzz: ${skip}\n`)

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-fuse-fuzz-')) })
after(async () => {
  // A run that failed half way may leave mounts: they go before the directory does.
  for (const path of await mountsUnder(root).catch(() => [])) await import('node:child_process').then(({ execFile }) => new Promise((resolve) => execFile('fusermount', ['-uz', path], resolve)))
  await rm(root, { recursive: true, force: true })
})

describe('FUSE mount against a model of the volume', { skip }, () => {
  it(`random I/O through data (O_RDWR, O_RDONLY, O_WRONLY, O_DIRECT, O_SYNC), the API, snapshot mounts, expansions and remounts match the model (GALLEON_FUZZ_SEED=${SEED}, ${STEPS} steps)`, async (t) => {
    const dir = join(root, 'fuzz')
    const run = await runWatched('test/support/fuse-fuzz-run.ts', { FUSE_FUZZ_ROOT: dir, FUSE_FUZZ_SEED: String(SEED), FUSE_FUZZ_STEPS: String(STEPS) }, dir, 150_000)
    const ops = run.lines.filter((line) => line.startsWith('OP ')).map((line) => line.slice(3))
    for (const note of run.lines.filter((line) => line.startsWith('NOTE '))) t.diagnostic(note.slice(5))
    const verdict = run.lines.find((line) => line.startsWith('PASS') || line.startsWith('FAIL')) ?? (run.hung ? 'FAIL the run hung (stopped after 150 s)' : `FAIL the run exited with ${String(run.code)} without a verdict`)
    const failed = run.lines.slice(run.lines.findIndex((line) => line.startsWith('FAIL'))).join('\n')
    assert.ok(verdict.startsWith('PASS') && run.code === 0,
      `GALLEON_FUZZ_SEED=${SEED} GALLEON_FUZZ_STEPS=${STEPS} replays this run. ${verdict.startsWith('FAIL') && failed.startsWith('FAIL') ? failed : verdict}\n` +
      `operations so far (${ops.length}):\n${ops.map((line, i) => `  ${i + 1}. ${line}`).join('\n')}\nstderr: ${run.stderr.slice(-4000)}`)
    t.diagnostic(`${verdict} (GALLEON_FUZZ_SEED=${SEED}, ${ops.length} operations)`)
  })
})

describe('FUSE mount served by a process that has data open itself', { skip }, () => {
  it('unmounting another mount, a forced unmount of its own, mounting again and close() do not hang; the kept handle gets EIO', async () => {
    const dir = join(root, 'self')
    const run = await runWatched('test/support/fuse-fuzz-self-handle.ts', { FUSE_FUZZ_ROOT: dir }, dir, 30_000)
    // Without the fix the process stopped for good at the first fusermount (its child waited for a
    // flush the process's own event loop had to answer, while that thread waited for the child).
    assert.equal(run.hung, false, `the serving process hung after: ${JSON.stringify(run.lines)}`)
    assert.deepEqual(run.lines, [
      'write 4096', 'unmounted the other mount', 'mounted the other again', 'forced unmount',
      'stale read EIO', 'stale write EIO', 'stale fsync EIO', 'stale ftruncate EIO EIO', 'volume 61616161 00000000',
      'mounted again', 'fresh read 61616161', 'closed', 'after close EIO', 'done'
    ], run.stderr)
    assert.equal(run.code, 0)
  })
})
