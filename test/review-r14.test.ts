// Review r14 of this session's fixes: the bound on a replicated change's wait for its copies (which
// snapshot calls now share with flush and replicated writes), and buffer reuse through VolumeFile
// writes longer than one piece.

import { describe, it, mock } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { Primary } from '../src/replication/primary.js'
import type { ReplicationManager } from '../src/replication/manager.js'
import type { LocalSet } from '../src/replication/common.js'
import type { ReplicaSetRecord } from '../src/replication/records.js'
import type { VolumeBlocks } from '../src/engine/engine.js'

const MiB = 1024 * 1024

describe('review r14: a change waiting for its copies is bounded', () => {
  it('committed() rejects once COMMIT_WAIT_MS pass without the in-sync copy acknowledging (no link, no drop)', async () => {
    // The copy 'b' is listed in sync but never acknowledges, and nothing takes it out of the list
    // (the coordinator cannot be reached): the write, flush or snapshot call must fail at the
    // deadline (primary.ts: "Waiting writes fail after COMMIT_WAIT_MS"), not wait for ever.
    mock.timers.enable({ apis: ['setInterval', 'Date'] })
    // The deadline is measured on the monotonic clock (a wall-clock step must not move it, h65):
    // performance.now() moves with the mocked timers.
    const realNow = performance.now.bind(performance)
    let advanced = 0
    const now = mock.method(performance, 'now', () => realNow() + advanced)
    try {
      const manager = { nodeId: 'a', zone: 'z1', zoneOf: () => 'z1', host: { engine: { blockSize: 4096 } } } as unknown as ReplicationManager
      const record = { primary: 'a', epoch: 1, nodes: ['a', 'b'], inSync: ['a', 'b'], spec: { name: 'stuck' } } as unknown as ReplicaSetRecord
      const primary = new Primary(manager, { volumeId: 'v' } as unknown as LocalSet, record, {} as unknown as VolumeBlocks)
      let outcome: 'pending' | 'resolved' | { code?: string } = 'pending'
      primary.committed(1, WriteConcern.WriteReplicated).then(() => { outcome = 'resolved' }, (err: { code?: string }) => { outcome = err })
      for (let s = 0; s < 62; s++) {
        advanced += 1000
        mock.timers.tick(1000)
        await new Promise<void>((resolve) => { setImmediate(resolve) })
      }
      assert.notEqual(outcome, 'pending', 'the wait is still pending 62 s after it began: its deadline was never watched')
      assert.equal((outcome as { code?: string }).code, 'WRITE_CONCERN_UNSATISFIED')
    } finally {
      now.mock.restore()
      mock.timers.reset()
    }
  })
})

describe('review r14: VolumeFile writes and the caller\'s buffer', () => {
  it('pwrite longer than one 8 MiB piece stores the bytes of the call when the caller refills its buffer right after', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'file', sizeBytes: 32 * MiB })
      const file = await g.mounts.openVolumeFile('file')
      const buffer = new Uint8Array(12 * MiB).fill(0x11)
      const call = file.pwrite(buffer, 0)
      buffer.fill(0xee) // as g.write allows: the call has returned its promise
      assert.equal(await call, 12 * MiB)
      const stored = await g.read('file', 0, 12 * MiB)
      const wrong = stored.findIndex((byte) => byte !== 0x11)
      assert.equal(wrong, -1, `byte ${wrong} holds 0x${stored[wrong]?.toString(16)}, written after the call returned`)
      await file.close()
    } finally {
      await g.close()
    }
  })
})
