// The etcd coordinator against a real etcd behind a relay that sees HTTP/2 frames: requests etcd
// applies after the handle gave up on them, writes whose answer is lost (or that never reach etcd),
// and watches whose connection breaks while they resume.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import { EtcdCoordinator } from '../backends/etcd/index.js'
import { isGalleonError } from '../src/errors.js'
import { testNode } from './conformance/index.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'
import { frameRelay } from './support/etcd-relay.js'

const skip = etcdSkipReason()
let etcd: Promise<EtcdServer> | undefined
after(async () => { if (etcd !== undefined) await (await etcd).stop() })

async function until (predicate: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await predicate())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

test('a leave whose delete etcd applies after the handle gave up on it leaves the node a member', { skip }, async () => {
  const server = await (etcd ??= startEtcd())
  const relay = await frameRelay(server.endpoint)
  const a = await EtcdCoordinator.connect({ endpoints: [relay.endpoint], prefix: '/late-leave/', requestTimeoutMs: 1000 })
  const observer = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/late-leave/' })
  const { Etcd3 } = await import('etcd3')
  const raw = new Etcd3({ hosts: [server.endpoint] })
  const written = async (): Promise<string | undefined> => (await raw.get('/late-leave/nodes/node-a/alive').exec()).kvs[0]?.mod_revision
  try {
    await a.join(testNode('node-a'))
    const joined = await written()
    relay.hold()
    await assert.rejects(a.leave(), (err: unknown) => isGalleonError(err, 'BACKEND_UNAVAILABLE'))
    relay.detach()
    // The outcome of the delete is unknown to the handle: the node stays a member, so it writes its
    // keys again (over a new connection).
    await until(async () => (await written()) !== joined, 'node-a to write its keys again')
    // Now etcd gets the delete: it must not remove the member.
    await relay.flush()
    assert.deepEqual((await observer.members()).map((m) => [m.id, m.healthy]), [['node-a', true]])
    // And the node can still leave.
    await a.leave()
    assert.deepEqual(await observer.members(), [])
  } finally {
    raw.close()
    await a.close()
    await observer.close()
    await relay.close()
  }
})

test('a watch whose connection breaks again right after it resumed still reports the changes it missed', { skip }, async () => {
  const server = await (etcd ??= startEtcd())
  const relay = await frameRelay(server.endpoint)
  const watcher = await EtcdCoordinator.connect({ endpoints: [relay.endpoint], prefix: '/resume/' })
  const writer = await EtcdCoordinator.connect({ endpoints: [server.endpoint], prefix: '/resume/' })
  const seen: string[] = []
  try {
    watcher.watch('x/', (event) => seen.push(`${event.type} ${event.key}`))
    await writer.put('x/before', '1')
    await until(() => seen.includes('put x/before'), 'the watch to work')
    // The connection breaks; changes are made before the watch resumes; when it resumes (from the
    // revision after the last it reported), etcd confirms it first and sends the changes next: the
    // connection breaks again in between.
    relay.drop()
    relay.hold()
    relay.cutNextAfterFirstData()
    await writer.put('x/during', '2')
    await writer.delete('x/before')
    await relay.flush()
    await until(() => relay.cuts() === 1, 'the resumed watch\'s connection to break')
    await writer.put('x/after', '3')
    await until(() => seen.includes('put x/after'), `the watch to resume (seen: ${seen.join(', ')})`)
    assert.deepEqual(seen, ['put x/before', 'put x/during', 'delete x/before', 'put x/after'])
  } finally {
    await watcher.close()
    await writer.close()
    await relay.close()
  }
})

/** A handle behind a relay, and a plain etcd3 client straight to etcd to look at what it did. */
async function behindRelay (prefix: string, options: { requestTimeoutMs?: number } = {}): Promise<{ relay: Awaited<ReturnType<typeof frameRelay>>, handle: EtcdCoordinator, raw: import('etcd3').Etcd3, stored: (key: string) => Promise<import('etcd3').IKeyValue | undefined>, close: () => Promise<void> }> {
  const server = await (etcd ??= startEtcd())
  const relay = await frameRelay(server.endpoint)
  const handle = await EtcdCoordinator.connect({ endpoints: [relay.endpoint], prefix, ...options })
  const { Etcd3 } = await import('etcd3')
  const raw = new Etcd3({ hosts: [server.endpoint] })
  return {
    relay,
    handle,
    raw,
    stored: async (key) => (await raw.kv.range({ key: Buffer.from(prefix + key) })).kvs[0],
    close: async () => {
      raw.close()
      await handle.close()
      await relay.close()
    }
  }
}

test('a compare-and-swap put whose answer is lost reports that it wrote: etcd applied it, once', { skip }, async () => {
  const { relay, handle, stored, close } = await behindRelay('/lost-put/')
  try {
    const first = await handle.put('k', 'v1')
    relay.loseNext('answer')
    const written = await handle.put('k', 'v2', { expectRevision: first!.revision })
    assert.equal(relay.losses(), 1)
    const kv = await stored('kv/k')
    assert.equal(kv?.value.toString(), 'v2')
    assert.equal(kv?.version, '2') // created, then swapped once
    assert.deepEqual(written, { key: 'k', value: 'v2', revision: Number(kv.mod_revision) })
  } finally {
    await close()
  }
})

test('a compare-and-swap put whose answer is lost, and that another write follows before the handle looks, still reports that it wrote', { skip }, async () => {
  const { relay, handle, raw, stored, close } = await behindRelay('/lost-put-overwritten/', { requestTimeoutMs: 5000 })
  try {
    const first = await handle.put('k', 'v1')
    // The answer is lost and what the handle sends next waits in the relay: another client writes
    // the key in between, so the handle finds a value that is not its own.
    relay.loseNext('answer', { thenHold: true })
    const writing = handle.put('k', 'v2', { expectRevision: first!.revision })
    await until(() => relay.losses() === 1, 'the answer to be lost')
    const swapped = Number((await stored('kv/k'))?.mod_revision)
    await raw.put('/lost-put-overwritten/kv/k').value('v3').exec()
    await relay.flush()
    assert.deepEqual(await writing, { key: 'k', value: 'v2', revision: swapped })
    assert.equal((await stored('kv/k'))?.value.toString(), 'v3')
  } finally {
    await close()
  }
})

test('a compare-and-swap whose answer is lost on a key last written long ago reports that it wrote, though etcd compacted the old revisions', { skip }, async () => {
  const { relay, handle, raw, stored, close } = await behindRelay('/lost-put-compacted/')
  try {
    const first = await handle.put('k', 'v1')
    // Many revisions later, everything before them compacted away: the key's own revision with it.
    for (let i = 0; i < 20; i++) await raw.put(`/lost-put-compacted/other/${i}`).value('x').exec()
    const head = Number((await raw.kv.range({ key: Buffer.from('/lost-put-compacted/other/19') })).header.revision)
    await raw.kv.compact({ revision: String(head) })
    relay.loseNext('answer')
    const written = await handle.put('k', 'v2', { expectRevision: first!.revision })
    assert.equal(relay.losses(), 1)
    const kv = await stored('kv/k')
    assert.equal(kv?.value.toString(), 'v2')
    assert.deepEqual(written, { key: 'k', value: 'v2', revision: Number(kv.mod_revision) })
  } finally {
    await close()
  }
})

test('a transaction whose answer is lost, whose guard still holds but another condition no longer can, fails at once (not "unknown")', { skip }, async () => {
  const { relay, handle, raw, close } = await behindRelay('/lost-two-conditions/')
  try {
    const a = await handle.put('a', '1')
    const b = await handle.put('b', '1')
    // The request is lost before etcd sees it; meanwhile b changes, so the condition on b is false
    // for good, while the guard (a's revision) still holds.
    relay.loseNext('request', { thenHold: true })
    const txn = (handle as unknown as { _txn: (conditions: unknown[], ops: unknown[]) => Promise<{ succeeded: boolean }> })._txn(
      [{ key: 'kv/a', target: 'mod', revision: a!.revision }, { key: 'kv/b', target: 'mod', revision: b!.revision }],
      [{ type: 'put', key: 'kv/a', value: '2' }])
    await until(() => relay.losses() === 1, 'the request to be lost')
    await raw.put('/lost-two-conditions/kv/b').value('2').exec()
    await relay.flush()
    const result = await txn
    assert.equal(result.succeeded, false)
  } finally {
    await close()
  }
})

test('a compare-and-swap delete whose answer is lost reports that it deleted', { skip }, async () => {
  const { relay, handle, stored, close } = await behindRelay('/lost-delete/')
  try {
    const entry = await handle.put('k', 'v1')
    relay.loseNext('answer')
    assert.equal(await handle.delete('k', { expectRevision: entry!.revision }), true)
    assert.equal(relay.losses(), 1)
    assert.equal(await stored('kv/k'), undefined)
  } finally {
    await close()
  }
})

test('a compare-and-swap put that never reached etcd is sent again and applied', { skip }, async () => {
  const { relay, handle, stored, close } = await behindRelay('/lost-request/')
  try {
    const first = await handle.put('k', 'v1')
    relay.loseNext('request')
    const written = await handle.put('k', 'v2', { expectRevision: first!.revision })
    assert.equal(relay.losses(), 1)
    const kv = await stored('kv/k')
    assert.deepEqual(written, { key: 'k', value: 'v2', revision: Number(kv?.mod_revision) })
    assert.equal(kv?.version, '2')
  } finally {
    await close()
  }
})

test('a lease grant whose answer is lost makes one lease, not two', { skip }, async () => {
  const { relay, handle, raw, stored, close } = await behindRelay('/lost-grant/')
  const leases = async (): Promise<string[]> => (await raw.leaseClient.leaseLeases()).leases.map((lease) => lease.ID)
  try {
    const before = new Set(await leases())
    relay.loseNext('answer')
    await handle.join(testNode('node-a'), { ttlMs: 30_000 })
    assert.equal(relay.losses(), 1)
    // The liveness and record leases, and no other (etcd keeps an unused one until its TTL ends).
    const used = [(await stored('nodes/node-a/alive'))?.lease, (await stored('nodes/node-a/record'))?.lease]
    assert.deepEqual((await leases()).filter((id) => !before.has(id)).sort(), used.sort())
    await handle.leave()
  } finally {
    await close()
  }
})

test('a campaign whose candidate key\'s answer is lost keeps its place in line (the key the first attempt made)', { skip }, async () => {
  const { relay, handle, raw, close } = await behindRelay('/lost-campaign/')
  try {
    await handle.join(testNode('node-a'), { ttlMs: 30_000 })
    const before = Number((await raw.kv.range({ key: Buffer.from('/lost-campaign/') })).header.revision)
    relay.loseNext('answer')
    const leadership = await handle.campaign('e')
    assert.equal(relay.losses(), 1)
    // Written at the next revision, and not deleted and made again behind it.
    assert.equal(leadership.epoch, before + 1)
    assert.equal(Number((await raw.kv.range({ key: Buffer.from('/lost-campaign/') })).header.revision), before + 1)
    await leadership.resign()
    await handle.leave()
  } finally {
    await close()
  }
})
