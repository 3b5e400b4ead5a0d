// Review r70: replication with real node processes (TCP transport, real etcd) killed with SIGKILL
// at chosen moments: the primary while a returning copy is resynced (delta), the primary while a
// snapshot is created, deleted or reverted (with every copy there, and with one away), and a copy
// while a resync brings back the snapshots it missed. A moment is held by stopping (SIGSTOP) the
// process whose answer the primary waits for, so the kill lands in it on every run. After each,
// the volume must serve the model's bytes (live and in every snapshot), its copies must come back
// in sync, and each copy's storage, opened alone at the end, must hold the model's bytes.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { etcdSkipReason } from './support/etcd.js'
import { until } from './support/wait.js'
import { allMembers, checkCopiesAlone, checkServed, childCluster, inSync, Model, type ChildNode, type Status } from './support/r70-cluster.js'

const SKIP = etcdSkipReason()
const BLOCKS = 4096

describe('review r70: replication under SIGKILL (node processes, TCP, etcd)', { skip: SKIP }, () => {
  const nodes = childCluster()

  /** Writes blocks first .. first+count-1 through `node` and records them in `model`. */
  async function write (node: ChildNode, model: Model, first: number, count: number, concern = WriteConcern.WriteReplicated): Promise<void> {
    const version = model.next()
    await node.call('writeRange', 'v', first, count, version, concern)
    model.wrote(first, count, version)
  }

  /** Waits until the primary's link to `copy` is resyncing and `ready` holds of its progress; returns that status. */
  async function resyncing (primary: ChildNode, copy: string, ready: (done: number, total: number) => boolean): Promise<Status> {
    let last: Status | undefined
    await until(`${primary.id} resyncs ${copy}`, async () => {
      last = await primary.call<Status>('replicationStatus', 'v')
      const link = last.links.find((l) => l.node === copy)
      return link?.state === 'resyncing' && link.resync !== undefined && ready(link.resync.blocksDone, link.resync.blocksTotal)
    }, 60_000, 5).catch((err: Error) => { throw new Error(`${err.message}; last status ${JSON.stringify(last)}`) })
    return last as Status
  }

  it('the primary killed while a returning copy is resynced (delta): the in-sync copy takes over with every byte, and both others come back in sync', { timeout: 300_000 }, async () => {
    let a = await nodes.start('a', 'r70-1')
    const b = await nodes.start('b', 'r70-1')
    let c = await nodes.start('c', 'r70-1')
    await allMembers([a, b, c], 3)
    const model = new Model(BLOCKS)
    await a.call('createVolume', { name: 'v', sizeBytes: BLOCKS * 4096, replicas: 3 })
    await inSync(a, 'v', ['a', 'b', 'c'])
    await write(a, model, 0, BLOCKS)
    await a.call('createSnapshot', 'v', 's0')
    model.snapshot('s0')
    // c goes away; the volume changes meanwhile (a snapshot it misses too).
    await nodes.kill(c)
    await write(a, model, 0, 3000)
    await until('c is out of sync', async () => !(await a.call<Status>('replicationStatus', 'v')).inSync.includes('c'), 30_000, 50)
    await a.call('createSnapshot', 'v', 's1')
    model.snapshot('s1')
    await write(a, model, 1000, 3000)
    await a.call('trim', 'v', 2000 * 4096, 100 * 4096)
    model.wrote(2000, 100, 0)
    c = await nodes.start('c', 'r70-1', c.dir)
    // Mid-way through the delta resync: c stops (the primary waits for it), the primary is killed.
    const seen = await resyncing(a, 'c', (done, total) => done > 0 && done < total)
    c.child.kill('SIGSTOP')
    const link = (await a.call<Status>('replicationStatus', 'v')).links.find((l) => l.node === 'c')
    assert.equal(link?.resync?.mode, 'delta', JSON.stringify(seen))
    assert.ok(link?.state === 'resyncing' && (link.resync?.blocksDone ?? 0) < (link.resync?.blocksTotal ?? 0), `still mid-resync when the primary is killed: ${JSON.stringify(link)}`)
    await nodes.kill(a)
    c.child.kill('SIGCONT')
    // b (the in-sync copy) takes over and serves every byte; c (half resynced) is never primary.
    const failedOver = await inSync(b, 'v', ['b', 'c'])
    assert.equal(failedOver.primary, 'b')
    await checkServed(b, 'v', model, 'after the failover')
    await checkServed(c, 'v', model, 'after the failover, through c')
    await write(b, model, 4000, 96)
    await b.call('createSnapshot', 'v', 's2')
    model.snapshot('s2')
    a = await nodes.start('a', 'r70-1', a.dir)
    await inSync(b, 'v', ['a', 'b', 'c'])
    await checkServed(a, 'v', model, 'all back, through a')
    await b.call('flush', 'v')
    for (const n of [a, b, c]) await nodes.kill(n, 'SIGTERM')
    await checkCopiesAlone([['a', a.dir], ['b', b.dir], ['c', c.dir]], 'v', model, 'each copy alone')
  })

  it('a copy killed twice during the resync that brings back the snapshots it missed (created, and created and deleted, while it was away): in sync after, every snapshot the primary\'s', { timeout: 300_000 }, async () => {
    const a = await nodes.start('a', 'r70-3')
    const b = await nodes.start('b', 'r70-3')
    let c = await nodes.start('c', 'r70-3')
    await allMembers([a, b, c], 3)
    const model = new Model(BLOCKS)
    await a.call('createVolume', { name: 'v', sizeBytes: BLOCKS * 4096, replicas: 3 })
    await inSync(a, 'v', ['a', 'b', 'c'])
    await write(a, model, 0, BLOCKS)
    await a.call('createSnapshot', 'v', 's0')
    model.snapshot('s0')
    await a.call('createSnapshot', 'v', 'kept')
    model.snapshot('kept')
    await nodes.kill(c)
    // While c is away: snapshots taken, one it had deleted, one taken and deleted, a revert.
    await write(a, model, 0, 3000)
    await until('c is out of sync', async () => !(await a.call<Status>('replicationStatus', 'v')).inSync.includes('c'), 30_000, 50)
    await a.call('createSnapshot', 'v', 's1')
    model.snapshot('s1')
    await write(a, model, 500, 3000)
    await a.call('createSnapshot', 'v', 's2')
    model.snapshot('s2')
    await a.call('deleteSnapshot', 'v', 's0')
    model.snapshots.delete('s0')
    await a.call('createSnapshot', 'v', 'gone')
    await write(a, model, 1000, 2000)
    await a.call('deleteSnapshot', 'v', 'gone')
    await a.call('restoreSnapshot', 'v', 's1')
    model.revert('s1')
    await write(a, model, 3500, 500)
    await a.call('trim', 'v', 100 * 4096, 50 * 4096)
    model.wrote(100, 50, 0)
    // Killed in the first view (s1's blocks), then past it (s1 made on c, s2's blocks or the live ones).
    const moments: Array<[string, (done: number, total: number) => boolean]> = [
      ['in the first view', (done, total) => done > 0 && done < total / 3],
      ['past the first view', (done, total) => done > total / 3 + 1024 && done < total]
    ]
    for (const [when, ready] of moments) {
      c = await nodes.start('c', 'r70-3', c.dir)
      const seen = await resyncing(a, 'c', ready)
      c.child.kill('SIGSTOP')
      const link = (await a.call<Status>('replicationStatus', 'v')).links.find((l) => l.node === 'c')
      assert.ok(link?.state === 'resyncing' && (link.resync?.blocksDone ?? 0) < (link.resync?.blocksTotal ?? 0), `${when}: still mid-resync when c is killed: ${JSON.stringify(link)} (seen ${JSON.stringify(seen)})`)
      await nodes.kill(c)
      await checkServed(b, 'v', model, `c killed ${when}, through b`)
    }
    c = await nodes.start('c', 'r70-3', c.dir)
    await inSync(a, 'v', ['a', 'b', 'c'])
    await checkServed(c, 'v', model, 'c back, through c')
    await write(c, model, 0, 10)
    await a.call('flush', 'v')
    for (const n of [a, b, c]) await nodes.kill(n, 'SIGTERM')
    await checkCopiesAlone([['a', a.dir], ['b', b.dir], ['c', c.dir]], 'v', model, 'each copy alone')
  })
})
