// Conformance suite of the BackupTarget driver (src/drivers.ts): every backend runs it unchanged
// (backup-target.test.ts). A third-party target is done when it passes.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { BackupTarget } from '../../src/drivers.js'
import { bytesOf } from './fixtures.js'

export interface BackupTargetSuiteOptions {
  readonly name: string
  /** A target at `location` (a fresh directory per test; the same location must find the same objects). */
  readonly factory: (location: string) => BackupTarget
}

const idOf = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex')

async function collect (items: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = []
  for await (const item of items) out.push(item)
  return out.sort()
}

export function backupTargetSuite (options: BackupTargetSuiteOptions): void {
  describe(`BackupTarget conformance: ${options.name}`, () => {
    let root: string
    let n = 0
    before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-target-')) })
    after(async () => { await rm(root, { recursive: true, force: true }) })
    const fresh = async (): Promise<{ target: BackupTarget, location: string }> => {
      const location = join(root, String(n++))
      const target = options.factory(location)
      await target.open()
      return { target, location }
    }

    it('stores, reads, lists and deletes chunks', async () => {
      const { target } = await fresh()
      const a = bytesOf(5000, 1)
      const b = bytesOf(1, 2)
      assert.equal(await target.hasChunk(idOf(a)), false)
      assert.equal(await target.getChunk(idOf(a)), undefined)
      await target.putChunk(idOf(a), a)
      await target.putChunk(idOf(b), b)
      await target.putChunk(idOf(a), a)
      assert.equal(await target.hasChunk(idOf(a)), true)
      assert.deepEqual(await target.getChunk(idOf(a)), a)
      assert.deepEqual(await target.getChunk(idOf(b)), b)
      assert.deepEqual(await collect(target.listChunks()), [idOf(a), idOf(b)].sort())
      await target.deleteChunk(idOf(a))
      await target.deleteChunk(idOf(a))
      assert.equal(await target.hasChunk(idOf(a)), false)
      assert.deepEqual(await collect(target.listChunks()), [idOf(b)])
      await target.close()
    })

    it('stores, replaces, lists and deletes manifests', async () => {
      const { target } = await fresh()
      const one = randomUUID()
      const two = randomUUID()
      await target.putManifest(one, new TextEncoder().encode('first'))
      await target.putManifest(two, new TextEncoder().encode('second'))
      await target.putManifest(one, new TextEncoder().encode('first, replaced'))
      assert.equal(new TextDecoder().decode(await target.getManifest(one)), 'first, replaced')
      assert.deepEqual(await collect(target.listManifests()), [one, two].sort())
      await target.deleteManifest(two)
      assert.equal(await target.getManifest(two), undefined)
      assert.deepEqual(await collect(target.listManifests()), [one])
      await target.close()
    })

    it('keeps everything across close and a new instance on the same location', async () => {
      const { target, location } = await fresh()
      const data = bytesOf(70000, 3)
      const id = randomUUID()
      await target.putChunk(idOf(data), data)
      await target.putManifest(id, data)
      await target.close()
      const again = options.factory(location)
      await again.open()
      assert.deepEqual(await again.getChunk(idOf(data)), data)
      assert.deepEqual(await again.getManifest(id), data)
      await again.close()
    })

    it('refuses ids of the wrong shape (no path tricks) and data that is not bytes', async () => {
      const { target } = await fresh()
      for (const bad of ['', '../x', 'A'.repeat(64), 'g'.repeat(64), '0'.repeat(63), 42]) {
        await assert.rejects(target.putChunk(bad as string, Uint8Array.of(1)), { code: 'INVALID_ARGUMENT' })
        await assert.rejects(target.getChunk(bad as string), { code: 'INVALID_ARGUMENT' })
      }
      for (const bad of ['', '../../etc/passwd', 'not-a-uuid', randomUUID().toUpperCase()]) {
        await assert.rejects(target.putManifest(bad, Uint8Array.of(1)), { code: 'INVALID_ARGUMENT' })
        await assert.rejects(target.getManifest(bad), { code: 'INVALID_ARGUMENT' })
      }
      await assert.rejects(target.putChunk('0'.repeat(64), 'text' as never), { code: 'INVALID_ARGUMENT' })
      assert.deepEqual(await collect(target.listChunks()), [])
      assert.deepEqual(await collect(target.listManifests()), [])
      await target.close()
    })

    it('stores and replaces the index, when the target keeps one', async (t) => {
      const { target, location } = await fresh()
      if (target.putIndex === undefined || target.getIndex === undefined) {
        t.skip(`${options.name} keeps no index (optional)`)
        return
      }
      assert.equal(await target.getIndex(), undefined)
      await target.putIndex(new TextEncoder().encode('one'))
      await target.putIndex(new TextEncoder().encode('two'))
      assert.equal(new TextDecoder().decode(await target.getIndex()), 'two')
      await target.close()
      const again = options.factory(location)
      await again.open()
      assert.equal(new TextDecoder().decode(await again.getIndex?.()), 'two')
      await again.close()
    })

    it('touches chunks and tells when each was last put or touched, when the target does (for shared targets)', async (t) => {
      const { target } = await fresh()
      if (target.touchChunk === undefined || target.chunkTime === undefined) {
        t.skip(`${options.name} tells no chunk times (optional)`)
        return
      }
      const data = bytesOf(4096, 7)
      const id = idOf(data)
      assert.equal(await target.touchChunk(id), false)
      assert.equal(await target.chunkTime(id), undefined)
      const before = Date.now()
      await target.putChunk(id, data)
      const put = await target.chunkTime(id) as number
      assert.ok(put >= before - 2000 && put <= Date.now() + 2000, 'a wall-clock time in ms')
      await new Promise((resolve) => setTimeout(resolve, 30))
      assert.equal(await target.touchChunk(id), true)
      assert.ok((await target.chunkTime(id) as number) > put)
      assert.deepEqual(await target.getChunk(id), data, 'touching changes no byte')
      await target.close()
    })

    it('keeps leases, when the target does (for shared targets): put replaces, get reads the last put, list names each, delete removes', async (t) => {
      const { target, location } = await fresh()
      const methods = [target.putLease, target.getLease, target.deleteLease, target.listLeases]
      if (methods.every((method) => method === undefined)) {
        t.skip(`${options.name} keeps no leases (optional)`)
        return
      }
      assert.ok(methods.every((method) => typeof method === 'function'), 'all four lease methods, or none')
      const lease = target as Required<BackupTarget>
      const [a, b] = [randomUUID(), randomUUID()]
      assert.deepEqual(await collect(lease.listLeases()), [])
      assert.equal(await lease.getLease(a), undefined)
      await lease.putLease(a, bytesOf(64, 1))
      await lease.putLease(b, bytesOf(64, 2))
      await lease.putLease(a, bytesOf(80, 3))
      assert.deepEqual(await lease.getLease(a), bytesOf(80, 3), 'a put replaces')
      assert.deepEqual(await collect(lease.listLeases()), [a, b].sort())
      // Another object at the same location (as another process) sees them and can remove them.
      const other = options.factory(location) as Required<BackupTarget>
      await other.open()
      assert.deepEqual(await other.getLease(b), bytesOf(64, 2))
      await other.deleteLease(b)
      await other.deleteLease(b)
      assert.equal(await lease.getLease(b), undefined, 'deleted, and deleting again is fine')
      assert.deepEqual(await collect(lease.listLeases()), [a])
      await assert.rejects(lease.putLease('../escape', bytesOf(8, 1)), { code: 'INVALID_ARGUMENT' })
      await lease.deleteLease(a)
      await lease.putLease(b, bytesOf(8, 4))
      assert.deepEqual(await collect(lease.listLeases()), [b], 'a lease can be put again after the last one was deleted')
      await lease.deleteLease(b)
      assert.deepEqual(await collect(lease.listLeases()), [])
      assert.deepEqual([await collect(lease.listManifests()), await collect(lease.listChunks())], [[], []], 'leases are neither manifests nor chunks')
      await other.close()
      await target.close()
    })

    it('handles many concurrent puts of the same and different chunks', async () => {
      const { target } = await fresh()
      const chunks = Array.from({ length: 40 }, (_, i) => bytesOf(4096, 100 + (i % 20)))
      await Promise.all(chunks.map(async (data) => { await target.putChunk(idOf(data), data) }))
      const ids = [...new Set(chunks.map(idOf))].sort()
      assert.deepEqual(await collect(target.listChunks()), ids)
      for (const data of chunks) assert.deepEqual(await target.getChunk(idOf(data)), data)
      await target.close()
    })
  })
}
