// Review r15 of 62c9671 (makeDirectoriesDurably): a storage path or backup target made in a
// directory this process may write into but not read (mode 0733, as drop directories are) worked
// before and must still work. The durable mkdir syncs the new directory's parent, which needs the
// parent opened for reading: EACCES there failed open() and createBackup after the directory had
// been made, while the second attempt (directory there already: EACCES ignored) worked. Root reads
// every directory, so the calls run in a child as the user nobody (this same file, R15_CHILD set).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, mkdtemp, mkdir, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const NOBODY = { uid: 65534, gid: 65534 }
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const SELF = fileURLToPath(import.meta.url)

if (process.env.R15_CHILD !== undefined) {
  // Child: each step prints one line: what it gave.
  const { GalleonFS } = await import('../src/index.js')
  const parent = process.env.R15_CHILD
  const say = (line: string): void => { process.stdout.write(line + '\n') }
  const outcome = async (call: () => Promise<unknown>): Promise<string> => await call().then(() => 'ok', (err: { code?: string, message?: string }) => `${err.code ?? 'ERROR'}: ${err.message ?? ''}`)
  type Instance = Awaited<ReturnType<typeof GalleonFS.open>>
  const tryOpen = async (): Promise<[string, Instance | undefined]> => await GalleonFS.open({ storagePath: join(parent, 'store') })
    .then((g): [string, Instance] => ['ok', g], (err: { code?: string, message?: string }): [string, undefined] => [`${err.code ?? 'ERROR'}: ${err.message ?? ''}`, undefined])
  const [first, once] = await tryOpen()
  say(`first open: ${first}`)
  await once?.close()
  const [second, g] = await tryOpen()
  say(`second open: ${second}`)
  if (g !== undefined) {
    await g.createVolume({ name: 'v', sizeBytes: 1 << 20 })
    say(`backup: ${await outcome(async () => await g.createBackup('v', { strategy: 'full', target: join(parent, 'backups') }))}`)
    await g.close()
  }
} else {
  async function skipReason (): Promise<string | undefined> {
    if (process.getuid?.() !== 0) return 'needs root (to run the child as the user nobody)'
    const readable = await promisify(execFile)(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(join(ROOT, 'node_modules', 'tsx', 'package.json'))})`], NOBODY).then(() => true, () => false)
    if (!readable) return `the checkout at ${ROOT} is not readable by the user nobody`
    return undefined
  }
  const skip = await skipReason()
  let root: string
  before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r15-dirs-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })

  describe('storage in a directory the process may write into but not read', { skip }, () => {
    it('open() and createBackup work on the first attempt, as before the durable mkdir', async () => {
      await chmod(root, 0o755)
      const parent = join(root, 'drop')
      await mkdir(parent)
      await chmod(parent, 0o733) // root's: others may make entries in it, not list it
      const run = await promisify(execFile)(process.execPath, ['--import', 'tsx', SELF], { ...NOBODY, cwd: ROOT, env: { ...process.env, R15_CHILD: parent }, timeout: 50_000 })
        .then(({ stdout, stderr }) => ({ lines: stdout.trim().split('\n'), stderr }), (err: { stdout?: string, stderr?: string }) => ({ lines: (err.stdout ?? '').trim().split('\n'), stderr: String(err.stderr) }))
      assert.deepEqual(run.lines, ['first open: ok', 'second open: ok', 'backup: ok'], run.stderr)
      assert.deepEqual((await readdir(parent)).sort(), ['backups', 'store'])
    })
  })
}
