// Review r70: replication with real node processes (TCP transport, real etcd) killed with SIGKILL
// at chosen moments: the primary while a returning copy is resynced (delta), the primary while a
// snapshot is created, deleted or reverted (with every copy there, and with one away), and a copy
// while a resync brings back the snapshots it missed. A moment is held so that the kill lands in it
// on every run: mid-resync by stopping (SIGSTOP) the copy being resynced, mid-call by holding the
// stream batches a copy receives (then handed on, or dropped as if never sent). After each,
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

  type SnapshotOp = { kind: 'create' | 'delete' | 'revert', name: string }
  /** The calls of the trials, each killed mid-way; the snapshot each names follows from what the cluster kept. */
  const KINDS: Array<SnapshotOp['kind']> = ['create', 'create', 'delete', 'revert', 'revert', 'delete']
  /** Trial `k`'s call: a new snapshot, the deletion of the oldest, or a revert to the newest. */
  function opOn (model: Model, kind: SnapshotOp['kind'], k: number): SnapshotOp {
    const names = [...model.snapshots.keys()]
    if (kind === 'create') return { kind, name: `t${k}` }
    return { kind, name: (kind === 'delete' ? names[0] : names[names.length - 1]) as string }
  }

  /**
   * One snapshot call made on `caller` (forwarded to `primary`, or on the primary itself) while
   * `held` holds the primary's stream batches, so the primary has made it on its own copy and waits
   * for that copy; then the primary is killed with SIGKILL and `held` takes the held batch (`drop`
   * false) or never gets it (`drop` true). Returns the model the cluster ended with (the call's
   * effect is there on every copy, or nowhere) and the call's outcome.
   */
  async function killedMidCall (primary: ChildNode, caller: ChildNode, held: ChildNode, others: ChildNode[], model: Model, op: SnapshotOp, drop: boolean): Promise<{ model: Model, outcome: string, next: ChildNode }> {
    const after = model.clone()
    if (op.kind === 'create') after.snapshot(op.name)
    else if (op.kind === 'delete') after.snapshots.delete(op.name)
    else after.revert(op.name)
    // A block the revert changes (the made effect is looked for there on the primary).
    const changed = model.live.findIndex((v, i) => v !== after.live[i])
    await held.call('holdStream')
    let outcome: Promise<string>
    try {
      const method = { create: 'createSnapshot', delete: 'deleteSnapshot', revert: 'restoreSnapshot' }[op.kind]
      outcome = caller.call(method, 'v', op.name).then(() => 'resolved', (err: { code?: string, message?: string }) => `rejected ${err.code ?? '?'}: ${err.message ?? ''}`)
      await until(`the primary ${primary.id} made the ${op.kind} of ${op.name} on its own copy and sent it to ${held.id}`, async () => {
        if (await held.call<number>('heldBatches') === 0) return false
        if (op.kind === 'revert') return await primary.call<boolean>('blockIs', 'v', changed, after.live[changed]).catch(() => false)
        const names = await primary.call<string[]>('snapshotNames', 'v')
        return names.includes(op.name) === (op.kind === 'create')
      }, 20_000, 2)
      // Still waiting for the held copy: the call has not been answered.
      const early = await Promise.race([outcome, new Promise((resolve) => setTimeout(() => resolve('pending'), 50))])
      assert.equal(early, 'pending', `the ${op.kind} of ${op.name} waits for the copy ${held.id}`)
      await nodes.kill(primary)
    } finally {
      await held.call('releaseStream', drop)
    }
    // A copy that was in sync takes over (the held one or another).
    const survivors = [held, ...others]
    let next: ChildNode | undefined
    await until('a copy takes over', async () => {
      for (const n of survivors) {
        const status = await n.call<Status>('replicationStatus', 'v').catch(() => undefined)
        if (status?.role === 'primary') { next = n; return true }
      }
      return false
    }, 60_000, 50)
    const result = caller === primary ? 'the caller was killed' : await outcome
    const names = await (next as ChildNode).call<string[]>('snapshotNames', 'v')
    let made: boolean
    if (op.kind === 'revert') {
      const found = await (next as ChildNode).call<{ count: number, first: unknown[] }>('checkView', 'v', after.live, model.versions())
      const notFound = found.count === 0 ? undefined : await (next as ChildNode).call<{ count: number, first: unknown[] }>('checkView', 'v', model.live, model.versions())
      assert.ok(found.count === 0 || notFound?.count === 0, `the live view on ${(next as ChildNode).id} is neither reverted (${found.count} blocks differ, e.g. ${JSON.stringify(found.first)}) nor as before (${notFound?.count ?? 0}, e.g. ${JSON.stringify(notFound?.first)})`)
      made = found.count === 0
    } else {
      made = names.includes(op.name) === (op.kind === 'create')
    }
    if (result === 'resolved') assert.ok(made, `the ${op.kind} of ${op.name} resolved but is undone on the new primary ${(next as ChildNode).id}`)
    return { model: made ? after : model, outcome: `${op.kind} ${op.name} (${drop ? 'dropped' : 'delivered'} to ${held.id}): ${result}, ${made ? 'made' : 'not made'} (new primary ${(next as ChildNode).id})`, next: next as ChildNode }
  }

  it('the primary killed while a forwarded snapshot create, delete and revert waits for a copy: made on every copy or on none, and a call that resolved is kept', { timeout: 400_000 }, async (t) => {
    const started = new Map<string, ChildNode>()
    for (const id of ['a', 'b', 'c']) started.set(id, await nodes.start(id, 'r70-2'))
    const node = (id: string): ChildNode => started.get(id) as ChildNode
    await allMembers([...started.values()], 3)
    let model = new Model(BLOCKS)
    await node('a').call('createVolume', { name: 'v', sizeBytes: BLOCKS * 4096, replicas: 3 })
    await inSync(node('a'), 'v', ['a', 'b', 'c'])
    await write(node('a'), model, 0, BLOCKS)
    await node('a').call('createSnapshot', 'v', 's0')
    model.snapshot('s0')
    await write(node('a'), model, 0, 2000)
    const outcomes: string[] = []
    let primary = 'a'
    for (const [k, kind] of KINDS.entries()) {
      const op = opOn(model, kind, k)
      const others = ['a', 'b', 'c'].filter((id) => id !== primary)
      const caller = node(others[k % 2] as string)
      const held = node(others[(k + 1) % 2] as string)
      if (op.kind === 'revert') await write(node(primary), model, 1000, 2000)
      const ended = await killedMidCall(node(primary), caller, held, [caller], model, op, k % 2 === 1)
      outcomes.push(ended.outcome)
      model = ended.model
      await checkServed(ended.next, 'v', model, ended.outcome)
      started.set(primary, await nodes.start(primary, 'r70-2', node(primary).dir))
      primary = ended.next.id
      await inSync(node(primary), 'v', ['a', 'b', 'c'])
      for (const id of ['a', 'b', 'c']) await checkServed(node(id), 'v', model, `${ended.outcome}; all back, through ${id}`)
    }
    t.diagnostic(outcomes.join('; '))
    await write(node(primary), model, 4000, 96)
    await node(primary).call('flush', 'v')
    for (const n of started.values()) await nodes.kill(n, 'SIGTERM')
    await checkCopiesAlone([...started.values()].map((n) => [n.id, n.dir]), 'v', model, `each copy alone (${outcomes.join('; ')})`)
  })

  it('with a copy away, the primary killed during a snapshot create, delete and revert made on it: the other copy takes over, and the copy away comes back with the snapshots as the cluster ended', { timeout: 400_000 }, async (t) => {
    const started = new Map<string, ChildNode>()
    for (const id of ['a', 'b', 'c']) started.set(id, await nodes.start(id, 'r70-2b'))
    const node = (id: string): ChildNode => started.get(id) as ChildNode
    await allMembers([...started.values()], 3)
    let model = new Model(BLOCKS)
    await node('a').call('createVolume', { name: 'v', sizeBytes: BLOCKS * 4096, replicas: 3 })
    await inSync(node('a'), 'v', ['a', 'b', 'c'])
    await write(node('a'), model, 0, BLOCKS)
    await node('a').call('createSnapshot', 'v', 's0')
    model.snapshot('s0')
    await nodes.kill(node('c'))
    await write(node('a'), model, 0, 2000)
    await until('c is out of sync', async () => !(await node('a').call<Status>('replicationStatus', 'v')).inSync.includes('c'), 30_000, 50)
    const outcomes: string[] = []
    let primary = 'a'
    for (const [k, kind] of KINDS.entries()) {
      const op = opOn(model, kind, k)
      const other = primary === 'a' ? 'b' : 'a'
      if (op.kind === 'revert') await write(node(primary), model, 1000, 2000)
      // The call is made on the primary itself (the copy away cannot forward it): its caller dies with it.
      const ended = await killedMidCall(node(primary), node(primary), node(other), [], model, op, k % 2 === 0)
      outcomes.push(ended.outcome)
      model = ended.model
      assert.equal(ended.next.id, other)
      await checkServed(ended.next, 'v', model, ended.outcome)
      started.set(primary, await nodes.start(primary, 'r70-2b', node(primary).dir))
      primary = other
      await inSync(node(primary), 'v', ['a', 'b'])
      await checkServed(node(primary === 'a' ? 'b' : 'a'), 'v', model, `${ended.outcome}; back, through the other`)
    }
    t.diagnostic(outcomes.join('; '))
    await write(node(primary), model, 4000, 96)
    started.set('c', await nodes.start('c', 'r70-2b', node('c').dir))
    await inSync(node(primary), 'v', ['a', 'b', 'c'])
    await checkServed(node('c'), 'v', model, `c back (${outcomes.join('; ')})`)
    await node(primary).call('flush', 'v')
    for (const n of started.values()) await nodes.kill(n, 'SIGTERM')
    await checkCopiesAlone([...started.values()].map((n) => [n.id, n.dir]), 'v', model, `each copy alone (${outcomes.join('; ')})`)
  })
})
