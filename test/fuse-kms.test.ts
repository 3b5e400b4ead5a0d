// A process serving a FUSE mount, with a file of that mount open itself, runs its KMS command
// (commandKeyProvider): the command must not be started from the event loop's thread, whose child
// would wait at exec for a flush of the inherited descriptor that only that thread can answer.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { mountsUnder, runWatched } from './support/fuse-fuzz-watchdog.js'
import { fuseMissing } from './support/fuse-available.js'

const KMS_COMMAND = fileURLToPath(new URL('./fixtures/kms-command.mjs', import.meta.url))
const skip = fuseMissing()
let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-fuse-kms-')) })
after(async () => {
  // A run that hung may leave mounts: they go before the directory does.
  for (const path of await mountsUnder(root).catch(() => [])) await import('node:child_process').then(({ execFile }) => new Promise((resolve) => execFile('fusermount', ['-uz', path], resolve)))
  await rm(root, { recursive: true, force: true })
})

describe('KMS command of a process that has its own mount open', { skip }, () => {
  it('wraps and unwraps without hanging while the process holds data of its mount open', async () => {
    const dir = join(root, 'run')
    await mkdir(dir)
    const keyFile = join(dir, 'kms.key')
    const log = join(dir, 'kms.log')
    await writeFile(keyFile, randomBytes(32).toString('hex'))
    const run = await runWatched('test/support/fuse-kms-self-handle.ts', { FUSE_KMS_ROOT: dir, FUSE_KMS_COMMAND: KMS_COMMAND, KMS_KEY_FILE: keyFile, KMS_LOG: log }, dir, 30_000)
    assert.equal(run.hung, false, `the serving process hung after: ${JSON.stringify(run.lines)}`)
    assert.deepEqual(run.lines, ['write 4096', 'wrapped', 'read 61616161', 'secret 62626262', 'done'], run.stderr)
    assert.equal(run.code, 0)
    const calls = (await readFile(log, 'utf8')).trim().split('\n').map((line) => line.split(' ')[0])
    assert.ok(calls.includes('wrap') && calls.includes('unwrap'), `the KMS command ran: ${calls.join(', ')}`)
  })
})
