// h78: a storage class's mount options were not checked: createStorageClass took any word (a typo
// such as `noatme`, an empty word, `ro,noatime` in one item), and a mount handed the class's words
// to the driver, which ignored those it does not apply. As with Kubernetes StorageClass
// mountOptions, a word that cannot apply now fails, never silently drops:
// - createStorageClass (also `galleonfs storage-class create`) refuses a word of the wrong form, or
//   one no mount driver of this build knows, INVALID_ARGUMENT naming the class, the word and the
//   words a class may list;
// - mounting a volume whose class lists a word the instance's driver does not apply (known to
//   another driver only, or stored by an earlier release) is refused naming the class, the word
//   and the driver, with the fix; such a class still loads, and its volumes move to a fixed class;
// - the fuse driver applies the words it lists (noatime, nodev, nosuid, noexec are on the mount;
//   what noatime, nodiratime and relatime do to access times: test/review-r37-fuse-atime.test.ts).
// Real instances on disk, the virtual and fuse drivers, a driver of one's own, real daemons.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, type StorageClass } from '../src/index.js'
import { runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { fuseMissing } from './support/fuse-available.js'
import { recordingMountDrivers } from './support/recording-mount-driver.js'

const noFuse = fuseMissing()

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h78-class-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const WORDS = 'ro, rw, sync, async, encrypted, allow_other, noatime, nodiratime, relatime, nodev, nosuid, noexec'
const present = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)

/** The mount options the kernel keeps for `path` (/proc/self/mountinfo), or undefined when nothing is mounted there. */
async function kernelMountOptions (path: string): Promise<string[] | undefined> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  const line = info.split('\n').find((l) => l.split(' ')[4] === path)
  return line?.split(' ')[5]?.split(',')
}

/** What an earlier release may have stored: the class record rewritten in the closed storage's metadata database. */
async function storeClassWords (storagePath: string, name: string, mountOptions: string[]): Promise<void> {
  const db = new ClassicLevel<string, string>(join(storagePath, 'metadata'))
  await db.open()
  try {
    const classes = db.sublevel<string, StorageClass>('classes', { valueEncoding: 'json' })
    const stored = await classes.get(name)
    assert.ok(stored !== undefined, `class ${name} is stored`)
    await classes.put(name, { ...stored, mountOptions })
  } finally {
    await db.close()
  }
}

describe('h78: a storage class\'s mount options are checked', { timeout: 120_000 }, () => {
  it('createStorageClass refuses a malformed word or one no driver knows, naming the class, the word and the words accepted', async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'create') })
    try {
      const cases: Array<{ words: unknown[], names: string[], says: RegExp }> = [
        { words: ['noatme'], names: ['"noatme"'], says: /unknown mount option "noatme" \("noatme" looks like "noatime"\): no mount driver of this build applies it/ },
        // The seed README's class: only nobarrier is refused, saying why and what to do instead.
        { words: ['noatime', 'nodiratime', 'nobarrier'], names: ['"nobarrier"'], says: /unknown mount option "nobarrier": .*\. "nobarrier" is not offered: a volume's flushes \(fsync, and every write of a sync mount\) are what make its writes durable, and no mount of GalleonFS drops them; leave it out: for speed, a mount without "sync" \(or with "async", the default\) already acknowledges writes before they are durable, and fsync makes them so$/ },
        { words: ['nodiratime', 'discard'], names: ['"discard"'], says: /unknown mount option "discard": no mount driver of this build applies it/ },
        { words: ['uid=1000'], names: ['"uid=1000"'], says: /no mount driver of this build applies it/ },
        { words: ['discard'], names: ['"discard"'], says: /no mount driver of this build applies it/ },
        { words: [''], names: ['mount option 1 is empty'], says: /leave it out, or give a word/ },
        { words: ['sync', 'ro,noatime'], names: ['"ro,noatime"'], says: /give each as its own item \(\["ro","noatime"\]\)/ },
        { words: ['uid='], names: ['"uid="'], says: /is not a mount option word/ },
        { words: ['=1000'], names: ['"=1000"'], says: /is not a mount option word/ },
        { words: ['no atime'], names: ['"no atime"'], says: /is not a mount option word/ },
        { words: [7], names: ['mount option 1 must be a word'], says: /got number/ }
      ]
      for (const { words, names, says } of cases) {
        for (const field of ['mountOptions', 'mount_options']) {
          await assert.rejects(g.createStorageClass({ name: 'typo', [field]: words }), (err: Error & { code?: string }) => {
            assert.equal(err.code, 'INVALID_ARGUMENT', err.message)
            assert.match(err.message, /^storage class typo/)
            for (const name of names) assert.ok(err.message.includes(name), `${err.message} names ${name}`)
            assert.match(err.message, says)
            assert.ok(err.message.includes(WORDS), `${err.message} lists the accepted words`)
            return true
          })
        }
      }
      // `encrypted` in a class that does not encrypt would refuse every mount of its volumes.
      await assert.rejects(g.createStorageClass({ name: 'typo', mountOptions: ['encrypted'] }), { code: 'INVALID_ARGUMENT', message: /storage class typo lists the mount option "encrypted" but does not encrypt its volumes .* set parameters.encryption to "true", or leave the option out/ })
      assert.deepEqual((await g.listStorageClasses()).map((c) => c.name).filter((n) => n === 'typo'), [], 'nothing was stored')

      // The seed README's second example (noatime, sync), and every word a class may list.
      await g.createStorageClass({ name: 'secure-distributed', provisioner: 'galleonfs.io/distributed', parameters: { encryption: 'true', replication: '5' }, reclaim_policy: 'Retain', mount_options: ['noatime', 'sync'] })
      await g.createStorageClass({ name: 'every-word', parameters: { encryption: 'true' }, mountOptions: WORDS.split(', ') })
      await g.createStorageClass({ name: 'flags', mountOptions: ['noatime', 'nosuid', 'sync'] })
      await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'flags' })
      const id = await g.mounts.mountVolume('v', '/h78/v')
      const mount = g.mounts.listMounts().find((m) => m.id === id)
      assert.equal(mount?.sync, true)
      assert.deepEqual(mount?.options, ['noatime', 'nosuid'], 'the words the driver applies are handed to it')
      await g.mounts.unmountVolume(id)
    } finally {
      await g.close()
    }
    // Stored as given: they load again.
    const again = await GalleonFS.open({ storagePath: join(root, 'create') })
    try {
      assert.deepEqual((await again.getStorageClass('secure-distributed')).mountOptions, ['noatime', 'sync'])
    } finally {
      await again.close()
    }
  })

  it('a driver of one\'s own: its words make a class; a class word only another driver applies is refused when mounting, naming class, word and driver', async () => {
    const { seen, driver } = recordingMountDrivers()
    const g = await GalleonFS.open({ inMemory: true, mount: driver(['discard']) })
    try {
      await g.createStorageClass({ name: 'discarding', mountOptions: ['discard'] })
      await g.createStorageClass({ name: 'for-fuse', mountOptions: ['noatime', 'sync'] })
      await assert.rejects(g.createStorageClass({ name: 'typo', mountOptions: ['discrad'] }), { code: 'INVALID_ARGUMENT', message: /storage class typo: unknown mount option "discrad" \("discrad" looks like "discard"\).* may list are ro, rw, sync, async, encrypted, allow_other, noatime, nodiratime, relatime, nodev, nosuid, noexec, discard$/ })
      await g.createVolume({ name: 'd', sizeBytes: '1M', storageClass: 'discarding' })
      await g.createVolume({ name: 'f', sizeBytes: '1M', storageClass: 'for-fuse' })
      await g.mounts.unmountVolume(await g.mounts.mountVolume('d', '/h78/d'))
      assert.deepEqual(seen, [['discard']])
      for (const ref of ['f', { volume: 'f', snapshot: (await g.createSnapshot('f', 's1')).name }]) {
        await assert.rejects(g.mounts.mountVolume(ref, '/h78/f'), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'INVALID_ARGUMENT')
          assert.match(err.message, /^storage class for-fuse of volume f lists the mount option "noatime", which the mine mount driver does not apply, so nothing was mounted/)
          assert.match(err.message, /the options it applies are ro, rw, sync, async, encrypted, discard\. Create a storage class without it \(createStorageClass\) and move the volume there/)
          return true
        })
      }
      assert.equal(seen.length, 1, 'the driver was not asked to mount')
      assert.deepEqual(g.mounts.listMounts(), [])
    } finally {
      await g.close()
    }
    // A word only a driver of one's own knows is refused where the instance's driver does not know it.
    const plain = await GalleonFS.open({ inMemory: true })
    try {
      await assert.rejects(plain.createStorageClass({ name: 'discarding', mountOptions: ['discard'] }), { code: 'INVALID_ARGUMENT', message: /storage class discarding: unknown mount option "discard"/ })
    } finally {
      await plain.close()
    }
    // A driver that lists no words takes every well-formed one (and refuses what it does not know itself).
    const silent = await GalleonFS.open({ inMemory: true, mount: driver() })
    try {
      await silent.createStorageClass({ name: 'any', mountOptions: ['whatever', 'uid=1000'] })
      await assert.rejects(silent.createStorageClass({ name: 'bad', mountOptions: ['a,b'] }), { code: 'INVALID_ARGUMENT' })
      await silent.createVolume({ name: 'a', sizeBytes: '1M', storageClass: 'any' })
      await silent.mounts.unmountVolume(await silent.mounts.mountVolume('a', '/h78/a'))
      assert.deepEqual(seen.at(-1), ['whatever', 'uid=1000'])
    } finally {
      await silent.close()
    }
  })

  it('a class stored by an earlier release with unknown words still loads; mounting its volumes fails naming the fix, which works', async () => {
    const storagePath = join(root, 'stored')
    const first = await GalleonFS.open({ storagePath })
    await first.createStorageClass({ name: 'seedlike', mountOptions: ['noatime'] })
    await first.createVolume({ name: 'old', sizeBytes: '1M', storageClass: 'seedlike' })
    await first.write('old', 0, new Uint8Array([7, 8, 9]))
    await first.close()
    await storeClassWords(storagePath, 'seedlike', ['noatime', 'nodiratime', 'nobarrier', 'noatme'])

    const g = await GalleonFS.open({ storagePath })
    try {
      assert.deepEqual((await g.getStorageClass('seedlike')).mountOptions, ['noatime', 'nodiratime', 'nobarrier', 'noatme'], 'loaded as stored')
      await assert.rejects(g.mounts.mountVolume('old', '/h78/old', { options: ['rw'] }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'INVALID_ARGUMENT')
        assert.match(err.message, /^storage class seedlike of volume old lists the mount options "nobarrier", "noatme", which the virtual mount driver does not apply \(no mount driver of this build applies them\), so nothing was mounted/)
        // No other driver would apply them: the one way out is named, and why nobarrier is not offered.
        assert.match(err.message, /Create a storage class without them \(createStorageClass\) and move the volume there \(migrateVolume\(vol, \{ storageClass \}\)\)\. "nobarrier" is not offered: .* leave it out: /)
        assert.doesNotMatch(err.message, /open GalleonFS with a mount driver/)
        return true
      })
      assert.deepEqual(g.mounts.listMounts(), [])
      // The fix it names.
      await g.createStorageClass({ name: 'seedlike-fixed', mountOptions: ['noatime', 'nodiratime'] })
      await g.migrateVolume('old', { storageClass: 'seedlike-fixed' })
      const id = await g.mounts.mountVolume('old', '/h78/old')
      const file = await g.mounts.openVolumeFile('/h78/old')
      const back = new Uint8Array(3)
      await file.pread(back, 0)
      assert.deepEqual([...back], [7, 8, 9], 'the volume\'s data came along')
      await file.close()
      await g.mounts.unmountVolume(id)
      await g.deleteStorageClass('seedlike')
    } finally {
      await g.close()
    }
  })

  it('fuse driver: the class\'s words are on the kernel\'s mount; a stored word it does not apply is refused before a mount point is made', { skip: noFuse }, async () => {
    const storagePath = join(root, 'fuse')
    const first = await GalleonFS.open({ storagePath, mount: 'fuse' })
    try {
      await assert.rejects(first.createStorageClass({ name: 'xfs-like', mountOptions: ['noatime', 'nobarrier'] }), { code: 'INVALID_ARGUMENT', message: /storage class xfs-like: unknown mount option "nobarrier"/ })
      await first.createStorageClass({ name: 'hardened', mountOptions: ['noatime', 'nodev', 'nosuid', 'noexec'] })
      await first.createVolume({ name: 'h', sizeBytes: '1M', storageClass: 'hardened' })
      await first.createStorageClass({ name: 'older', mountOptions: ['noatime'] })
      await first.createVolume({ name: 'o', sizeBytes: '1M', storageClass: 'older' })
      const where = join(root, 'fuse-mnt', 'h')
      const id = await first.mounts.mountVolume('h', where)
      try {
        const flags = await kernelMountOptions(where)
        assert.ok(flags !== undefined, 'mounted')
        for (const word of ['noatime', 'nodev', 'nosuid', 'noexec']) assert.ok(flags.includes(word), `${word} is on the mount (${flags.join(',')})`)
      } finally {
        await first.mounts.unmountVolume(id)
      }
    } finally {
      await first.close()
    }
    await storeClassWords(storagePath, 'older', ['noatime', 'nobarrier'])
    const g = await GalleonFS.open({ storagePath, mount: 'fuse' })
    const where = join(root, 'fuse-mnt', 'o')
    try {
      await assert.rejects(g.mounts.mountVolume('o', where), { code: 'INVALID_ARGUMENT', message: /^storage class older of volume o lists the mount option "nobarrier", which the fuse mount driver does not apply \(no mount driver of this build applies it\), so nothing was mounted/ })
      assert.equal(await kernelMountOptions(where), undefined)
      assert.equal(await present(where), false, 'no mount point was made')
    } finally {
      await g.close()
    }
  })

  it('daemon and CLI: storage-class create refuses like other invalid definitions; a mount of a stale class fails, also at restart, and the saved mount stays', async () => {
    const storage = join(root, 'daemon')
    const config = join(root, 'daemon.toml')
    await writeFile(config, `[daemon]\nmount_point = "${join(root, 'daemon-mnt')}"\n\n[drivers]\nmount_driver = "virtual"\n`)
    const args = ['--config', config, '--storage-path', storage, '--ipc-address', '127.0.0.1:0']
    let daemon: RunningDaemon | undefined
    const stop = async (): Promise<void> => {
      if (daemon === undefined || daemon.child.exitCode !== null) return
      daemon.child.kill('SIGTERM')
      await daemon.exited
    }
    try {
      daemon = await startDaemonProcess(args, { cwd: root })
      const cli = async (command: string[]): Promise<{ code: number, stdout: string, stderr: string }> => await runCli((daemon as RunningDaemon).address, command, { cwd: root })
      const definition = async (name: string, body: Record<string, unknown>): Promise<string> => {
        const file = join(root, `${name}.json`)
        await writeFile(file, JSON.stringify({ name, ...body }))
        return file
      }
      const otherInvalid = await cli(['storage-class', 'create', await definition('bad-policy', { reclaim_policy: 'Keep' })])
      assert.notEqual(otherInvalid.code, 0)
      const typo = await cli(['storage-class', 'create', await definition('typo', { mount_options: ['noatme'] })])
      assert.equal(typo.code, otherInvalid.code, 'the exit code of any INVALID_ARGUMENT')
      assert.match(typo.stderr, /storage class typo: unknown mount option "noatme" \("noatme" looks like "noatime"\)/)
      const joined = await cli(['storage-class', 'create', await definition('joined', { mount_options: ['noatime,sync'] })])
      assert.equal(joined.code, otherInvalid.code)
      assert.match(joined.stderr, /give each as its own item/)
      // The CLI user has no MountDriver to write: the daemon's mount_driver is named instead (r37).
      assert.match(joined.stderr, /\(and those the daemon's mount_driver lists, when it is a driver of your own\)/)
      assert.doesNotMatch(joined.stderr, /MountDriver\.options/)
      // The seed README's class: nobarrier is refused saying why, and what to use.
      const seed = await cli(['storage-class', 'create', await definition('seed', { mount_options: ['noatime', 'nodiratime', 'nobarrier'] })])
      assert.equal(seed.code, otherInvalid.code)
      assert.match(seed.stderr, /storage class seed: unknown mount option "nobarrier": .*"nobarrier" is not offered: a volume's flushes .* leave it out: for speed, a mount without "sync" \(or with "async", the default\)/)
      const listed = JSON.parse((await cli(['--json', 'storage-class', 'list'])).stdout) as Array<{ name: string }>
      assert.deepEqual(listed.filter((c) => ['typo', 'joined', 'seed'].includes(c.name)), [])

      const made = await cli(['storage-class', 'create', await definition('web', { mount_options: ['noatime'] })])
      assert.equal(made.code, 0, made.stderr)
      assert.equal((await cli(['volume', 'create', '--name', 'app', '--size', '1M', '--storage-class', 'web'])).code, 0)
      const mounted = await cli(['volume', 'mount', 'app'])
      assert.equal(mounted.code, 0, mounted.stderr)
      await stop()

      await storeClassWords(storage, 'web', ['noatime', 'nobarrier'])
      daemon = await startDaemonProcess(args, { cwd: root })
      const failed = daemon.logs.map((line) => JSON.parse(line) as { level?: string, message?: string, error?: string }).find((entry) => entry.message === 'could not mount again')
      assert.equal(failed?.level, 'warn', daemon.logs.join('\n'))
      assert.match(failed?.error ?? '', /storage class web of volume app lists the mount option "nobarrier", which the virtual mount driver does not apply/)
      assert.deepEqual(JSON.parse((await cli(['--json', 'mount', 'list'])).stdout), [])
      const saved = JSON.parse(await readFile(join(storage, 'daemon-mounts.json'), 'utf8')) as unknown[]
      assert.equal(saved.length, 1, 'the saved mount is kept for when the class is fixed')
      const refused = await cli(['volume', 'mount', 'app'])
      assert.notEqual(refused.code, 0)
      assert.match(refused.stderr, /storage class web of volume app lists the mount option "nobarrier"/)
      // The fix in CLI terms (r37): the commands, not the API calls.
      assert.match(refused.stderr, /Create a storage class without it \(`galleonfs storage-class create <file>`\) and move the volume there \(`galleonfs volume migrate app --storage-class <class>`\)\. "nobarrier" is not offered/)
      assert.doesNotMatch(refused.stderr, /migrateVolume|createStorageClass/)
    } finally {
      await stop()
    }
  })
})
