// What a FUSE mount leaves in memory once unmounted (review r78, leak hunt). fuse-native 2.2.6
// never deletes its native references to a mount's Fuse object, so that object stays for good;
// the mount's operations on it must not keep the volume's mount state, nor (through the volume's
// data accessors) the GalleonFS instance after close(). Counted in heap snapshots (which collect
// garbage first): objects, not bytes. Skipped, visibly, without /dev/fuse or fusermount.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'
import { liveObjects } from './support/heap-objects.js'

const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP FUSE unmount memory tests: ${skip}\n`)

let root = ''
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r78-fuse-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** Mounts `volume` at `mountPoint`, writes and reads through the kernel, and unmounts. */
async function mountCycle (g: GalleonFS, volume: string, mountPoint: string, byte: number): Promise<void> {
  await g.mounts.mountVolume(volume, mountPoint)
  const file = await open(join(mountPoint, 'data'), 'r+')
  try {
    const block = Buffer.alloc(65_536, byte)
    await file.write(block, 0, block.length, 0)
    await file.sync()
    const back = Buffer.alloc(65_536)
    await file.read(back, 0, back.length, 0)
    assert.ok(back.equals(block))
  } finally {
    await file.close()
  }
  await g.mounts.unmountVolume(mountPoint)
}

describe('FUSE unmount: memory let go', { skip }, () => {
  it('12 mount/write/unmount cycles leave no mount state (write-behind, read-ahead) alive', { timeout: 60_000 }, async () => {
    const g = await GalleonFS.open({ storagePath: join(root, 'cycles'), mount: 'fuse' })
    try {
      await g.createVolume({ name: 'plain', sizeBytes: '4M' })
      await g.createVolume({ name: 'sealed', sizeBytes: '4M', storageClass: 'encrypted-storage', replicas: 1 })
      for (let i = 0; i < 12; i++) await mountCycle(g, i % 3 === 0 ? 'sealed' : 'plain', join(root, i % 2 === 0 ? 'reused' : `m-${i}`), i)
      const live = await liveObjects(['WriteBehind', 'ReadAhead'])
      // Before the fix: 12 of each (one per mount made), for as long as the process lives.
      assert.deepEqual(Object.fromEntries(live), { WriteBehind: 0, ReadAhead: 0 }, 'mount state alive after every mount was unmounted')
    } finally {
      await g.close()
    }
  })

  it('instances closed after FUSE mounts are collected: their engines do not pile up', { timeout: 60_000 }, async () => {
    const engines = async (): Promise<number> => (await liveObjects(['BlockEngine'])).get('BlockEngine') ?? 0
    const before = await engines()
    for (let i = 0; i < 4; i++) {
      const g = await GalleonFS.open({ storagePath: join(root, `closed-${i}`), mount: 'fuse' })
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await mountCycle(g, 'v', join(root, `closed-mount-${i}`), i)
      await g.close()
    }
    // The last one may still be referenced from the loop's own frames; four must not all stay
    // (before the fix: every one did, held by its mount's Fuse object).
    const left = (await engines()) - before
    assert.ok(left <= 1, `${left} of 4 closed instances' block engines still in memory`)
  })
})
