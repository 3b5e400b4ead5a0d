// Scrub of a file-store volume while writes go on (a rotation's re-seal, a workload): the store's
// check of its files must not take the bytes written after it looked at a segment file for bytes
// cut off it. Seen in a CI run of test/crash/encryption-crash (a re-seal resumed at open): scrub
// reported 'segment file ... is 16803740 bytes, shorter than the 17087436 bytes of records the
// store wrote to it', and the blocks past it as CORRUPTION, on a store nothing had touched.

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'

const BLOCK = 4096
const BLOCKS = 1024

it('scrub finds nothing wrong with a file store that is being written meanwhile', async () => {
  const storagePath = await mkdtemp(join(tmpdir(), 'galleon-scrub-writing-'))
  const g = await GalleonFS.open({ storagePath, backend: 'file', backendOptions: { segmentBytes: 4 * 1024 * 1024 } })
  try {
    await g.createVolume({ name: 'v', sizeBytes: BLOCKS * BLOCK })
    await g.createVolume({ name: 'busy', sizeBytes: BLOCKS * BLOCK })
    await g.write('v', 0, new Uint8Array(BLOCKS * BLOCK).fill(7), WriteConcern.WriteDurable)
    let writing = true
    let written = 0
    const writer = (async () => {
      const data = new Uint8Array(64 * 1024).fill(9)
      for (let i = 0; writing; i++) {
        // Several writes in flight, so the store's writes land while scrub awaits its file checks.
        await Promise.all([0, 1, 2, 3].map(async (k) => { await g.write('busy', ((i * 4 + k) % (BLOCKS / 16)) * 64 * 1024, data, WriteConcern.WriteAcknowledged) }))
        written += 4
      }
    })()
    try {
      for (let round = 0; round < 30; round++) {
        const report = await g.scrub('v')
        assert.deepEqual(report.storeProblems, [], `scrub round ${round}: the store's files`)
        assert.deepEqual(report.badBlocks, [], `scrub round ${round}: the volume's blocks`)
        const busy = await g.scrub('busy')
        assert.deepEqual(busy.storeProblems, [], `scrub round ${round} of the volume being written: the store's files`)
        assert.deepEqual(busy.badBlocks, [], `scrub round ${round} of the volume being written: its blocks`)
      }
    } finally {
      writing = false
      await writer
    }
    assert.ok(written > 0, 'the writes went on during the scrubs')
  } finally {
    await g.close()
    await rm(storagePath, { recursive: true, force: true })
  }
})
