// A deposed primary's own write still in flight when the new primary resyncs it (found by
// test/daemon-chaos.test.ts, seed 3: a snapshot whose block 0 differed between the two copies).
// In process: two nodes on the memory transport and coordinator, each with its own on-disk
// storage; the old primary's block store holds its journal batches on demand, so that a write it
// recorded stays unpublished while the role moves and the new primary compares digests.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type BlockOp, type BlockStore } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { until } from './support/wait.js'
import { namePrimary } from './support/replica-records.js'

const { tempDir, startNode, track } = diskCluster('galleon-divergence-')

/** A file block store whose batches wait while `hold()` is in force (reads pass). */
function holdableStore (location: string): { store: BlockStore, hold: () => void, release: () => void, held: () => number } {
  const inner = new FileBlockStore({ location })
  let gate: Promise<void> | undefined
  let open: (() => void) | undefined
  let waiting = 0
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (ops: BlockOp[], options?: { sync?: boolean }) => {
          if (gate !== undefined) {
            waiting++
            try { await gate } finally { waiting-- }
          }
          return await target.batch(ops, options)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return {
    store,
    hold: () => { gate ??= new Promise((resolve) => { open = resolve }) },
    release: () => { gate = undefined; open?.() },
    held: () => waiting
  }
}

/** Block 0 of the volume and of its snapshot `snap`, read from the node's storage opened alone. */
async function blockZero (dir: string, volume: string, snap: string): Promise<{ live: Uint8Array, snapshot: Uint8Array }> {
  const g = await GalleonFS.open({ storagePath: dir })
  try {
    const snapshot = (await g.listSnapshots(volume)).find((s) => s.name === snap)
    assert.ok(snapshot !== undefined, `snapshot ${snap} on ${dir}`)
    return { live: await g.readBlock(volume, 0), snapshot: await g.readBlock({ volume, snapshot: snapshot.id }, 0) }
  } finally {
    await g.close()
  }
}

describe('a primary that is deposed while its own write is in flight', () => {
  it('ends with the same bytes as the new primary, live and in a snapshot taken after it resynced', async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    // n1, the first primary, on a block store that can hold its journal's batches.
    const n1dir = await tempDir('galleon-divergence-n1-')
    const held = holdableStore(join(n1dir, 'blocks'))
    const g1 = track(await GalleonFS.open({
      storagePath: n1dir,
      blockStore: held.store,
      cluster: { nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
    }))
    const n2: DiskNode = await startNode(network, coordinators, 'n2')
    await until('both nodes see each other', () => [g1, n2.g].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    const volume = await g1.createVolume({ name: 'split', sizeBytes: 16 * 4096, replicas: 2 })
    await until('both copies are in sync', async () => await allInSync(g1, 'split', 2))
    await g1.writeBlock('split', 0, block(1), WriteConcern.WriteReplicated)

    // The old primary records a write and sends it, but the copy never gets it (as with a primary
    // stopped right then), and its own journal holds it: recorded, not yet published.
    let released = false
    let fallback: NodeJS.Timeout | undefined
    const release = (): void => { if (!released) { released = true; clearTimeout(fallback); held.release() } }
    network.drop((m) => {
      // The held write is let go once the deposed copy has answered the new primary's digest
      // comparison. A copy that (rightly) waits for the write before it answers the resync never
      // answers while it is held: then it is let go a while after the resync began (the copies
      // must end the same either way; the wait only decides which case this run tests).
      if (m.type === 'request' && m.kind === 'repl:resync-begin' && m.from === 'n2') fallback ??= setTimeout(release, 1000)
      if (m.type === 'reply' && m.kind === 'repl:digests' && m.from === 'n1') release()
      return m.type === 'request' && m.kind === 'repl:apply' && m.from === 'n1'
    }, { silent: true })
    held.hold()
    const deposedWrite = g1.writeBlock('split', 0, block(2), WriteConcern.WriteDurable)
    deposedWrite.catch(() => {})
    await until('the old primary recorded the write and its journal holds it', async () => held.held() > 0 && ((await g1.replicationStatus('split')).links[0]?.lagChanges ?? 0) > 0)

    // The cluster names n2 primary (as the leader does on a failover); it resyncs n1 by digests.
    await namePrimary(coordinators, volume.id, 'n2')
    await until('n1 is back in sync under n2', async () => {
      const status = await n2.g.replicationStatus('split')
      return status.role === 'primary' && status.inSync.includes('n1') && status.links.every((l) => l.state === 'streaming' && l.lagChanges === 0)
    })
    release()
    await deposedWrite.catch(() => {})
    network.drop(0)

    // A snapshot through the new primary, shipped to n1 in its stream.
    await n2.g.createSnapshot('split', 'after')
    await until('n1 has the snapshot', async () => (await n2.g.replicationStatus('split')).links.every((l) => l.state === 'streaming' && l.lagChanges === 0))
    await g1.close()
    await n2.g.close()

    const [one, two] = [await blockZero(n1dir, 'split', 'after'), await blockZero(n2.dir, 'split', 'after')]
    assert.deepEqual(Buffer.from(one.snapshot).equals(Buffer.from(two.snapshot)), true, 'block 0 of snapshot "after" is the same on both copies')
    assert.deepEqual(Buffer.from(one.live).equals(Buffer.from(two.live)), true, 'block 0 is the same on both copies')
  })
})
