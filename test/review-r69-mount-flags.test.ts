// Review r69: mountVolume's booleans `readOnly`, `ro` and `rw` each say the mount's mode, false as
// much as true. `{ rw: false }` was ignored, so the caller who said "not read-write" got a
// read-write mount (the writer's place of a ReadWriteOnce volume with it), and `{ ro: false }`
// did not override a storage class's `ro` as `{ readOnly: false }` does.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { AccessMode, GalleonFS } from '../src/index.js'
import { rejectsWithCode } from './support/assertions.js'

describe('review r69: mount mode booleans', () => {
  it('{ rw: false } mounts read-only, { ro: false } read-write; contradicting booleans are refused', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const modeOf = (path: string): string => {
        const mount = g.mounts.listMounts().find((m) => m.path === path)
        return mount === undefined ? 'none' : mount.readOnly ? 'ro' : 'rw'
      }
      await g.mounts.mountVolume('v', '/r69/a', { rw: false })
      assert.equal(modeOf('/r69/a'), 'ro', '{ rw: false } is not read-write')
      // It did not take the writer's place: a read-write mount is still allowed.
      await g.mounts.mountVolume('v', '/r69/b')
      assert.equal(modeOf('/r69/b'), 'rw')
      await g.mounts.unmountVolume('/r69/b')
      await g.mounts.mountVolume('v', '/r69/c', { ro: false })
      assert.equal(modeOf('/r69/c'), 'rw', '{ ro: false } is read-write')
      await g.mounts.unmountVolume('/r69/c')
      // The booleans of the call win over its option words, as readOnly does.
      await g.mounts.mountVolume('v', '/r69/d', { ro: false, options: ['ro'] })
      assert.equal(modeOf('/r69/d'), 'rw')
      await g.mounts.unmountVolume('/r69/d')
      await g.mounts.mountVolume('v', '/r69/e', { rw: false, options: ['rw'] })
      assert.equal(modeOf('/r69/e'), 'ro')
      for (const contradiction of [{ rw: false, readOnly: false }, { ro: false, rw: false }, { ro: true, rw: true }, { ro: false, readOnly: true }, { rw: true, readOnly: true }]) {
        await assert.rejects(g.mounts.mountVolume('v', '/r69/f', contradiction), rejectsWithCode('INVALID_ARGUMENT', /either read-only or read-write/), JSON.stringify(contradiction))
      }
      assert.equal(modeOf('/r69/f'), 'none')
      // Agreeing booleans are fine.
      await g.mounts.mountVolume('v', '/r69/g', { ro: true, rw: false, readOnly: true })
      assert.equal(modeOf('/r69/g'), 'ro')
      // A snapshot is read-only: { ro: false } asks for a read-write mount of it, refused.
      await g.createSnapshot('v', 's')
      await assert.rejects(g.mounts.mountVolume({ volume: 'v', snapshot: 's' }, '/r69/h', { ro: false }), rejectsWithCode('READ_ONLY'))
      await g.mounts.mountVolume({ volume: 'v', snapshot: 's' }, '/r69/h', { rw: false })
      assert.equal(modeOf('/r69/h'), 'ro')
    } finally {
      await g.close()
    }
  })

  it('{ ro: false } overrides a storage class that mounts read-only, as { readOnly: false } does', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createStorageClass({ name: 'ro-class', mountOptions: ['ro'] })
      await g.createVolume({ name: 'v', sizeBytes: '1M', storageClass: 'ro-class', accessModes: [AccessMode.ReadWriteOnce] })
      await g.mounts.mountVolume('v', '/r69/class-default')
      assert.equal(g.mounts.listMounts()[0]?.readOnly, true, 'the class mounts it read-only by default')
      await g.mounts.unmountVolume('/r69/class-default')
      await g.mounts.mountVolume('v', '/r69/class-ro-false', { ro: false })
      assert.equal(g.mounts.listMounts()[0]?.readOnly, false, '{ ro: false } mounts it read-write')
    } finally {
      await g.close()
    }
  })
})
