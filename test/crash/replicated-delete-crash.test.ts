// Review r76: deleteVolume of a 3-copy volume with a node process SIGKILLed part way. Three nodes
// (TCP, a real etcd); the volume's primary is killed once the deletion mark is written (the record
// still there), once the record is gone, as its own copy starts going (the others told), and once
// its copy is gone (before it comes off the mark); a copy's node is killed as the primary's
// repl:delete reaches it, and as its copy starts going. The killed node starts again on its disk.
// Then the volume is gone from every node (no copy, no record), or, killed before the record went,
// still whole on every node with no deletion mark naming its copies, and deleteVolume again deletes
// it; either way no deletion mark is left, and the next case creates a volume of the same name
// (filled and read through every copy), with another 2-copy volume untouched throughout.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { etcdSkipReason } from '../support/etcd.js'
import { allMembers, childCluster, type ChildNode } from '../support/r70-cluster.js'
import { armKill, ClusterKeys, killed, R76_CHILD, settled, type KillArm } from '../support/r76-cluster.js'
import { until, within } from '../support/wait.js'

const SKIP = etcdSkipReason()
const BLOCKS = 256
const IDS = ['n1', 'n2', 'n3']
const PREFIX = 'r76-delete'

describe('review r76: deleteVolume of a replicated volume with a node SIGKILLed (processes, TCP, etcd)', { skip: SKIP }, () => {
  const cluster = childCluster(R76_CHILD)
  const nodes: Record<string, ChildNode> = {}
  let keys: ClusterKeys | undefined
  let keepDigest = ''
  let round = 0

  before(async () => {
    if (SKIP !== undefined) return
    for (const node of await Promise.all(IDS.map(async (id) => await cluster.start(id, PREFIX)))) nodes[node.id] = node
    await allMembers(Object.values(nodes), 3)
    keys = await ClusterKeys.open(cluster.endpoint(), PREFIX)
    await nodes.n2?.call('createVolume', { name: 'keep', sizeBytes: BLOCKS * 4096, replicas: 2 })
    keepDigest = await nodes.n2?.call<string>('fill', 'keep', BLOCKS, 7) as string
  })
  after(async () => { await keys?.close() })

  /** A fresh 3-copy `vd` on n1 (its primary), filled and in sync on every node; its id. */
  async function freshVolume (): Promise<string> {
    const n1 = nodes.n1 as ChildNode
    const volume = await n1.call<{ id: string }>('createVolume', { name: 'vd', sizeBytes: BLOCKS * 4096, replicas: 3 })
    const digest = await n1.call<string>('fill', 'vd', BLOCKS, ++round)
    await settled(keys as ClusterKeys, nodes, 'vd', 3)
    for (const id of IDS) assert.equal(await nodes[id]?.call('digest', 'vd'), digest, `round ${round}: vd read through ${id}`)
    return volume.id
  }

  /** The volume is gone everywhere, and no deletion mark is left; `keep` is whole on its copies. */
  async function goneEverywhere (volumeId: string, context: string): Promise<void> {
    const k = keys as ClusterKeys
    await until(`${context}: no node lists vd`, async () => {
      for (const id of IDS) if ((await nodes[id]?.call<string[]>('volumeNames'))?.includes('vd') === true) return false
      return true
    }, 30_000, 100)
    assert.equal((await k.records()).vd, undefined, `${context}: the record of vd`)
    let marks: Record<string, string[]> = {}
    await until(`${context}: no deletion mark is left`, async () => { marks = await k.deletionMarks(); return marks[volumeId] === undefined }, 30_000, 200)
      .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(marks)}`) })
    for (const id of IDS) {
      const found = await nodes[id]?.call('getVolume', volumeId).then(() => 'found', (err: { code?: string }) => err.code)
      assert.equal(found, 'VOLUME_NOT_FOUND', `${context}: getVolume(id) on ${id}`)
    }
    for (const id of await settled(k, nodes, 'keep', 2)) assert.equal(await nodes[id]?.call('digest', 'keep'), keepDigest, `${context}: keep read through ${id}`)
  }

  /** Kills `victim` at `arm` during deleteVolume('vd') called on n1, starts it again; the call's outcome. */
  async function deleteKilled (victim: string, arm: KillArm): Promise<{ volumeId: string, outcome: string }> {
    const volumeId = await freshVolume()
    const node = nodes[victim] as ChildNode
    await armKill(node, arm)
    const call = (nodes.n1 as ChildNode).call('deleteVolume', 'vd').then(() => 'resolved', (err: { code?: string, message?: string }) => `${err.code} ${err.message}`)
    await within(`${victim} is killed`, killed(node), 60_000)
    // Where the kill landed: the record still there only for a kill before it goes.
    const recorded = (await (keys as ClusterKeys).records()).vd !== undefined
    assert.equal(recorded, arm.kind === 'coordinator' && arm.op === 'put', `the record of vd at the kill: ${recorded ? 'there' : 'gone'}`)
    nodes[victim] = await cluster.start(victim, PREFIX, node.dir)
    const outcome = await within('the deleteVolume call', call, 90_000)
    await allMembers(Object.values(nodes), 3)
    return { volumeId, outcome }
  }

  const kills: Array<[string, string, KillArm]> = [
    ['the primary', 'once the record is gone', { kind: 'coordinator', op: 'delete', key: 'replication/volumes/', when: 'after' }],
    ['the primary', 'as its own copy starts going (the others told)', { kind: 'event', name: 'volume:state' }],
    ['the primary', 'once its copy is gone, before it comes off the mark', { kind: 'event', name: 'volume:deleted' }],
    ['a copy\'s node (n2)', 'as the primary\'s repl:delete reaches it', { kind: 'request', name: 'repl:delete', when: 'before' }],
    ['a copy\'s node (n2)', 'as its copy starts going', { kind: 'event', name: 'volume:state' }]
  ]
  for (const [who, moment, arm] of kills) {
    it(`${who} killed ${moment}: the volume is gone from every node, no mark is left, the name is free`, { timeout: 120_000 }, async () => {
      const victim = who === 'the primary' ? 'n1' : 'n2'
      const { volumeId, outcome } = await deleteKilled(victim, arm)
      assert.match(outcome, victim === 'n1' ? /^EXITED/ : /^resolved/)
      await goneEverywhere(volumeId, `${who} killed ${moment}`)
    })
  }

  it('the primary killed once the deletion mark is written, the record still there: the volume stays whole with no mark naming its copies; deleteVolume again deletes it', { timeout: 120_000 }, async () => {
    const { volumeId, outcome } = await deleteKilled('n1', { kind: 'coordinator', op: 'put', key: 'replication/deleted/', when: 'after' })
    assert.match(outcome, /^EXITED/)
    const k = keys as ClusterKeys
    await settled(k, nodes, 'vd', 3)
    let marks: Record<string, string[]> = {}
    await until('no deletion mark names the copies of vd, which is kept', async () => { marks = await k.deletionMarks(); return marks[volumeId] === undefined }, 30_000, 200)
      .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(marks)}`) })
    const primary = (await k.records()).vd?.primary as string
    await nodes[primary]?.call('deleteVolume', 'vd')
    await goneEverywhere(volumeId, 'deleted again')
  })

  it('the name is used again after the last case', { timeout: 60_000 }, async () => {
    await freshVolume()
  })
})
