// Review d15: a replicated volume in use on another node of the cluster (mounted there, a file
// open on it there, an NBD client connected there) holds off a plain deleteVolume made on any node,
// as it does on its own node; a forced one deletes under every user, each of which gets a clear
// error. A node that does not answer the question holds the deletion off while it is a healthy
// member; one of an earlier release (which does not know the question) too. A move of a volume to
// another node (migrateVolume with { node }) is refused while anything holds it on the node that
// gives its copy up.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { BS, block, closeAll, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { replicatedVolume } from './support/control-call-cluster.js'
import { CMD_READ, goClient } from './support/nbd-client.js'
import { until } from './support/wait.js'

const kit = diskCluster('galleon-d15-')

/** The error a call rejects with, as `CODE: message`, or 'resolved'. */
async function outcome (call: Promise<unknown>): Promise<string> {
  return await call.then(() => 'resolved', (err: Error & { code?: string }) => `${err.code ?? ''}: ${err.message}`)
}


/** A node of an earlier release: its cluster answers a repl:attachments question as such a node's does (it has no handler for it). */
class EarlierReleaseTransport extends MemoryTransport {
  override async serveFromNetwork (from: string, request: Parameters<MemoryTransport['serveFromNetwork']>[1]): ReturnType<MemoryTransport['serveFromNetwork']> {
    if (request.kind === 'repl:attachments') return { ok: false, code: 'NOT_IMPLEMENTED', message: `node ${this.nodeId} does not serve ${request.kind} messages (a newer node talking to an older one?)` }
    return await super.serveFromNetwork(from, request)
  }
}

describe('a replicated volume in use on another node and deleteVolume', () => {
  it('a writable file open on a replica\'s node refuses a plain deleteVolume on the primary (BUSY naming that node and the writer); the file goes on; closed, the deletion goes on', async () => {
    const { nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    try {
      await replicatedVolume(nodes, 2)
      const file = await n2.g.mounts.openVolumeFile('v')
      const refused = await outcome(n1.g.deleteVolume('v'))
      assert.match(refused, /^BUSY: volume v is in use on another node of the cluster: on node n2, 1 writer\(s\) \(writable files open on it \(openVolumeFile\) or NBD clients connected read-write\); .*pass \{ force: true \}/, refused)
      await file.pwrite(block(9), 0)
      assert.deepEqual(await n1.g.readBlock('v', 0), block(9), 'the file on n2 still writes the volume')
      await file.close()
      await n1.g.deleteVolume('v')
      await assert.rejects(n1.g.getVolume('v'), { code: 'VOLUME_NOT_FOUND' })
      await until('n2\'s copy is gone', async () => (await n2.g.listVolumes()).length === 0, 20_000)
    } finally {
      await closeAll(nodes)
    }
  })

  it('a read-only file open on a replica\'s node refuses a plain deleteVolume made on that node itself (not forwarded under it)', async () => {
    const { nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    try {
      await replicatedVolume(nodes, 2)
      const file = await n2.g.mounts.openVolumeFile('v', { readOnly: true })
      const refused = await outcome(n2.g.deleteVolume('v'))
      assert.match(refused, /^BUSY: volume v has 1 reader\(s\): files open on it read-only/, refused)
      const buffer = new Uint8Array(BS)
      assert.equal(await file.pread(buffer, 0), BS)
      assert.deepEqual(buffer, block(1), 'the reader still reads the volume')
      await file.close()
      await n2.g.deleteVolume('v')
      await assert.rejects(n1.g.getVolume('v'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await closeAll(nodes)
    }
  })

  it('a mount and an NBD client on one replica\'s node refuse a plain deleteVolume made on a third node (forwarded to the primary), naming both; force deletes under them and each gets an error saying the volume was deleted', async () => {
    const { nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    const dir = await kit.tempDir('galleon-d15-mnt-')
    const server = await NbdServer.listen(n3.g, { host: '127.0.0.1', port: 0 })
    try {
      await replicatedVolume(nodes, 3)
      await n3.g.mounts.mountVolume('v', dir, { readOnly: true })
      const client = await goClient(server.port, 'v')
      const refused = await outcome(n2.g.deleteVolume('v'))
      assert.match(refused, /^BUSY: volume v is in use on another node of the cluster: on node n3, mounted \(/, refused)
      assert.match(refused, /1 writer\(s\)/, refused)
      client.request(CMD_READ, 6, 0, BS)
      assert.equal((await client.chunk()).error, 0, 'the NBD client goes on reading')
      assert.deepEqual((await n1.g.listVolumes()).map((v) => v.name), ['v'], 'the volume stays')
      await n2.g.deleteVolume('v', { force: true })
      await assert.rejects(n1.g.getVolume('v'), { code: 'VOLUME_NOT_FOUND' })
      await until('n3\'s copy is gone', async () => (await n3.g.listVolumes()).length === 0, 20_000)
      assert.deepEqual(n3.g.mounts.listMounts(), [], 'the mount on n3 was released')
      client.request(CMD_READ, 7, 0, BS)
      const chunk = await client.chunk()
      assert.notEqual(chunk.error, 0, 'after a forced delete the NBD client\'s reads fail')
      const message = chunk.body.subarray(6, 6 + chunk.body.readUInt16BE(4)).toString()
      assert.match(message, /^export v is gone: its volume was deleted/, message)
      client.socket.destroy()
    } finally {
      await server.close()
      await closeAll(nodes)
    }
  })

  it('forced, deleteVolume deletes under a writable file on another node: its next write fails with VOLUME_NOT_FOUND saying the volume was deleted', async () => {
    const { nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    try {
      await replicatedVolume(nodes, 2)
      const file = await n2.g.mounts.openVolumeFile('v')
      await n1.g.deleteVolume('v', { force: true })
      await until('n2\'s copy is gone', async () => (await n2.g.listVolumes()).length === 0, 20_000)
      const failed = await outcome(file.pwrite(block(3), 0))
      assert.match(failed, /^VOLUME_NOT_FOUND: volume default\/v was deleted while this file or mount was open on it/, failed)
      await file.close()
    } finally {
      await closeAll(nodes)
    }
  })

  it('a healthy node that does not answer whether it holds the volume refuses a plain deleteVolume (BUSY naming it); once it answers, the deletion goes on', async () => {
    const { network, nodes } = await kit.cluster(3)
    const [n1] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      await replicatedVolume(nodes, 3)
      network.drop((m) => m.kind === 'repl:attachments' && m.to === 'n3')
      const refused = await outcome(n1.g.deleteVolume('v'))
      assert.match(refused, /^BUSY: volume v may be in use on another node of the cluster: node n3 did not answer whether anything holds it there \(/, refused)
      network.drop(0)
      await n1.g.deleteVolume('v')
      await assert.rejects(n1.g.getVolume('v'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await closeAll(nodes)
    }
  })

  it('a node that is down (no member any more) does not hold the deletion off', async () => {
    const { nodes } = await kit.cluster(3)
    const [n1, , n3] = nodes as [DiskNode, DiskNode, DiskNode]
    try {
      await replicatedVolume(nodes, 3)
      await n3.g.close()
      await until('n1 sees n3 gone', () => n1.g.cluster?.members.find((m) => m.id === 'n3')?.healthy !== true, 20_000)
      await n1.g.deleteVolume('v')
      await assert.rejects(n1.g.getVolume('v'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await closeAll(nodes)
    }
  })

  it('a node of an earlier release (which does not know the question) refuses a plain deleteVolume, saying so; force deletes', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await kit.startNode(network, coordinators, 'n1')
    const dir = await kit.tempDir('galleon-d15-old-')
    const old = kit.track(await GalleonFS.open({ storagePath: dir, cluster: { nodeId: 'n2', transport: new EarlierReleaseTransport({ network, nodeId: 'n2' }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 } }))
    const nodes: DiskNode[] = [n1, { g: old, id: 'n2', dir, events: [] }]
    try {
      await until('both nodes see each other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
      await replicatedVolume(nodes, 2)
      const refused = await outcome(n1.g.deleteVolume('v'))
      assert.match(refused, /^BUSY: volume v may be in use on another node of the cluster: node n2 runs an earlier release that cannot say whether anything holds it there; /, refused)
      await n1.g.deleteVolume('v', { force: true })
      await assert.rejects(n1.g.getVolume('v'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await closeAll(nodes)
    }
  })
})
