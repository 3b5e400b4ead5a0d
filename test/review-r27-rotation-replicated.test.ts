// Review r27 of 70a70d0 (src/facade/key-rotation.ts): the waiting rotateVolumeKey of a local volume
// now says CANCELLED or VOLUME_NOT_FOUND when close() or a deletion cuts it short. A replicated
// volume's wait runs on its primary (awaitRotation, forwarded by the node that was called), which
// still answered IO_ERROR ("it resumes at that node's next open") when the volume's deletion stopped
// the re-encryption there, and looked the volume being deleted up with volumeBlocks (attaching its
// deleted storage again). In-process nodes on their own disks, a memory coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { allInSync, diskCluster, type DiskNode } from './support/disk-cluster.js'

const { cluster } = diskCluster('galleon-r27-rot-')
const MIB = 1024 * 1024

describe('review r27: a waiting rotation of a replicated volume cut short on its primary', () => {
  it('by its deletion rejects with VOLUME_NOT_FOUND on the node that waits (not IO_ERROR saying it resumes)', async () => {
    // Which answer the waiting node gets depends on where its forwarded wait is when the deletion
    // comes (about half the rounds reached the primary's IO_ERROR without the fix): 6 rounds.
    const { nodes } = await cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    for (const node of nodes) await node.g.createStorageClass({ name: 'secret-double', parameters: { replication: '2', encryption: 'true' } })
    const answers: string[] = []
    for (let round = 0; round < 6; round++) {
      const name = `vault-${round}`
      await n1.g.createVolume({ name, sizeBytes: 8 * MIB, storageClass: 'secret-double' })
      for (let at = 0; at < 8 * MIB; at += MIB) await n1.g.write(name, at, new Uint8Array(MIB).fill(7))
      await until('both copies are in sync', async () => await allInSync(n1.g, name, 2), 20_000)
      // Called on n2 (not the primary): the rotation runs on n1, and n2 waits for it there.
      const rotation = observed(n2.g.rotateVolumeKey(name, { wait: true }))
      await until('the primary re-encrypts', async () => (await n1.g.getVolumeEncryption(name)).rotation !== undefined, 20_000)
      await n1.g.deleteVolume(name, { force: true })
      const err = await rotation.then(() => undefined, (e: unknown) => e) as { code?: string, message?: string } | undefined
      answers.push(err === undefined ? 'resolved' : `${err.code ?? '?'}: ${err.message ?? ''}`)
    }
    // A rotation that finished before the deletion came resolves, rightly; any error must say the volume went.
    const wrong = answers.filter((answer) => answer !== 'resolved' && !answer.startsWith('VOLUME_NOT_FOUND:'))
    assert.deepEqual(wrong, [], `answers of the waiting rotateVolumeKey calls: ${JSON.stringify(answers, null, 1)}`)
    assert.ok(answers.some((answer) => answer !== 'resolved'), 'every rotation finished before its deletion: the race was not run')
  })
})
