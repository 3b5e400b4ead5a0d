// r31 (review of h73): mount option words that worked before h73 and were refused after it.
// - The seed's own command `galleonfs volume mount db-data /app/database --options rw,encrypted`
//   (db-data created in encrypted-storage) failed INVALID_ARGUMENT ("unknown mount option").
//   `encrypted` is now a word the mount manager understands: the volume must be encrypted at rest,
//   and a volume that is not is refused naming the fix (not mounted in clear, nor ignored).
// - A mount the daemon saved before h73 with a word the driver ignored (`--options rw,nobarrier`)
//   was not mounted again at the daemon's next start ("could not mount again"): it now comes back
//   without those words, as it was mounted then, with a warning naming them, and is saved without.
//   (`noatime`, ignored then too, is a word the built-in drivers apply since h78: it stays.)
// Real daemon processes (test/support/daemon.ts) with the virtual mount driver (no FUSE needed).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r31-mount-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** Writes a configuration with the virtual mount driver under `name`; returns its path. */
async function virtualConfig (name: string): Promise<string> {
  const file = join(root, `${name}.toml`)
  await writeFile(file, `[daemon]\nmount_point = "${join(root, `${name}-mnt`)}"\n\n[drivers]\nmount_driver = "virtual"\n`)
  return file
}

async function stopped (daemon: RunningDaemon | undefined): Promise<void> {
  if (daemon === undefined || daemon.child.exitCode !== null) return
  daemon.child.kill('SIGTERM')
  await daemon.exited
}

describe('r31: mount words that worked before h73 still do', { timeout: 120_000 }, () => {
  it('library: `encrypted` mounts an encrypted volume, and refuses a plain one naming the fix', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'lib') })
    try {
      await g.createVolume({ name: 'secret', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
      await g.createVolume({ name: 'plain', sizeBytes: '1M', storageClass: 'fast-local-ssd' })
      const id = await g.mounts.mountVolume('secret', '/r31/secret', { options: ['rw', 'encrypted'] })
      const mount = g.mounts.listMounts().find((m) => m.id === id)
      assert.equal(mount?.readOnly, false)
      assert.deepEqual(mount?.options, [], 'the manager\'s word is not handed to the driver')
      await g.mounts.unmountVolume(id)
      await assert.rejects(g.mounts.mountVolume('plain', '/r31/plain', { options: ['rw', 'encrypted'] }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'INVALID_ARGUMENT')
        assert.match(err.message, /volume plain is not encrypted at rest .* leave that option out to mount it as it is, or move the volume to an encrypted storage class first/)
        return true
      })
      assert.deepEqual(g.mounts.listMounts(), [])
      assert.ok(g.mounts.acceptedOptions?.includes('encrypted'))
    } finally {
      await g.close()
    }
  })

  it('daemon and CLI: the seed\'s `volume mount db-data --options rw,encrypted` mounts', async () => {
    let daemon: RunningDaemon | undefined
    try {
      daemon = await startDaemonProcess(['--config', await virtualConfig('seed'), '--storage-path', join(root, 'seed'), '--ipc-address', '127.0.0.1:0'], { cwd: root })
      const cli = async (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => await runCli((daemon as RunningDaemon).address, args, { cwd: root })
      const created = await cli(['volume', 'create', '--name', 'db-data', '--size', '1M', '--storage-class', 'encrypted-storage', '--replicas', '1'])
      assert.equal(created.code, 0, created.stderr)
      const mounted = await cli(['volume', 'mount', 'db-data', '--options', 'rw,encrypted'])
      assert.equal(mounted.code, 0, mounted.stderr)
      const plain = await cli(['volume', 'create', '--name', 'web-data', '--size', '1M', '--storage-class', 'fast-local-ssd'])
      assert.equal(plain.code, 0, plain.stderr)
      const refused = await cli(['volume', 'mount', 'web-data', '--options', 'rw,encrypted'])
      assert.notEqual(refused.code, 0)
      assert.match(refused.stderr, /volume web-data is not encrypted at rest/)
      assert.match(refused.stderr, /`galleonfs volume migrate <volume> --storage-class encrypted-storage`/, 'the fix in CLI terms')
      const list = JSON.parse((await cli(['--json', 'mount', 'list'])).stdout) as Array<{ volumeName: string }>
      assert.deepEqual(list.map((m) => m.volumeName), ['db-data'])
    } finally {
      await stopped(daemon)
    }
  })

  it('daemon restart: a mount saved with a word the driver ignored (before h73) comes back without it', async () => {
    const storage = join(root, 'saved')
    const config = await virtualConfig('saved')
    const args = ['--config', config, '--storage-path', storage, '--ipc-address', '127.0.0.1:0']
    let daemon: RunningDaemon | undefined
    try {
      daemon = await startDaemonProcess(args, { cwd: root })
      const first = daemon.address
      const created = await runCli(first, ['volume', 'create', '--name', 'app', '--size', '1M', '--storage-class', 'fast-local-ssd'], { cwd: root })
      assert.equal(created.code, 0, created.stderr)
      assert.equal((await runCli(first, ['volume', 'mount', 'app', '--options', 'rw,sync'], { cwd: root })).code, 0)
      await stopped(daemon)
      // What a daemon before h73 saved for `volume mount app --options rw,sync,noatime,nobarrier`.
      const file = join(storage, 'daemon-mounts.json')
      const saved = JSON.parse(await readFile(file, 'utf8')) as Array<{ volumeId: string, path: string, options: string[] }>
      assert.equal(saved.length, 1)
      await writeFile(file, JSON.stringify([{ ...saved[0], options: ['rw', 'sync', 'noatime', 'nobarrier'] }]))

      daemon = await startDaemonProcess(args, { cwd: root })
      const mounts = JSON.parse((await runCli(daemon.address, ['--json', 'mount', 'list'], { cwd: root })).stdout) as Array<{ volumeName: string, path: string, sync: boolean, readOnly: boolean }>
      assert.equal(mounts.length, 1, `the saved mount came back: ${daemon.logs.join('\n')}`)
      assert.equal(mounts[0]?.volumeName, 'app')
      assert.equal(mounts[0]?.path, saved[0]?.path)
      assert.equal(mounts[0]?.sync, true, 'with the words that apply')
      assert.equal(mounts[0]?.readOnly, false)
      const warning = daemon.logs.map((line) => JSON.parse(line) as { level?: string, message?: string, dropped?: string[] }).find((entry) => entry.dropped !== undefined)
      assert.equal(warning?.level, 'warn')
      assert.deepEqual(warning?.dropped, ['nobarrier'])
      const now = JSON.parse(await readFile(file, 'utf8')) as Array<{ options: string[] }>
      assert.deepEqual(now.map((m) => m.options), [['rw', 'sync', 'noatime']], 'saved without the word, so the next start says nothing')
    } finally {
      await stopped(daemon)
    }
  })
})
