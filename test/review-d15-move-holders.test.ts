// Review d15: a move of a volume to another node (migrateVolume with { node }) deletes the copy on
// the node it leaves, so it is refused while anything holds the volume there (a mount, a file or an
// NBD client opened straight on it; before, only a mount of a 1-copy volume refused it, and the
// others failed after the move with an error saying the volume was deleted), and nothing new
// mounts or opens it there while it moves.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { NbdServer } from '../backends/nbd/index.js'
import { BS, block, closeAll, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { replicatedVolume } from './support/control-call-cluster.js'
import { CMD_READ, goClient } from './support/nbd-client.js'
import { until } from './support/wait.js'

const kit = diskCluster('galleon-d15-move-')

/** The error a call rejects with, as `CODE: message`, or 'resolved'. */
async function outcome (call: Promise<unknown>): Promise<string> {
  return await call.then(() => 'resolved', (err: Error & { code?: string }) => `${err.code ?? ''}: ${err.message}`)
}


describe('migrateVolume with { node } and what holds the volume on the node giving its copy up', () => {
  it('a writable file open on a 1-copy volume refuses its move (BUSY naming it); the file goes on, the volume stays; closed, the move goes on', async () => {
    const { nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    try {
      await n1.g.createVolume({ name: 'm', sizeBytes: 16 * BS })
      await n1.g.writeBlock('m', 0, block(1))
      const file = await n1.g.mounts.openVolumeFile('m')
      const refused = await outcome(n1.g.migrateVolume('m', { node: 'n2' }))
      assert.match(refused, /^BUSY: volume m has 1 writer\(s\) here: writable files open on it \(openVolumeFile\) or NBD clients connected read-write; close or disconnect them before moving it to node n2/, refused)
      await file.pwrite(block(5), 0)
      assert.deepEqual(await n1.g.readBlock('m', 0), block(5))
      assert.equal((await n1.g.getVolume('m')).replicas, 1)
      await assert.rejects(n2.g.getVolume('m'), { code: 'VOLUME_NOT_FOUND' })
      await file.close()
      await n1.g.migrateVolume('m', { node: 'n2' })
      assert.deepEqual(await n2.g.readBlock('m', 0), block(5))
    } finally {
      await closeAll(nodes)
    }
  })

  it('an NBD client of a 1-copy volume on the moving node refuses the move', async () => {
    const { nodes } = await kit.cluster(2)
    const [n1] = nodes as [DiskNode, DiskNode]
    const server = await NbdServer.listen(n1.g, { host: '127.0.0.1', port: 0 })
    try {
      await n1.g.createVolume({ name: 'm', sizeBytes: 16 * BS })
      const client = await goClient(server.port, 'm')
      const refused = await outcome(n1.g.migrateVolume('m', { node: 'n2' }))
      assert.match(refused, /^BUSY: volume m has 1 writer\(s\) here/, refused)
      client.request(CMD_READ, 6, 0, BS)
      assert.equal((await client.chunk()).error, 0, 'the client goes on reading')
      client.socket.destroy()
    } finally {
      await server.close()
      await closeAll(nodes)
    }
  })

  it('while a volume moves away, nothing new mounts or opens it on the node it leaves (BUSY naming the target); once moved, it lives on the target', async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    const dir = await kit.tempDir('galleon-d15-mnt-')
    try {
      await n1.g.createVolume({ name: 'm', sizeBytes: 16 * BS })
      await n1.g.writeBlock('m', 0, block(4))
      // The new copy's fill cannot start: the move stays under way until the drops stop.
      network.drop((m) => m.kind === 'repl:resync-begin' && m.to === 'n2')
      const moving = n1.g.migrateVolume('m', { node: 'n2' })
      moving.catch(() => {}) // awaited below; a failed assertion before must not turn into an unhandled rejection
      await until('the move has placed its copy', async () => (await n1.g.replicationStatus('m')).nodes.includes('n2'), 20_000)
      const opened = await outcome(n1.g.mounts.openVolumeFile('m', { readOnly: true }))
      assert.match(opened, /^BUSY: volume m is moving to node n2; mount or open it there once the move has finished/, opened)
      const mounted = await outcome(n1.g.mounts.mountVolume('m', dir))
      assert.match(mounted, /^BUSY: volume m is moving to node n2/, mounted)
      network.drop(0)
      await moving
      assert.deepEqual(await n2.g.readBlock('m', 0), block(4))
      await assert.rejects(n1.g.getVolume('m'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      network.drop(0)
      await closeAll(nodes)
    }
  })

  it('a mount and a read-only file of a replicated volume on the node giving its copy up refuse the move (before, the move went on and dropped them)', async () => {
    const { nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    const dir = await kit.tempDir('galleon-d15-mnt-')
    try {
      await n3.g.createStorageClass({ name: 'rep', parameters: { replication: '2' } })
      await replicatedVolume([n1, n2], 2)
      // The second copy is on n2 or n3 (placement breaks the tie by free space): that node gives it
      // up, to the third.
      const holderId = (await n1.g.replicationStatus('v')).nodes.find((id) => id !== 'n1') as string
      const holder = holderId === 'n2' ? n2 : n3
      const target = holderId === 'n2' ? 'n3' : 'n2'
      const mountId = await holder.g.mounts.mountVolume('v', dir, { readOnly: true })
      const mounted = await outcome(holder.g.migrateVolume('v', { node: target }))
      assert.match(mounted, /^BUSY: volume v is mounted here \(/, mounted)
      await holder.g.mounts.unmountVolume(mountId)
      const file = await holder.g.mounts.openVolumeFile('v', { readOnly: true })
      const reading = await outcome(holder.g.migrateVolume('v', { node: target }))
      assert.match(reading, /^BUSY: volume v has 1 reader\(s\) here/, reading)
      assert.deepEqual([...(await n1.g.replicationStatus('v')).nodes].sort(), ['n1', holderId])
      await file.close()
      await holder.g.migrateVolume('v', { node: target })
      await until(`${target} holds the copy`, async () => (await n1.g.replicationStatus('v')).nodes.includes(target), 20_000)
    } finally {
      await closeAll(nodes)
    }
  })
})
