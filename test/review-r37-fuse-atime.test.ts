// r37 (review of h78): the fuse driver put `noatime` on the kernel's mount, but reported every
// file's and the directory's atime as the time of each stat, so `stat` showed a new atime each
// time: the word was not applied (the kernel leaves a FUSE file system's atime to it). Now:
// - each name's atime is the mount's time (as listMounts() shows it) until it is read (the
//   directory: listed), then the time of its last read: relatime, the kernel's default, which the
//   word `relatime` asks for too;
// - `noatime` keeps every atime at the mount's time, also over `relatime`, as the kernel does;
// - `nodiratime` (libfuse 2 refuses it as a mount option) keeps the directory's;
// - `nobarrier`, in the seed README's example class, stays refused, now saying why (a volume's
//   flushes are what make its writes durable) and what to use instead (leave it out: async).
// Real FUSE mounts; `stat`, `cat` and `ls` run as child processes (never a sync call on a mount
// this process serves).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type MountDriver } from '../src/index.js'
import { inCliTerms } from '../examples/cli-client.js'
import { fuseMissing } from './support/fuse-available.js'

const run = promisify(execFile)

const noFuse = fuseMissing()

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r37-atime-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

const NAMES = ['', 'data', 'README.txt', '.galleonfs_metadata'] as const
type Name = typeof NAMES[number]

/** The atime `stat` (a child process) reports for each name under the mount point, in ms since the epoch. */
async function atimes (where: string): Promise<Record<Name, number>> {
  const { stdout } = await run('stat', ['-c', '%.9X', ...NAMES.map((name) => name === '' ? where : join(where, name))])
  const lines = stdout.trim().split('\n')
  assert.equal(lines.length, NAMES.length, stdout)
  const ms = (text: string): number => {
    const [seconds, fraction = ''] = text.split('.')
    // Whole milliseconds: the driver keeps times in ms, so the rest of the nanoseconds are 0.
    assert.match(fraction, /^\d{3}0{6}$/, `a time in whole milliseconds: ${text}`)
    return Number(seconds) * 1000 + Number(fraction.slice(0, 3))
  }
  return Object.fromEntries(NAMES.map((name, i) => [name, ms(lines[i] as string)])) as Record<Name, number>
}

/** Reads `data` and README.txt and lists the directory, as a user would (children of this process). */
async function readAndList (where: string): Promise<void> {
  await run('sh', ['-c', 'cat "$1/data" "$1/README.txt" > /dev/null && ls -a "$1" > /dev/null', 'sh', where])
}

/** The mount options the kernel keeps for `path` (/proc/self/mountinfo). */
async function kernelMountOptions (path: string): Promise<string[]> {
  const line = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === path)
  assert.ok(line !== undefined, `${path} is mounted`)
  return line.split(' ')[5]?.split(',') ?? []
}

/** Waits until the clock has passed `time` (ms), so that a time taken from now on differs from it. */
async function clockPast (time: number): Promise<void> {
  while (Date.now() <= time + 1) await new Promise((resolve) => setTimeout(resolve, 2))
}

describe('r37: the fuse driver applies noatime, nodiratime and relatime to the access times it reports', { timeout: 120_000 }, () => {
  it('stat shows atime at the mount\'s time until a read; noatime keeps it there, nodiratime the directory\'s; relatime is the default', { skip: noFuse }, async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'fuse'), mount: 'fuse' })
    try {
      await g.createStorageClass({ name: 'quiet', mountOptions: ['noatime'] })
      await g.createStorageClass({ name: 'dirs', mountOptions: ['nodiratime'] })
      await g.createVolume({ name: 'plain', sizeBytes: '1M' })
      await g.createVolume({ name: 'q', sizeBytes: '1M', storageClass: 'quiet' })
      await g.createVolume({ name: 'd', sizeBytes: '1M', storageClass: 'dirs' })
      await g.write('q', 0, new Uint8Array([1, 2, 3]))
      await g.createSnapshot('q', 's1')

      /** Mounts, reads and lists; the atimes before and after, and the mount's time. */
      const cycle = async (ref: string | { volume: string, snapshot: string }, options: string[], flags: { has: string[], lacks: string[] }): Promise<{ since: number, first: Record<Name, number>, then: Record<Name, number>, readBy: number }> => {
        const where = join(root, 'mnt', typeof ref === 'string' ? ref : `${ref.volume}@${ref.snapshot}`, options.join('-'))
        const id = await g.mounts.mountVolume(ref, where, { options })
        try {
          const mountedAt = g.mounts.listMounts().find((m) => m.id === id)?.mountedAt
          assert.ok(mountedAt !== undefined)
          const since = Date.parse(mountedAt)
          const kernel = await kernelMountOptions(where)
          for (const word of flags.has) assert.ok(kernel.includes(word), `${word} is on the mount (${kernel.join(',')})`)
          for (const word of flags.lacks) assert.ok(!kernel.includes(word), `${word} is not on the mount (${kernel.join(',')})`)
          await clockPast(since)
          const first = await atimes(where)
          await readAndList(where)
          const readBy = Date.now()
          await clockPast(readBy)
          const then = await atimes(where)
          return { since, first, then, readBy }
        } finally {
          await g.mounts.unmountVolume(id)
        }
      }
      const all = (value: number): Record<Name, number> => ({ '': value, data: value, 'README.txt': value, '.galleonfs_metadata': value })

      // No word: the kernel's relatime. A stat alone moves nothing; a read moves what was read.
      for (const options of [[], ['relatime']]) {
        const { since, first, then, readBy } = await cycle('plain', options, { has: ['relatime'], lacks: ['noatime'] })
        assert.deepEqual(first, all(since), `${options.join(',')}: every atime is the mount's time before anything is read`)
        for (const name of ['', 'data', 'README.txt'] as const) {
          assert.ok(then[name] > since && then[name] <= readBy, `${options.join(',')}: ${name === '' ? 'the directory' : name} was read at ${then[name]}, between ${since} and ${readBy}`)
        }
        assert.equal(then['.galleonfs_metadata'], since, 'a name not read keeps its atime')
      }

      // noatime, from the class, the call, over relatime, and on a snapshot mount: every atime
      // stays the mount's time, read or not.
      for (const [ref, options] of [['q', []], ['plain', ['noatime']], ['plain', ['relatime', 'noatime']], ['plain', ['noatime', 'relatime']], [{ volume: 'q', snapshot: 's1' }, []]] as const) {
        const { since, first, then } = await cycle(ref, [...options], { has: ['noatime'], lacks: ['relatime'] })
        const what = `${JSON.stringify(ref)} ${options.join(',')}`
        assert.deepEqual(first, all(since), `${what}: atime is the mount's time`)
        assert.deepEqual(then, all(since), `${what}: reading and listing did not move it`)
      }

      // nodiratime (the class's; libfuse would refuse it as a mount flag): the directory's stays.
      const { since, first, then } = await cycle('d', [], { has: ['relatime'], lacks: ['noatime', 'nodiratime'] })
      assert.deepEqual(first, all(since))
      assert.equal(then[''], since, 'listing the directory did not move its atime')
      assert.ok(then.data > since, 'reading data did')
      assert.ok(then['README.txt'] > since, 'reading README.txt did')
    } finally {
      await g.close()
    }
  })

  it('nobarrier stays refused, saying why and what to use instead: in a class, in a call, for the CLI', async () => {
    const NOT_OFFERED = /"nobarrier" is not offered: a volume's flushes \(fsync, and every write of a sync mount\) are what make its writes durable, and no mount of GalleonFS drops them; leave it out: for speed, a mount without "sync" \(or with "async", the default\) already acknowledges writes before they are durable, and fsync makes them so$/
    const g = await GalleonFS.open({ inMemory: true })
    try {
      // The seed README's example class: nodiratime is taken now, nobarrier is not.
      await assert.rejects(g.createStorageClass({ name: 'seed', mountOptions: ['noatime', 'nodiratime', 'nobarrier'] }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'INVALID_ARGUMENT')
        assert.match(err.message, /^storage class seed: unknown mount option "nobarrier": no mount driver of this build applies it/)
        assert.doesNotMatch(err.message, /"nodiratime"/)
        assert.match(err.message, NOT_OFFERED)
        return true
      })
      await g.createStorageClass({ name: 'seed', mountOptions: ['noatime', 'nodiratime'] })
      await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'seed' })
      await assert.rejects(g.mounts.mountVolume('v', '/r37/v', { options: ['rw', 'nobarrier'] }), { code: 'INVALID_ARGUMENT', message: NOT_OFFERED })
      const id = await g.mounts.mountVolume('v', '/r37/v', { options: ['relatime'] })
      assert.deepEqual(g.mounts.listMounts().find((m) => m.id === id)?.options, ['noatime', 'nodiratime', 'relatime'])
      await g.mounts.unmountVolume(id)
    } finally {
      await g.close()
    }

    // A driver of one's own that applies nobarrier may: the word is refused for what the built-in
    // drivers do, not for every driver.
    const handed: string[][] = []
    const mine: MountDriver = { name: 'mine', options: ['nobarrier'], mount: async (volume) => { handed.push([...volume.options]) }, unmount: async () => {} }
    const own = await GalleonFS.open({ inMemory: true, mount: mine })
    try {
      await own.createStorageClass({ name: 'fast', mountOptions: ['nobarrier'] })
      await own.createStorageClass({ name: 'fuse-words', mountOptions: ['noatime'] })
      await own.createVolume({ name: 'f', sizeBytes: '1M', storageClass: 'fast' })
      await own.mounts.unmountVolume(await own.mounts.mountVolume('f', '/r37/f'))
      assert.deepEqual(handed, [['nobarrier']])
      // A class word only the built-in drivers apply: refused here, and the CLI says it in its terms.
      await own.createVolume({ name: 'w', sizeBytes: '1M', storageClass: 'fuse-words' })
      const err = await own.mounts.mountVolume('w', '/r37/w').then(() => undefined, (e: Error) => e)
      assert.match(err?.message ?? '', /which the mine mount driver does not apply, so nothing was mounted .*\(migrateVolume\(vol, \{ storageClass \}\)\), or open GalleonFS with a mount driver that applies it$/)
      assert.match(inCliTerms(err?.message ?? ''), /Create a storage class without it \(`galleonfs storage-class create <file>`\) and move the volume there \(`galleonfs volume migrate w --storage-class <class>`\), or start the daemon with a mount driver that applies it \(mount_driver in \[drivers\]\)$/)
    } finally {
      await own.close()
    }
  })
})
