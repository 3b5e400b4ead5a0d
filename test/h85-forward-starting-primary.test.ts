// h85 (review r39): a control call forwarded to a volume's primary while that node restarts.
// Before its services register their handlers, a starting node refuses every message with
// BACKEND_UNAVAILABLE "node X is starting and does not serve repl:io messages yet" (see
// ClusterManager.serving); once they have, and until it has taken the primary role up again (see
// ReplicationManager.start), it refuses I/O with NOT_LEADER "node X is not the primary of volume
// V (it is unknown)". Either way the call did not run there. ReplicationManager.forward took such a
// refusal for an attempt that may have taken effect, so every later attempt went as a repeat,
// which the primary answers with what "the first attempt" did: a deleteSnapshot of a snapshot that
// never existed answered success (a repeat's "not found" is its earlier attempt's deletion), a
// shrinking expandVolume answered success (a repeat finds the volume at least that large), and a
// call that gave up said "it may have taken effect there". In-process cluster: memory transport
// and coordinator, every node's data on disk; n1 (the primary) is closed and opened again, held
// at a coordinator call of its start.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, WriteConcern, type TransportMessage } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import type { HandlerOutcome } from '../src/abstract-transport.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport, type MemoryCoordinator } from '../backends/memory/index.js'
import { RECORD_PREFIX } from '../src/replication/records.js'
import { outcomeOf } from './support/assertions.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { until, within } from './support/wait.js'

const kit = diskCluster('galleon-h85-')

/** n1's transport after its restart: records the outcome of every repl:io message it is sent, and from whom. */
class RecordingTransport extends MemoryTransport {
  readonly io: Array<{ from: string, outcome: HandlerOutcome }> = []
  override async serveFromNetwork (from: string, request: TransportMessage): Promise<HandlerOutcome> {
    const outcome = await super.serveFromNetwork(from, request)
    if (request.kind === 'repl:io') this.io.push({ from, outcome })
    return outcome
  }

  /** The refusals (code: message) of the repl:io messages from `from` so far, each once. */
  refusals (from: string): string[] {
    return [...new Set(this.io.filter((m) => m.from === from && !m.outcome.ok).map((m) => m.outcome.ok ? '' : `${m.outcome.code}: ${m.outcome.message}`))]
  }

  count (from: string): number {
    return this.io.filter((m) => m.from === from).length
  }
}


interface Cluster {
  nodes: DiskNode[]
  volumeId: string
  /**
   * Closes n1 and opens it again on its data with a RecordingTransport; its coordinator's first
   * call that `hold` picks waits until `release()`. Resolves once that call is held.
   */
  restartHeld: (hold: (method: 'members' | 'get', key?: string) => boolean) => Promise<{ transport: RecordingTransport, reopening: Promise<DiskNode>, release: () => void }>
}

/** `count` nodes n1.. with volume v (a copy on each, n1 its primary), block 0 written, every copy in sync. */
async function cluster (count: number): Promise<Cluster> {
  const network = new MemoryNetwork()
  // Leases outlast the test's restart (no failover while n1 is down or held), and their timers do
  // not keep the process alive after the test.
  const coordinators = new MemoryCoordinatorCluster({ clock: { now: () => Date.now(), setTimeout: (callback, ms) => setTimeout(callback, ms).unref(), clearTimeout: (handle) => { clearTimeout(handle as NodeJS.Timeout) } } })
  const open = async (id: string, dir: string, transport: MemoryTransport, coordinator: Coordinator = coordinators.coordinator()): Promise<DiskNode> => {
    const g = kit.track(await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport, coordinator, leaseTtlMs: 60_000 } }))
    return { g, id, dir, events: [] }
  }
  const nodes: DiskNode[] = []
  for (let i = 1; i <= count; i++) nodes.push(await open(`n${i}`, await kit.tempDir(`galleon-h85-n${i}-`), new MemoryTransport({ network, nodeId: `n${i}` })))
  await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === count))
  const n1 = nodes[0] as DiskNode
  const volume = await n1.g.createVolume({ name: 'v', sizeBytes: 16 * BS, replicas: count })
  await n1.g.writeBlock('v', 0, block(1), WriteConcern.WriteReplicated)
  await until('every copy is in sync', async () => await allInSync(n1.g, 'v', count), 20_000)
  const restartHeld: Cluster['restartHeld'] = async (hold) => {
    await n1.g.close({ handOver: false })
    const transport = new RecordingTransport({ network, nodeId: 'n1' })
    const coordinator: MemoryCoordinator = coordinators.coordinator()
    let release: () => void = () => {}
    const gate = new Promise<void>((resolve) => { release = resolve })
    let held = false
    const members = coordinator.members.bind(coordinator)
    const get = coordinator.get.bind(coordinator)
    const wait = async (method: 'members' | 'get', key?: string): Promise<void> => {
      if (held || !hold(method, key)) return
      held = true
      await gate
    }
    coordinator.members = async () => { await wait('members'); return await members() }
    coordinator.get = async (key) => { await wait('get', key); return await get(key) }
    const reopening = open('n1', n1.dir, transport, coordinator)
    reopening.catch(() => {})
    await until('n1 is held in its start', () => held)
    return { transport, reopening, release: () => { release() } }
  }
  return { nodes, volumeId: volume.id, restartHeld }
}

const NOT_FOUND = { code: 'SNAPSHOT_NOT_FOUND', message: 'volume v has no snapshot with id or name "never-taken"; listSnapshots() shows its snapshots' }
const SHRINK = { code: 'INVALID_ARGUMENT', message: `volume v is ${16 * BS} bytes; shrinking to ${8 * BS} would destroy data and is not supported. Create a smaller volume and copy the data instead` }

describe('h85: a control call refused by a primary that is starting is not "outcome unknown"', { timeout: 120_000 }, () => {
  it('refused "starting" (handlers not registered yet): deleteSnapshot of a snapshot that never existed is SNAPSHOT_NOT_FOUND, a shrink INVALID_ARGUMENT, and a call given up on does not say it may have taken effect', async () => {
    const { nodes, volumeId, restartHeld } = await cluster(3)
    const [, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    // With the primary up, the forwarded calls get the primary's answers.
    assert.deepEqual(await outcomeOf(n2.g.deleteSnapshot('v', 'never-taken')), NOT_FOUND)
    assert.deepEqual(await outcomeOf(n2.g.expandVolume('v', 8 * BS)), SHRINK)

    // Held at its first coordinator call after its transport listens (members(), before it claims
    // its node id): n1 answers every message "starting".
    const { transport, reopening, release } = await restartHeld((method) => method === 'members')
    try {
      // n2 and n3 still see n1 as the volume's primary (its lease lasts): they forward to it.
      const deleted = outcomeOf(n2.g.deleteSnapshot('v', 'never-taken'))
      const shrunk = outcomeOf(n2.g.expandVolume('v', 8 * BS))
      const givenUp = outcomeOf(n3.g.deleteSnapshot('v', 'also-never-taken'))
      await until('n1 refused the calls of n2 and n3 more than once each', () => transport.count('n2') >= 4 && transport.count('n3') >= 2)
      const starting = 'BACKEND_UNAVAILABLE: node n1 is starting and does not serve repl:io messages yet; retry in a moment'
      assert.deepEqual([transport.refusals('n2'), transport.refusals('n3')], [[starting], [starting]])
      assert.equal(transport.io.every((m) => !m.outcome.ok), true, 'nothing was answered yet')

      // n3 closes while its call still waits for a primary: the call gives up. Nothing it sent ran.
      await n3.g.close()
      const gaveUp = await within('n3\'s call ends once n3 is closed', givenUp)
      // (Its next attempt finds n3's transport closed, or the loop sees the instance closing.)
      assert.ok(['NOT_OPEN', 'BACKEND_UNAVAILABLE'].includes(gaveUp.code), `${gaveUp.code}: ${gaveUp.message}`)
      // Before h85: 'snapshot also-never-taken of volume v may or may not have been deleted: ...
      // (an earlier attempt of this call reached node n1, which did not answer it: it may have taken effect there)'.
      assert.ok(!gaveUp.message.includes('may have taken effect') && !gaveUp.message.includes('may or may not'), gaveUp.message)

      release()
      const n1 = await within('n1 is open again', reopening)
      // Before h85: 'ok' for both (answered as repeats of attempts that never ran).
      assert.deepEqual({ deleteSnapshot: await within('n2\'s deleteSnapshot answers', deleted), expandVolume: await within('n2\'s expandVolume answers', shrunk) }, { deleteSnapshot: NOT_FOUND, expandVolume: SHRINK })
      assert.equal((await n1.g.getVolume('v')).id, volumeId)
      assert.equal((await n1.g.getVolume('v')).sizeBytes, 16 * BS)
      assert.equal((await n2.g.getVolume('v')).sizeBytes, 16 * BS)
    } finally {
      release()
      await reopening.catch(() => {})
    }
  })

  it('refused NOT_LEADER "not the primary" (handlers registered, the record not read and the role not taken up yet): the same answers', async () => {
    const { nodes, volumeId, restartHeld } = await cluster(2)
    const n2 = nodes[1] as DiskNode
    // Held where ReplicationManager.start reads the volume's record, after its handlers are in place.
    const { transport, reopening, release } = await restartHeld((method, key) => method === 'get' && key === `${RECORD_PREFIX}${volumeId}`)
    try {
      const deleted = outcomeOf(n2.g.deleteSnapshot('v', 'never-taken'))
      const shrunk = outcomeOf(n2.g.expandVolume('v', 8 * BS))
      await until('n1 refused the calls of n2 more than once each', () => transport.count('n2') >= 4)
      assert.deepEqual(transport.refusals('n2'), [`NOT_LEADER: node n1 is not the primary of volume ${volumeId} (it is unknown)`])
      release()
      const n1 = await within('n1 is open again', reopening)
      assert.deepEqual({ deleteSnapshot: await within('n2\'s deleteSnapshot answers', deleted), expandVolume: await within('n2\'s expandVolume answers', shrunk) }, { deleteSnapshot: NOT_FOUND, expandVolume: SHRINK })
      assert.equal((await n1.g.getVolume('v')).sizeBytes, 16 * BS)
    } finally {
      release()
      await reopening.catch(() => {})
    }
  })
})
