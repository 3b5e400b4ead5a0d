// README "Metrics" and "Integrity and crash recovery", checked through the facade on the file
// backend: a damaged block is an error counted as a failed read, never data; counters restart at open.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'

const BLOCK = 4096
const blocks = new Map<number, Uint8Array>()
/** A random block per seed, so that a probe of it occurs nowhere else in the store. */
const pattern = (seed: number): Uint8Array => { let b = blocks.get(seed); if (b === undefined) { b = new Uint8Array(randomBytes(BLOCK)); blocks.set(seed, b) } return b }

async function flipPayloadByte (storagePath: string, block: Uint8Array, at: number): Promise<number> {
  const probe = Buffer.from(block.subarray(100, 164))
  const dir = join(storagePath, 'blocks')
  let flipped = 0
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.log'))) {
    const bytes = await readFile(join(dir, name))
    for (let found = bytes.indexOf(probe); found >= 0; found = bytes.indexOf(probe, found + 1)) {
      const handle = await open(join(dir, name), 'r+')
      try {
        const one = new Uint8Array(1)
        await handle.read(one, 0, 1, found - 100 + at)
        one[0] = one[0]! ^ 0x40
        await handle.write(one, 0, 1, found - 100 + at)
        flipped++
      } finally {
        await handle.close()
      }
    }
  }
  return flipped
}

const sample = (text: string, family: string, name: string, extra = ''): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${family}{`) && l.includes(`volume_name="${name}"`) && l.includes(extra))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
}

describe('README Metrics and Integrity', () => {
  it('a damaged block fails with CHECKSUM_MISMATCH and events, counts as a failed read without bytes; scrub reports it once; refused calls count nowhere; counters restart at open', async () => {
    const storagePath = await mkdtemp(join(tmpdir(), 'h51-metrics-'))
    try {
      let g = await GalleonFS.open({ storagePath })
      await g.createVolume({ name: 'v', sizeBytes: 16 * BLOCK })
      await g.writeBlock('v', 1, pattern(1), WriteConcern.WriteDurable)
      await g.writeBlock('v', 2, pattern(2), WriteConcern.WriteDurable)
      assert.deepEqual(await g.readBlock('v', 1), pattern(1))
      assert.equal((await g.getVolumeMetrics('v')).writeOps, 2)
      await g.close()

      g = await GalleonFS.open({ storagePath })
      // Damage while open (damage found at open in a cleanly closed segment is CORRUPTION instead).
      assert.equal(await flipPayloadByte(storagePath, pattern(2), 2000), 1)
      const mismatches: number[] = []
      const ioErrors: string[] = []
      const scrubs: unknown[] = []
      g.on('checksum:mismatch', (e) => { mismatches.push(e.blockIndex) })
      g.on('io:error', (e) => { ioErrors.push(e.code) })
      g.on('scrub:completed', (e) => { scrubs.push(e) })
      let m = await g.getVolumeMetrics('v')
      assert.deepEqual([m.readOps, m.writeOps, m.trimOps, m.readBytes, m.writeBytes, m.errors, m.checksumErrors], [0, 0, 0, 0, 0, 0, 0], 'counters start from zero at every open')
      assert.ok(m.windowSeconds > 0 && m.windowSeconds <= 10, 'a 10 s window, shorter just after open')

      // Refused before it starts: counts nowhere.
      await assert.rejects(g.readBlock('v', 16), { code: 'OUT_OF_RANGE' })
      await assert.rejects(g.read('v', 15 * BLOCK, 2 * BLOCK), { code: 'OUT_OF_RANGE' })
      await assert.rejects(g.writeBlock('v', 0, new Uint8Array(BLOCK + 1)), { code: 'INVALID_ARGUMENT' })
      m = await g.getVolumeMetrics('v')
      assert.deepEqual([m.readOps, m.writeOps, m.errors], [0, 0, 0])

      assert.deepEqual(await g.readBlock('v', 1), pattern(1))
      await assert.rejects(g.readBlock('v', 2), { code: 'CHECKSUM_MISMATCH' })
      assert.deepEqual(mismatches, [2])
      assert.ok(ioErrors.includes('CHECKSUM_MISMATCH'))
      m = await g.getVolumeMetrics('v')
      assert.equal(m.readOps, 2, 'the failed read counts as an operation')
      assert.equal(m.readBytes, BLOCK, 'only the successful read counts its bytes')
      assert.equal(m.errors, 1)
      assert.equal(m.checksumErrors, 1)
      const text = await g.metricsText()
      assert.equal(sample(text, 'galleonfs_volume_read_ops_total', 'v'), 2)
      assert.equal(sample(text, 'galleonfs_volume_read_bytes_total', 'v'), BLOCK)
      assert.equal(sample(text, 'galleonfs_volume_errors_total', 'v'), 1)
      assert.equal(sample(text, 'galleonfs_volume_checksum_errors_total', 'v'), 1)
      assert.equal(sample(text, 'galleonfs_volume_used_bytes', 'v'), await g.getVolumeUsage('v'))
      assert.equal(sample(text, 'galleonfs_volume_size_bytes', 'v'), 16 * BLOCK)
      for (const direction of ['read', 'write', 'trim']) assert.notEqual(sample(text, 'galleonfs_volume_iops', 'v', `direction="${direction}"`), undefined, direction)
      assert.equal(sample(text, 'galleonfs_volume_throughput_bytes_per_second', 'v', 'direction="trim"'), undefined, 'no trim throughput')
      for (const family of ['galleonfs_store_blocks', 'galleonfs_store_live_bytes', 'galleonfs_store_stored_bytes', 'galleonfs_store_syncs_total']) {
        assert.match(text, new RegExp(`^${family}\\{backend="file"\\} \\d+`, 'm'), family)
      }
      assert.match(text, /^# TYPE galleonfs_volume_latency_seconds summary$/m)
      assert.match(text, /^galleonfs_volume_latency_seconds\{[^}]*quantile="0\.99"[^}]*\} /m)
      assert.match(text, /^galleonfs_volumes 1$/m)

      mismatches.length = 0
      const report = await g.scrub('v')
      assert.equal(report.blocksChecked, 2)
      assert.deepEqual(report.badBlocks.map((b) => [b.index, b.code]), [[2, 'CHECKSUM_MISMATCH']])
      assert.deepEqual(mismatches, [2], 'each damaged block reported once')
      assert.equal(scrubs.length, 1)
      // The undamaged block still reads; writing the damaged one over repairs it.
      await g.writeBlock('v', 2, pattern(9))
      assert.deepEqual(await g.readBlock('v', 2), pattern(9))
      await g.close()
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })

  it('ephemeral volumes are removed at open; persistent ones kept', async () => {
    const storagePath = await mkdtemp(join(tmpdir(), 'h51-ephemeral-'))
    try {
      let g = await GalleonFS.open({ storagePath })
      await g.createVolume({ name: 'scratch', type: 'ephemeral', sizeBytes: '1M' })
      await g.createVolume({ name: 'keep', sizeBytes: '1M' })
      await g.writeBlock('scratch', 0, pattern(3), WriteConcern.WriteDurable)
      await g.writeBlock('keep', 0, pattern(4), WriteConcern.WriteDurable)
      await g.close()
      g = await GalleonFS.open({ storagePath })
      assert.deepEqual((await g.listVolumes()).map((v) => v.name), ['keep'])
      await assert.rejects(g.getVolume('scratch'), { code: 'VOLUME_NOT_FOUND' })
      assert.deepEqual(await g.readBlock('keep', 0), pattern(4))
      assert.equal((await g.getStorageStats()).blocks, 1, 'the ephemeral volume\'s blocks are gone from the store')
      await g.close()
    } finally {
      await rm(storagePath, { recursive: true, force: true })
    }
  })
})
