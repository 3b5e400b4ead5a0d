// `galleonfs volume migrate` against a real daemon process: plain and streamed (progress) answers,
// --json, errors with exit codes, and the move surviving a daemon restart.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { runCli, startDaemonProcess } from './support/daemon.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-migrate-cli-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('volume migrate command', () => {
  it('moves a volume to an encrypting class and to a pool, with --json and progress, refuses bad moves, and the move survives a restart', async () => {
    const storage = join(root, 'node')
    const text = new TextEncoder().encode('hello migration')
    const setup = await GalleonFS.open({ storagePath: storage })
    await setup.createVolume({ name: 'db', sizeBytes: '4M' })
    await setup.write('db', 5000, text)
    await setup.close()
    let daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage], { cwd: root })
    const run = async (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => await runCli(daemon.address, args, { cwd: root })
    const ok = async (args: string[]): Promise<string> => {
      const result = await run(args)
      assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    try {
      await writeFile(join(root, 'secret.yaml'), 'name: secret-local\nparameters:\n  encryption: "true"\n  replication: "1"\n')
      await ok(['storage-class', 'create', join(root, 'secret.yaml')])
      await ok(['pool', 'create', 'big', '--capacity', '64M'])
      assert.match(await ok(['volume', 'migrate', 'db', '--storage-class', 'secret-local']), /volume db migrated: storage class secret-local, encrypted/)
      const moved = JSON.parse(await ok(['--json', '--progress', 'volume', 'migrate', 'db', '--pool', 'big']))
      assert.equal(moved.pool, 'big')
      assert.equal(moved.storageClass, 'secret-local')
      assert.equal(moved.encrypted, true)
      // Refusals: nothing to migrate (exit 1, code named), no target at all, an unknown class.
      const same = await run(['volume', 'migrate', 'db', '--storage-class', 'secret-local', '--pool', 'big'])
      assert.equal(same.code, 1)
      assert.match(same.stderr, /INVALID_ARGUMENT: .*nothing to migrate/)
      assert.match((await run(['volume', 'migrate', 'db'])).stderr, /needs --storage-class, --pool or --node/)
      assert.match((await run(['volume', 'migrate', 'db', '-c', 'nope'])).stderr, /STORAGE_CLASS_NOT_FOUND/)
      assert.match((await run(['volume', 'migrate', 'ghost', '-c', 'secret-local'])).stderr, /VOLUME_NOT_FOUND/)

      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
      daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage], { cwd: root })
      const after = JSON.parse(await ok(['--json', 'volume', 'get', 'db']))
      assert.equal(after.storageClass, 'secret-local')
      assert.equal(after.pool, 'big')
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
    const check = await GalleonFS.open({ storagePath: storage })
    try {
      assert.deepEqual(await check.read('db', 5000, text.byteLength), text)
      assert.equal((await check.getVolumeEncryption('db')).encrypted, true)
    } finally {
      await check.close()
    }
  })
})
