// Review r74: leaveCluster hands off every replicated volume and deletes the node's copies, as a
// move of one copy (migrateVolume with { node }) does; since d15 a move is refused while a mount,
// a file or an NBD client holds the volume on the node it leaves, and a leave must be too, or
// what holds it fails at its next I/O with an error about a deletion no one asked for.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { BS, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { replicatedVolume } from './support/control-call-cluster.js'

const kit = diskCluster('galleon-r74-leave-')

/** The error a call rejects with, as `CODE: message`, or 'resolved'. */
async function outcome (call: Promise<unknown>): Promise<string> {
  return await call.then(() => 'resolved', (err: Error & { code?: string }) => `${err.code ?? ''}: ${err.message}`)
}

describe('leaveCluster and what holds a replicated volume on the leaving node', () => {
  it('a writable file open on the leaving node\'s copy refuses the leave (BUSY naming it) before anything is handed off; closed, the leave goes on', async () => {
    const { nodes } = await kit.cluster(3)
    const [n1, n2] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      await replicatedVolume(nodes, 2)
      const file = await n1.g.mounts.openVolumeFile('v')
      const refused = await outcome(n1.g.leaveCluster())
      assert.match(refused, /^BUSY: .*volume v: 1 writer\(s\)/, refused)
      assert.ok(n1.g.cluster !== undefined, 'n1 is still in the cluster')
      assert.deepEqual((await n1.g.listVolumes()).map((v) => v.name), ['v'], 'n1 still holds its copy')
      await file.pwrite(block(7), 0)
      const buffer = new Uint8Array(BS)
      assert.equal(await file.pread(buffer, 0), BS)
      assert.deepEqual(buffer, block(7), 'the file still works')
      await file.close()
      await n1.g.leaveCluster()
      assert.deepEqual(await n2.g.readBlock('v', 0), block(7))
    } finally {
      await Promise.allSettled(nodes.map(async (n) => await n.g.close()))
    }
  })

  it('a leave that fails (no node can take the copy) leaves new files and mounts of the volume allowed on the node', async () => {
    const { nodes } = await kit.cluster(2)
    const [n1] = nodes as [DiskNode, DiskNode]
    try {
      await replicatedVolume(nodes, 2)
      const refused = await outcome(n1.g.leaveCluster())
      assert.match(refused, /^BUSY: /, refused)
      const file = await n1.g.mounts.openVolumeFile('v')
      await file.pwrite(block(4), 0)
      await file.close()
      assert.deepEqual(await n1.g.readBlock('v', 0), block(4))
    } finally {
      await Promise.allSettled(nodes.map(async (n) => await n.g.close()))
    }
  })
})
