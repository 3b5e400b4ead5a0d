// Review r50: what each way into a volume (the API, VolumeFile, a FUSE mount's data with its
// read-ahead and write-behind, the NBD export) reads and writes while the volume is changed another
// way. Real child processes (python3, dd, cmp, nbd clients) do the mount's and the export's I/O:
// the process serving a FUSE mount must never wait for it synchronously.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, type BlockStore } from '../src/index.js'
import { fuseMissing } from './support/fuse-available.js'
import { pythonSession } from './support/python-session.js'

const skip = fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP r50 FUSE tests: ${skip}\n`)

/** A file store whose batches wait while the test holds them (hold() returns the release). */
async function heldStore (dir: string): Promise<{ store: BlockStore, hold: () => () => void }> {
  const { FileBlockStore } = await import('../backends/file/index.js')
  const inner = new FileBlockStore({ location: join(dir, 'blocks') })
  let gate: Promise<void> | undefined
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (...args: Parameters<typeof inner.batch>) => {
          while (gate !== undefined) await gate
          return await target.batch(...args)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  const hold = (): () => void => {
    let release!: () => void
    gate = new Promise((resolve) => { release = resolve })
    return () => { gate = undefined; release() }
  }
  return { store, hold }
}

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'r50-paths-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('r50: FUSE write-behind against writes made another way', { skip }, () => {
  it('an API write made after the mount acknowledged overlapping writes is not overwritten by them when they land', async () => {
    const storage = join(root, 'order')
    const { store, hold } = await heldStore(storage)
    const g = await GalleonFS.open({ storagePath: storage, blockStore: store, mount: 'fuse' })
    const mnt = join(root, 'order-m')
    try {
      await g.mounts.mountVolume(await g.createVolume({ name: 'v', sizeBytes: '1M' }), mnt)
      // The store holds every batch: the mount's writes stay acknowledged but not stored.
      const release = hold()
      const child = pythonSession(`
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b'\\xaa' * 4096, 0)
os.pwrite(fd, b'\\xbb' * 4096, 0)
print('acknowledged', flush=True)
sys.stdin.readline()
os.close(fd)
print('closed', flush=True)
`, join(mnt, 'data'))
      await child.next(1)
      // Both writes were acknowledged to the writer; the API write comes after them.
      const later = g.write('v', 0, new Uint8Array(4096).fill(0xcc))
      release()
      await later
      child.send()
      await child.next(2)
      assert.equal(Buffer.from(await g.read('v', 0, 4096)).toString('hex'), 'cc'.repeat(4096), 'the last write made (through the API) is what the volume holds')
    } finally {
      await g.close()
    }
  })
})
