// Review r57: a backup deleted by another instance writing the same target (a second process, an
// administration host) leaves its snapshot on the source volume, which that instance cannot reach.
// No manifest names it any more, so no backup freed it: it stayed for good, pinning the volume's
// old block versions. The next backup of the volume to that target deletes it; snapshots of the
// volume's backups on another target stay.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'

const BS = 4096

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r57-deleted-elsewhere-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

describe('review r57: a backup deleted by another instance', () => {
  it('its snapshot is deleted by the next backup of the volume to that target; another target\'s stay; every listed backup restores', async () => {
    const [shared, other] = [place(), place()]
    const a = await GalleonFS.open({ storagePath: place(), backupTarget: shared })
    const b = await GalleonFS.open({ storagePath: place(), backupTarget: shared })
    try {
      await a.createVolume({ name: 'v', sizeBytes: 64 * BS })
      const images = new Map<string, Buffer>()
      const backUp = async (value: number, strategy: 'full' | 'incremental', target?: string): Promise<string> => {
        await a.write('v', value * BS, new Uint8Array(BS).fill(value))
        const backup = await a.createBackup('v', { strategy, ...(target === undefined ? {} : { target }) })
        images.set(backup.id, Buffer.from(await a.read('v', 0, 64 * BS)))
        return backup.id
      }
      await backUp(1, 'full')
      const elsewhere = await backUp(2, 'full', other)
      const doomed = await backUp(3, 'incremental')
      const names = async (): Promise<string[]> => (await a.listSnapshots('v')).map((s) => s.name).filter((name) => name.startsWith('backup-'))
      assert.ok((await names()).includes(`backup-${doomed}`))

      await b.deleteBackup(doomed)
      await backUp(4, 'incremental')
      await backUp(5, 'incremental')

      const listed = new Set([...await a.listBackups('v'), ...await a.listBackups('v', { target: other })].map((backup) => backup.id))
      const unlisted = (await names()).filter((name) => !listed.has(name.slice('backup-'.length)))
      assert.deepEqual(unlisted, [], 'no snapshot of a backup gone from its target is left')
      assert.ok((await names()).includes(`backup-${elsewhere}`), 'the snapshot of the backup on the other target stays (its newest, a base)')
      for (const id of listed) {
        const restored = await a.restoreBackup(id, { name: `r-${id.slice(0, 8)}`, ...(id === elsewhere ? { target: other } : {}) })
        assert.ok(Buffer.from(await a.read(restored.id, 0, 64 * BS)).equals(images.get(id) as Buffer), `backup ${id} restores as its point in time`)
      }
    } finally {
      await a.close()
      await b.close()
    }
  })

  it('the record survives a reopen: a backup deleted while the source instance was closed is cleaned up by its next backup', async () => {
    const storagePath = place()
    const shared = place()
    let a = await GalleonFS.open({ storagePath, backupTarget: shared })
    let doomed: string
    try {
      await a.createVolume({ name: 'v', sizeBytes: 64 * BS })
      await a.write('v', 0, new Uint8Array(BS).fill(1))
      await a.createBackup('v', { strategy: 'full' })
      await a.write('v', BS, new Uint8Array(BS).fill(2))
      doomed = (await a.createBackup('v', { strategy: 'incremental' })).id
    } finally { await a.close() }
    const b = await GalleonFS.open({ storagePath: place(), backupTarget: shared })
    try { await b.deleteBackup(doomed) } finally { await b.close() }
    a = await GalleonFS.open({ storagePath, backupTarget: shared })
    try {
      await a.createBackup('v', { strategy: 'incremental' })
      assert.equal((await a.listSnapshots('v')).some((s) => s.name === `backup-${doomed}`), false)
    } finally { await a.close() }
  })
})
