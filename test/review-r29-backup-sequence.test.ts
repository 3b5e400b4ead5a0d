// Review r29 of a843b98 (backups ordered by a per-volume sequence number in their manifests).
//
// An encrypted volume's target is not trusted: its manifests are authenticated (README), and a
// backup never builds on one that does not authenticate. But the number a new backup takes is one
// above the largest sequence among *all* of the volume's manifests, authenticated or not
// (manager.ts: "counted over all of the volume's manifests, authenticated or not", for manifests
// sealed under a backup key a rotation retired). So anyone who can write to the target, without
// any key, plants one untagged manifest naming the volume with sequence Number.MAX_SAFE_INTEGER:
// every later genuine backup is numbered MAX_SAFE_INTEGER too (nextSequence caps there), so their
// order falls back to their dates (the h65/h66 defect: after a clock step back, newer backups are
// taken for older ones by listBackups, by an incremental's base, by retention). Removing the
// planted file does not undo it: the genuine manifests now carry the cap themselves.
//
// The second test pins what the fix must keep: manifests sealed under a retired backup key (after
// rotateVolumeKey) still count, so numbering goes on across a rotation.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type Backup } from '../src/index.js'
import { decodeManifest, encodeManifest, type Manifest } from '../src/backup/format.js'

const BS = 4096
const BLOCKS = 16
const HOUR = 3_600_000

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r29-seq-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** A wall clock that moves only when told (and may be stepped back). */
class SteppedClock {
  constructor (public time: number) {}
  now (): number { return this.time }
}

async function stamp (g: GalleonFS, vol: string, block: number, fill: number): Promise<void> {
  await g.write(vol, block * BS, new Uint8Array(BS).fill(fill))
}

describe('review r29: backup sequence numbers of an encrypted volume', () => {
  it('an untagged manifest planted on the target (no key needed) does not number the volume\'s genuine backups: they stay 1, 2, 3, 4 in the order taken, after the clock stepped back and after the planted file is gone', async () => {
    const target = place()
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 12))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: target, clock })
    try {
      const volume = await g.createVolume({ name: 'sec', sizeBytes: BLOCKS * BS, storageClass: 'encrypted-storage', replicas: 1 } as never)
      await stamp(g, 'sec', 0, 1)
      const first = await g.createBackup('sec', { strategy: 'full' })

      // What someone holding no key can write: the genuine manifest's plaintext fields under a new
      // id, with the largest valid sequence and a valid checksum (a plain SHA-256): without a tag,
      // with the genuine manifest's tag (which no longer matches), and as a plain volume's manifest.
      const genuineFile = join(target, 'manifests', `${first.id}.json`)
      const genuine = decodeManifest(first.id, new Uint8Array(await readFile(genuineFile)))
      const genuineTag = (JSON.parse(await readFile(genuineFile, 'utf8')) as { tag: string }).tag
      assert.equal(genuine.volume.id, volume.id)
      assert.equal(typeof genuineTag, 'string')
      const plantedFiles: string[] = []
      for (const variant of ['untagged', 'wrong tag', 'plain'] as const) {
        const id = randomUUID()
        const { encryption, ...plain } = genuine
        const planted = { ...(variant === 'plain' ? plain : genuine), id, sequence: Number.MAX_SAFE_INTEGER, snapshot: { id: randomUUID(), name: `backup-${id}` } } as Manifest
        const file = join(target, 'manifests', `${id}.json`)
        const bytes = encodeManifest(planted)
        await writeFile(file, variant === 'wrong tag' ? JSON.stringify({ ...JSON.parse(new TextDecoder().decode(bytes)), tag: genuineTag }) : bytes)
        plantedFiles.push(file)
        // The encrypted ones are refused where they are acted on: they do not authenticate.
        if (variant !== 'plain') await assert.rejects(g.restoreBackup(id, { name: 'x' }), { code: 'DECRYPTION_FAILED' }, variant)
      }

      clock.time += HOUR
      await stamp(g, 'sec', 1, 2)
      const second = await g.createBackup('sec', { strategy: 'incremental' })
      // The operator finds and removes the planted files.
      for (const file of plantedFiles) await rm(file)
      // The clock is stepped back (NTP, a resumed VM): the next backups are dated before `second`.
      clock.time -= 2 * HOUR
      await stamp(g, 'sec', 2, 3)
      const third = await g.createBackup('sec', { strategy: 'incremental' })
      clock.time += 60_000
      await stamp(g, 'sec', 3, 4)
      const fourth = await g.createBackup('sec', { strategy: 'incremental' })

      const numbers = (backups: Backup[]): Array<[string, number | null]> => backups.map((b) => [b.id, b.sequence])
      assert.deepEqual(numbers([first, second, third, fourth]), [[first.id, 1], [second.id, 2], [third.id, 3], [fourth.id, 4]],
        'numbered in the order taken (the unauthenticated manifest counts for nothing)')
      assert.deepEqual((await g.listBackups('sec')).map((b) => b.id), [first.id, second.id, third.id, fourth.id], 'listed in the order taken, not by date')
      assert.equal(fourth.baseId, third.id, 'an incremental builds on the backup taken last')
      assert.equal(third.baseId, second.id, 'an incremental builds on the backup taken last')
      // (Each restores to its own point in time, whatever the numbers: the data is never at stake.)
      const restored = await g.restoreBackup(fourth.id, { name: 'back' })
      assert.ok(Buffer.from(await g.read(restored.name, 0, BLOCKS * BS)).equals(Buffer.from(await g.read('sec', 0, BLOCKS * BS))))
    } finally {
      await g.close()
    }
  })

  it('manifests sealed under a backup key that rotateVolumeKey retired still count: numbering goes on across a rotation', async () => {
    const target = place()
    const clock = new SteppedClock(Date.UTC(2026, 2, 10, 12))
    const g = await GalleonFS.open({ inMemory: true, backupTarget: target, clock })
    try {
      await g.createVolume({ name: 'sec', sizeBytes: BLOCKS * BS, storageClass: 'encrypted-storage', replicas: 1 } as never)
      await stamp(g, 'sec', 0, 1)
      const before = [await g.createBackup('sec', { strategy: 'full' })]
      clock.time += HOUR
      before.push(await g.createBackup('sec', { strategy: 'incremental' }))
      await g.rotateVolumeKey('sec', { wait: true })
      // Stepped back: dates say the new backup is the oldest.
      clock.time -= 3 * HOUR
      await stamp(g, 'sec', 1, 2)
      const after = await g.createBackup('sec', { strategy: 'incremental' })
      assert.equal(after.strategy, 'full', 'a new backup key: no base sealed under the old one')
      assert.deepEqual([...before, after].map((b) => b.sequence), [1, 2, 3])
      assert.deepEqual((await g.listBackups('sec')).map((b) => b.id), [...before, after].map((b) => b.id))
    } finally {
      await g.close()
    }
  })
})
