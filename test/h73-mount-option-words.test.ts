// h73: a mount option word the mount driver does not apply (a typo such as `syncc`, or `nobarrier`,
// which the fuse driver does not do) was handed to the driver and ignored, so the mount was not
// what was asked and nothing said so. Now mountVolume refuses it (INVALID_ARGUMENT naming the word
// and the words accepted) before anything is mounted: in the library (virtual and fuse drivers,
// and a driver of one's own that lists its words in MountDriver.options), through the daemon and
// `galleonfs volume mount --options`. Everything documented is still accepted: ro, rw, sync,
// async, allow_other, noatime, nodiratime, relatime, nodev, nosuid, noexec (since h78, which also
// checks a storage class's words: test/h78-class-mount-options.test.ts, and r37), and any word for
// a driver that lists none.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { runCli, runDaemonToExit, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { fuseMissing } from './support/fuse-available.js'
import { recordingMountDrivers } from './support/recording-mount-driver.js'

const noFuse = fuseMissing()

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h73-mount-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** Whether `path` exists, asked asynchronously (never a sync call near a mount this process serves). */
const present = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)

// Ends the message, or is followed by why a word is not offered (nobarrier).
const ACCEPTED = /the options accepted are ro, rw, sync, async, encrypted, allow_other, noatime, nodiratime, relatime, nodev, nosuid, noexec(?:$|\. "nobarrier" is not offered)/

describe('h73: mount option words the driver does not apply are refused', { timeout: 120_000 }, () => {
  it('library, virtual driver: an unknown word is refused naming it and the accepted ones; the documented ones still mount', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      for (const words of [['noatme'], ['rw', 'syncc'], ['ro', 'discard', 'nobarrier']]) {
        await assert.rejects(g.mounts.mountVolume('v', '/h73/v', { options: words }), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'INVALID_ARGUMENT')
          const unknown = words.filter((w) => !['ro', 'rw'].includes(w))
          for (const word of unknown) assert.ok(err.message.includes(`"${word}"`), `${err.message} names ${word}`)
          assert.match(err.message, /the virtual mount driver would ignore/)
          assert.match(err.message, ACCEPTED)
          return true
        })
        assert.deepEqual(g.mounts.listMounts(), [], 'nothing was mounted')
      }
      for (const words of [['ro'], ['rw', 'sync'], ['async'], ['allow_other'], ['noatime', 'noexec'], ['nodiratime', 'relatime']]) {
        const id = await g.mounts.mountVolume('v', '/h73/v', { options: words })
        await g.mounts.unmountVolume(id)
      }
      // A storage class's words are checked too (h78): those a driver applies go to it.
      await g.createStorageClass({ name: 'seedlike', mountOptions: ['noatime', 'sync'] })
      await g.createVolume({ name: 'c', sizeBytes: '1M', storageClass: 'seedlike' })
      const id = await g.mounts.mountVolume('c', '/h73/c')
      assert.deepEqual(g.mounts.listMounts().find((m) => m.id === id)?.options, ['noatime'])
      await g.mounts.unmountVolume(id)
    } finally {
      await g.close()
    }
  })

  it('library, a driver of one\'s own: the words it lists are accepted, others refused; one that lists none gets every word', async () => {
    const { seen, driver } = recordingMountDrivers()
    const listing = await GalleonFS.open({ inMemory: true, mount: driver(['discard']) })
    try {
      await listing.createVolume({ name: 'v', sizeBytes: '1M' })
      await assert.rejects(listing.mounts.mountVolume('v', '/h73/m', { options: ['allow_other'] }), { code: 'INVALID_ARGUMENT', message: /unknown mount option "allow_other": the mine mount driver would ignore it, so nothing was mounted; the options accepted are ro, rw, sync, async, encrypted, discard$/ })
      assert.equal(seen.length, 0, 'the driver was not asked to mount')
      await listing.mounts.unmountVolume(await listing.mounts.mountVolume('v', '/h73/m', { options: ['discard', 'sync'] }))
      assert.deepEqual(seen, [['discard']])
    } finally {
      await listing.close()
    }
    const silent = await GalleonFS.open({ inMemory: true, mount: driver() })
    try {
      await silent.createVolume({ name: 'v', sizeBytes: '1M' })
      await silent.mounts.unmountVolume(await silent.mounts.mountVolume('v', '/h73/s', { options: ['whatever'] }))
      assert.deepEqual(seen.at(-1), ['whatever'], 'a driver that lists no words gets them all, as before')
    } finally {
      await silent.close()
    }
  })

  it('library, fuse driver: refused before the mount point is made; allow_other and sync mount', { skip: noFuse }, async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'fuse-lib'), mount: 'fuse' })
    const where = join(root, 'fuse-lib-mnt', 'v')
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'fast-local-ssd' })
      await assert.rejects(g.mounts.mountVolume('v', where, { options: ['discard'] }), { code: 'INVALID_ARGUMENT', message: /unknown mount option "discard": the fuse mount driver would ignore it, so nothing was mounted; the options accepted are ro, rw, sync, async, encrypted, allow_other, noatime, nodiratime, relatime, nodev, nosuid, noexec$/ })
      assert.deepEqual(g.mounts.listMounts(), [])
      assert.equal(await present(join(root, 'fuse-lib-mnt')), false, 'no mount point was created')
      const id = await g.mounts.mountVolume('v', where, { options: ['allow_other', 'sync'] })
      const mount = g.mounts.listMounts().find((m) => m.id === id)
      assert.equal(mount?.sync, true)
      assert.deepEqual(mount?.options, ['allow_other'])
      await g.mounts.unmountVolume(id)
    } finally {
      await g.close()
    }
  })

  it('daemon and CLI: volume mount --options with an unknown word fails naming it; nothing is mounted or saved', { skip: noFuse }, async () => {
    const storage = join(root, 'daemon')
    const mountPoint = join(root, 'daemon-mnt')
    let daemon: RunningDaemon | undefined
    try {
      daemon = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0', '--mount-point', mountPoint], { cwd: root })
      const cli = async (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => await runCli((daemon as RunningDaemon).address, args, { cwd: root })
      const created = await cli(['volume', 'create', '--name', 'app', '--size', '1M', '--storage-class', 'fast-local-ssd'])
      assert.equal(created.code, 0, created.stderr)
      const refused = await cli(['volume', 'mount', 'app', '--options', 'rw,noatme'])
      assert.notEqual(refused.code, 0)
      assert.match(refused.stderr, /unknown mount option "noatme": the fuse mount driver would ignore it, so nothing was mounted; the options accepted are ro, rw, sync, async, encrypted, allow_other, noatime, nodiratime, relatime, nodev, nosuid, noexec/)
      assert.equal(await present(join(mountPoint, 'app')), false, 'no mount point was made')
      assert.deepEqual(JSON.parse((await cli(['--json', 'mount', 'list'])).stdout), [])
      const saved = await readFile(join(storage, 'daemon-mounts.json'), 'utf8').then((text) => JSON.parse(text) as unknown[], () => [])
      assert.deepEqual(saved, [], 'the refused mount is not saved for the next start')
      // The documented words still mount (the README's `--options rw,sync`).
      const mounted = await cli(['volume', 'mount', 'app', '--options', 'rw,sync'])
      assert.equal(mounted.code, 0, mounted.stderr)
      assert.equal((await cli(['volume', 'unmount', 'app'])).code, 0)
    } finally {
      if (daemon !== undefined) {
        daemon.child.kill('SIGTERM')
        await daemon.exited
      }
    }
  })

  it('daemon configuration: mount options given as the mount driver\'s options are refused at start, naming them', async () => {
    const storage = join(root, 'conf-storage')
    const config = join(root, 'mount.toml')
    await writeFile(config, `[daemon]\nmount_point = "${join(root, 'conf-mnt')}"\n\n[drivers]\nmount_driver = "virtual"\nmount_driver_options = { noatime = true }\n`)
    const { code, log } = await runDaemonToExit(['--config', config, '--storage-path', storage], { cwd: root })
    assert.equal(code, 2, log)
    assert.match(log, /noatime/)
    assert.match(log, /takes no options/)
    assert.equal(await present(storage), false, 'the storage path was not created')
  })
})
