// h66: every backup manifest carries a sequence number (per volume on its target) and every
// "newest" decision orders by it, not by the dates backups carry: a wall clock stepped back dates
// newer backups earlier. Manifests from before sequences (none) come first, by date among
// themselves; a malformed sequence is CORRUPTION; backups started one after another (in one
// instance, or in two instances writing the same target) are numbered in that order.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type Backup } from '../src/index.js'
import { decodeManifest, encodeManifest, type Manifest } from '../src/backup/format.js'

const BS = 4096
const HOUR = 3_600_000
const BLOCKS = 16

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h66-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** A wall clock that moves only when told (and may be stepped back). */
class SteppedClock {
  constructor (public time: number) {}
  now (): number { return this.time }
}

/** Rewrites a manifest on the target as `change` makes it, with a valid checksum (as another release, or an altered target, wrote it). */
async function alterManifest (target: string, id: string, change: (manifest: Manifest) => unknown): Promise<void> {
  const file = join(target, 'manifests', `${id}.json`)
  await writeFile(file, encodeManifest(change(decodeManifest(id, new Uint8Array(await readFile(file)))) as Manifest))
}

/** Rewrites the manifest of backup `id` as a release from before sequences wrote it (no sequence). */
async function unnumber (target: string, id: string): Promise<void> {
  await alterManifest(target, id, ({ sequence, ...rest }) => rest)
}

async function image (g: GalleonFS, vol: string): Promise<Buffer> {
  return Buffer.from(await g.read(vol, 0, BLOCKS * BS))
}

/** Writes a block of `fill` bytes at `block`. */
async function stamp (g: GalleonFS, vol: string, block: number, fill: number): Promise<void> {
  await g.write(vol, block * BS, new Uint8Array(BS).fill(fill))
}

describe('h66: backups ordered by sequence, not by their dates', () => {
  it('old manifests without a sequence list, restore and are pruned; they come before every numbered one, whatever the dates', async () => {
    const target = place()
    // An earlier release's clock ran two days ahead: its nightly backups are dated March 10-12.
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 2, 30))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: target, clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: BLOCKS * BS })
      const images = new Map<string, Buffer>()
      const take = async (time: number, fill: number): Promise<Backup> => {
        clock.time = time
        await stamp(g, 'db', fill, fill)
        const backup = await g.createBackup('db', { strategy: 'full', policy: 'nightly' })
        images.set(backup.id, await image(g, 'db'))
        return backup
      }
      const old: Backup[] = []
      for (const day of [10, 11, 12]) old.push(await take(Date.UTC(2026, 2, day, 2, 30), day - 9))
      for (const backup of old) await unnumber(target, backup.id)
      assert.deepEqual((await g.listBackups('db')).map((b) => [b.id, b.sequence]), old.map((b) => [b.id, null]), 'listed by date, unnumbered')

      // Upgraded, and the clock stepped back to the truth: the new release's first backup is dated
      // before all of them, and still comes after them.
      const first = await take(Date.UTC(2026, 2, 8, 2, 30), 4)
      assert.equal(first.sequence, 1, 'numbered from 1 (the old ones count as 0)')
      assert.deepEqual((await g.listBackups('db')).map((b) => b.id), [...old, first].map((b) => b.id), 'old ones first, by date; then the numbered one')

      // Old backups restore, and verify, as before.
      for (const backup of [old[1] as Backup, first]) {
        assert.equal((await g.verifyBackup(backup.id)).ok, true)
        const restored = await g.restoreBackup(backup.id, { name: `r-${backup.id.slice(0, 8)}` })
        assert.ok((await image(g, restored.id)).equals(images.get(backup.id) as Buffer), `backup ${backup.id} restores byte for byte`)
        await g.deleteVolume(restored.id)
      }

      // The policy's run the next night: daily: 2 keeps the two backups taken last (tonight's and
      // last night's), and prunes the old ones, although they are dated later than both.
      clock.time = Date.UTC(2026, 2, 8, 3)
      await g.createBackupPolicy({ name: 'nightly', schedule: '0 2 * * *', strategy: 'full', retention: { daily: 2 }, volumes: ['db'] })
      clock.time = Date.UTC(2026, 2, 9, 2, 30)
      const [run] = await g.runDueBackupPolicies()
      assert.ok(run !== undefined)
      assert.deepEqual(run.errors, [])
      assert.equal(run.backups[0]?.sequence, 2)
      assert.deepEqual([...run.pruned].sort(), old.map((b) => b.id).sort(), 'the old backups are pruned, not the numbered one taken before tonight\'s')
      assert.deepEqual((await g.listBackups('db')).map((b) => [b.id, b.sequence]), [[first.id, 1], [run.backups[0]?.id, 2]])
    } finally {
      await g.close()
    }
  })

  it('after a step back, incrementals build on the backup taken last, differentials on the full taken last, and the snapshots kept follow', async () => {
    const target = place()
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 2, 30))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: target, clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: BLOCKS * BS })
      const images = new Map<string, Buffer>()
      const take = async (time: number, strategy: 'full' | 'incremental' | 'differential', fill: number): Promise<Backup> => {
        clock.time = time
        await stamp(g, 'db', fill, fill)
        const backup = await g.createBackup('db', { strategy })
        images.set(backup.id, await image(g, 'db'))
        return backup
      }
      // Taken by an earlier release (unnumbered), dated March 10 and 11.
      const oldFull = await take(Date.UTC(2026, 2, 10, 2, 30), 'full', 1)
      const oldIncremental = await take(Date.UTC(2026, 2, 11, 2, 30), 'incremental', 2)
      for (const backup of [oldFull, oldIncremental]) await unnumber(target, backup.id)
      // The clock steps back three days.
      const first = await take(Date.UTC(2026, 2, 8, 2, 30), 'incremental', 3)
      assert.deepEqual([first.strategy, first.baseId, first.sequence], ['incremental', oldIncremental.id, 1], 'the first numbered backup builds on the newest old one (by date among those)')
      const second = await take(Date.UTC(2026, 2, 8, 1, 30), 'incremental', 4)
      assert.deepEqual([second.baseId, second.sequence], [first.id, 2], 'builds on the backup taken last, not on the old one dated three days later')
      const full = await take(Date.UTC(2026, 2, 8, 1, 0), 'full', 5)
      const differential = await take(Date.UTC(2026, 2, 7, 23, 0), 'differential', 6)
      assert.deepEqual([differential.strategy, differential.baseId, differential.sequence], ['differential', full.id, 4], 'builds on the full taken last, not on the old full dated later')
      assert.equal(differential.blocks, 1, 'only the block changed since that full')
      // Backups keep the snapshots later ones build on: the newest backup's and the newest full's.
      const held = (await g.listSnapshots('db')).map((s) => s.name).filter((name) => name.startsWith('backup-')).sort()
      assert.deepEqual(held, [`backup-${full.id}`, `backup-${differential.id}`].sort())
      const next = await take(Date.UTC(2026, 2, 7, 22, 0), 'incremental', 7)
      assert.equal(next.baseId, differential.id)
      assert.deepEqual((await g.listBackups('db')).map((b) => b.id), [oldFull, oldIncremental, first, second, full, differential, next].map((b) => b.id))
      for (const backup of [second, differential, next]) {
        const restored = await g.restoreBackup(backup.id, { name: `r-${backup.id.slice(0, 8)}` })
        assert.ok((await image(g, restored.id)).equals(images.get(backup.id) as Buffer), `${backup.strategy} backup ${backup.id} restores byte for byte`)
        await g.deleteVolume(restored.id)
      }
    } finally {
      await g.close()
    }
  })

  it('concurrent createBackup calls on one target are numbered in the order they are taken, each incremental on the one before, with the clock stepping back each time', async () => {
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 12))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: place(), clock })
    try {
      for (const name of ['a', 'b']) await g.createVolume({ name, sizeBytes: BLOCKS * BS })
      const taken = new Map<string, Backup[]>([['a', []], ['b', []]])
      // Each backup steps the clock back an hour before its snapshot: every one is dated before
      // the ones taken before it.
      const hooks = {
        pre: () => { clock.time -= HOUR },
        post: (backup: Backup) => { taken.get(backup.volumeName)?.push(backup) }
      }
      const calls: Array<Promise<Backup>> = []
      for (let i = 0; i < 4; i++) {
        for (const name of i < 3 ? ['a', 'b'] : ['a']) {
          await stamp(g, name, i, 10 * i + 1)
          calls.push(g.createBackup(name, { strategy: 'incremental', hooks }))
        }
      }
      const results = await Promise.all(calls)
      assert.equal(results.length, 7)
      for (const [name, backups] of taken) {
        assert.deepEqual(backups.map((b) => b.sequence), backups.map((_, i) => i + 1), `${name}: numbered 1, 2, ... in the order taken`)
        assert.deepEqual(backups.map((b) => b.baseId), [null, ...backups.slice(0, -1).map((b) => b.id)], `${name}: each incremental builds on the one taken before it`)
        assert.deepEqual(backups.map((b) => b.strategy), ['full', ...backups.slice(1).map(() => 'incremental')])
        assert.ok(backups.every((b, i) => i === 0 || b.createdAt < (backups[i - 1] as Backup).createdAt), 'dated ever earlier')
        assert.deepEqual((await g.listBackups(name)).map((b) => b.id), backups.map((b) => b.id), `${name}: listed in the order taken`)
      }
      // Every backup listed once; each volume's in its order (the lists of the two are merged by date).
      const all = await g.listBackups()
      assert.equal(all.length, 7)
      for (const [name, backups] of taken) assert.deepEqual(all.filter((b) => b.volumeName === name).map((b) => b.id), backups.map((b) => b.id))
    } finally {
      await g.close()
    }
  })

  it('a manifest with a malformed sequence is refused with CORRUPTION naming the field; the largest one is taken', async () => {
    const target = place()
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 12))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: target, clock })
    try {
      await g.createVolume({ name: 'db', sizeBytes: BLOCKS * BS })
      await stamp(g, 'db', 0, 1)
      const good = await g.createBackup('db', { strategy: 'full' })
      const bad = await g.createBackup('db', { strategy: 'full' })
      const file = join(target, 'manifests', `${bad.id}.json`)
      const stored = decodeManifest(bad.id, new Uint8Array(await readFile(file)))
      for (const sequence of [0, -1, 1.5, '3', null, true, Number.MAX_SAFE_INTEGER + 1, [2], { n: 2 }]) {
        await writeFile(file, encodeManifest({ ...stored, sequence } as unknown as Manifest))
        const what = `sequence ${JSON.stringify(sequence)}`
        await assert.rejects(g.getBackup(bad.id), (err: { code?: string, message?: string }) => err.code === 'CORRUPTION' && /\bsequence\b/.test(err.message ?? ''), what)
        await assert.rejects(g.restoreBackup(bad.id, { name: 'restored' }), { code: 'CORRUPTION' }, what)
        assert.deepEqual((await g.listBackups('db')).map((b) => b.id), [good.id], `${what}: not listed`)
      }
      // Valid however large: a later backup shares the largest number (and comes after it by date).
      await writeFile(file, encodeManifest({ ...stored, sequence: Number.MAX_SAFE_INTEGER }))
      assert.equal((await g.getBackup(bad.id)).sequence, Number.MAX_SAFE_INTEGER)
      clock.time += HOUR
      const later = await g.createBackup('db', { strategy: 'incremental' })
      assert.deepEqual([later.sequence, later.baseId], [Number.MAX_SAFE_INTEGER, bad.id])
      assert.deepEqual((await g.listBackups('db')).map((b) => b.id), [good.id, bad.id, later.id])
    } finally {
      await g.close()
    }
  })

  it('two instances writing one target: different volumes are numbered apart; copies of one volume continue each other\'s numbers, whatever their clocks say', async () => {
    const target = place()
    const source = place()
    // One volume, then two instances on copies of its storage (as two nodes holding copies of it).
    const setup = await GalleonFS.open({ storagePath: source, backupTarget: target })
    try {
      await setup.createVolume({ name: 'shared', sizeBytes: BLOCKS * BS })
      await stamp(setup, 'shared', 0, 1)
    } finally {
      await setup.close()
    }
    const copy = place()
    await cp(source, copy, { recursive: true })
    // B's clock is two days behind A's.
    const clockA = new SteppedClock(Date.UTC(2026, 2, 10, 12))
    const clockB = new SteppedClock(Date.UTC(2026, 2, 8, 12))
    const a = await GalleonFS.open({ storagePath: source, backupTarget: target, clock: clockA })
    let b: GalleonFS | undefined
    try {
      b = await GalleonFS.open({ storagePath: copy, backupTarget: target, clock: clockB })
      await a.createVolume({ name: 'only-a', sizeBytes: BLOCKS * BS })
      await b.createVolume({ name: 'only-b', sizeBytes: BLOCKS * BS })
      const tick = (): void => { clockA.time += 60_000; clockB.time += 60_000 }

      // One after another: A, then B (dated two days earlier), then A.
      const a1 = await a.createBackup('shared', { strategy: 'full' })
      tick()
      const b1 = await b.createBackup('shared', { strategy: 'full' })
      tick()
      const a2 = await a.createBackup('shared', { strategy: 'full' })
      assert.deepEqual([a1, b1, a2].map((x) => x.sequence), [1, 2, 3])
      assert.ok(b1.createdAt < a1.createdAt, 'B\'s backup is dated before A\'s first')
      for (const g of [a, b]) assert.deepEqual((await g.listBackups('shared')).map((x) => x.id), [a1.id, b1.id, a2.id], 'listed in the order taken, from either instance')

      // At the same time: each instance backs up the shared volume and its own, three times over.
      // Whatever the interleaving: a backup that starts (its pre hook) after another one's manifest
      // is stored (its post hook) is numbered after it.
      const log: Array<{ event: 'pre' | 'post', who: string, backup?: Backup }> = []
      const run = async (g: GalleonFS, who: string, volume: string, times: number): Promise<void> => {
        for (let i = 0; i < times; i++) {
          tick()
          await stamp(g, volume, 1 + i, 2 + i)
          const name = `${who}${i}`
          await g.createBackup(volume, { strategy: 'full', hooks: { pre: () => { log.push({ event: 'pre', who: name }) }, post: (backup) => { log.push({ event: 'post', who: name, backup }) } } })
        }
      }
      await Promise.all([run(a, 'a-shared-', 'shared', 3), run(b, 'b-shared-', 'shared', 3), run(a, 'a-own-', 'only-a', 3), run(b, 'b-own-', 'only-b', 3)])
      const sequenceOf = new Map(log.flatMap((entry) => entry.backup === undefined ? [] : [[entry.who, entry.backup.sequence as number]]))
      assert.equal(sequenceOf.size, 12)
      let pairs = 0
      for (const [at, entry] of log.entries()) {
        if (entry.event !== 'pre' || !entry.who.includes('shared')) continue
        for (const earlier of log.slice(0, at)) {
          if (earlier.event !== 'post' || !earlier.who.includes('shared')) continue
          pairs++
          assert.ok((sequenceOf.get(entry.who) as number) > (sequenceOf.get(earlier.who) as number), `${entry.who} started after ${earlier.who} was stored, and is numbered after it (${sequenceOf.get(entry.who)} vs ${sequenceOf.get(earlier.who)})`)
        }
      }
      assert.ok(pairs >= 3, 'each instance\'s own backups of it follow each other at least')
      for (const own of ['only-a', 'only-b']) {
        assert.deepEqual((await a.listBackups(own)).map((x) => x.sequence), [1, 2, 3], `${own}: numbered apart from the other volumes on the target`)
      }
      // Listed in number order (equal numbers: two backups that ran at once; then by date).
      const shared = await b.listBackups('shared')
      assert.equal(shared.length, 9)
      assert.ok(shared.every((x, i) => i === 0 || (x.sequence as number) >= (shared[i - 1]?.sequence as number)), JSON.stringify(shared.map((x) => x.sequence)))
      assert.deepEqual(shared.slice(0, 3).map((x) => x.id), [a1.id, b1.id, a2.id])
    } finally {
      await b?.close()
      await a.close()
    }
  })
})
