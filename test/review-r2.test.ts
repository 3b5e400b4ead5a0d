// Review of this session's replication and backup changes: a deleteVolume whose record delete fails,
// and the snapshot of a backup on a replica's node that gave up waiting for it. In-process nodes on
// their own disks, a memory transport and coordinator (as in test/replication-cross.test.ts).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, GalleonError, WriteConcern, BackupStrategy, type Coordinator } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { until } from './support/wait.js'
import { blockPattern } from './support/patterns.js'

const BS = 4096

interface Node { g: GalleonFS, id: string, dir: string }

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function startNode (network: MemoryNetwork, coordinator: Coordinator, id: string, dir?: string): Promise<Node> {
  const storagePath = dir ?? await mkdtemp(join(tmpdir(), `galleon-r2-${id}-`))
  if (dir === undefined) dirs.push(storagePath)
  const g = await GalleonFS.open({ storagePath, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 1000 } })
  opened.push(g)
  return { g, id, dir: storagePath }
}

async function backupSnapshots (g: GalleonFS, volume: string): Promise<string[]> {
  return (await g.listSnapshots(volume)).map((s) => s.name).filter((name) => name.startsWith('backup-'))
}

describe('review r2: replicated deletion and backups on a replica\'s node', () => {
  it('a deleteVolume whose record delete fails leaves the volume whole and served, and deleteVolume again deletes every copy', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    // n1's coordinator fails the first delete of a replica-set record (not applied).
    const c1 = coordinators.coordinator()
    const del = c1.delete.bind(c1)
    let failNext = true
    c1.delete = async (key, options) => {
      if (failNext && key.startsWith('replication/volumes/')) {
        failNext = false
        throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator did not answer')
      }
      return await del(key, options)
    }
    const n1 = await startNode(network, c1, 'n1')
    const n2 = await startNode(network, coordinators.coordinator(), 'n2')
    await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    await n1.g.createVolume({ name: 'doomed', sizeBytes: 16 * BS, replicas: 2 })
    await n1.g.writeBlock('doomed', 3, blockPattern(1, 3), WriteConcern.WriteReplicated)
    await until('both copies in sync', async () => (await n1.g.replicationStatus('doomed')).inSync.length === 2)

    await assert.rejects(n1.g.deleteVolume('doomed'), { code: 'BACKEND_UNAVAILABLE' })
    // Not deleted: the volume is still served on its primary's node (it was refused as a copy
    // "being deleted" before), and it is still replicated.
    assert.deepEqual(await n1.g.readBlock('doomed', 3), blockPattern(1, 3))
    assert.equal((await n1.g.replicationStatus('doomed')).role, 'primary')

    // Called again, the deletion goes everywhere (before, only n1's copy went; n2 kept its copy and the record).
    await n1.g.deleteVolume('doomed')
    await until('n2 deleted its copy', async () => (await n2.g.listVolumes()).length === 0, 10_000)
    assert.deepEqual(await c1.list('replication/volumes/'), [])
  })

  it('a backup on a replica\'s node that stopped waiting for its snapshot: the snapshot is deleted at a later open, on the primary (not forgotten, not left on any copy)', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await startNode(network, coordinators.coordinator(), 'n1')
    let n2 = await startNode(network, coordinators.coordinator(), 'n2')
    await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    const target = await mkdtemp(join(tmpdir(), 'galleon-r2-backups-'))
    dirs.push(target)
    await n1.g.createVolume({ name: 'lagging', sizeBytes: 16 * BS, replicas: 2 })
    await n1.g.writeBlock('lagging', 1, blockPattern(1, 1), WriteConcern.WriteReplicated)
    const full = await n2.g.createBackup('lagging', { strategy: BackupStrategy.Full, target })
    // n2's copy stops getting the stream (and resyncs): the backup's snapshot does not reach it.
    network.drop((m) => m.to === 'n2' && (m.kind === 'repl:apply' || m.kind === 'repl:resync-begin'))
    const abort = new AbortController()
    const backup = n2.g.createBackup('lagging', { strategy: BackupStrategy.Incremental, target, signal: abort.signal })
    backup.catch(() => {})
    await until('the primary took the backup\'s snapshot', async () => (await backupSnapshots(n1.g, 'lagging')).some((name) => name !== full.snapshotName))
    const [taken] = (await backupSnapshots(n1.g, 'lagging')).filter((name) => name !== full.snapshotName)
    abort.abort()
    await assert.rejects(backup, { code: 'CANCELLED' })

    // Reopened while its copy still lacks the snapshot: the deletion goes to the primary, which
    // resolves the name (a replicated volume's snapshot calls are forwarded by id or name).
    await n2.g.close()
    n2 = await startNode(network, coordinators.coordinator(), 'n2', n2.dir)
    assert.ok(!(await backupSnapshots(n2.g, 'lagging')).includes(taken as string))
    // (open() has returned: the leftover snapshot was deleted during it, through the primary.)
    assert.deepEqual(await backupSnapshots(n1.g, 'lagging'), [full.snapshotName])
    // The copy catches up without it, and a later open finds nothing left to delete.
    network.drop(0)
    await until('n2\'s copy follows', async () => (await n2.g.replicationStatus('lagging')).inSync.includes('n2') && (await backupSnapshots(n2.g, 'lagging')).length === 1, 20_000)
    await n2.g.close()
    n2 = await startNode(network, coordinators.coordinator(), 'n2', n2.dir)
    assert.deepEqual(await backupSnapshots(n1.g, 'lagging'), [full.snapshotName])
    assert.deepEqual(await backupSnapshots(n2.g, 'lagging'), [full.snapshotName])
  })
})
