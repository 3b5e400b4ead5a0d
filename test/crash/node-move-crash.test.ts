// Review r68: migrateVolume(v, { node }) of a 2-copy volume (this node's copy moved to a third
// node) with a node process killed by SIGKILL: the primary (the moving node) or the move's target,
// once the cluster's record lists the target's new copy (it fills), and at the hand-over of the
// primary role (the old primary as it learns it was handed over; the heir, whichever of the other
// two nodes the role goes to, as it takes it up).
// A light WriteReplicated load runs meanwhile. The node is started again on its data; then the
// volume must be served with every acknowledged write, the same move again must finish it (the
// volume on the other two nodes, as the record says, the moving node no longer holding it), and
// each remaining copy must hold the data (the primary is killed at the end, the other is read).
// Real processes over TCP (test/support/r68-node-child.ts) and a real etcd.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { WriteConcern } from '../../src/index.js'
import { parseRecord, recordKey, type ReplicaSetRecord } from '../../src/replication/records.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from '../support/etcd.js'
import { BS, block } from '../support/disk-cluster.js'
import { procCluster, servedBy, type ProcNode } from '../support/r68-procs.js'
import { until, within } from '../support/wait.js'

const skip = etcdSkipReason()
const BLOCKS = 2048
const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64')
const digest = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')
const outcome = async (call: Promise<unknown>): Promise<string> => await call.then(() => 'ok', (err: { code?: string, message?: string }) => `${err.code ?? '?'} ${err.message ?? ''}`)


describe('a move of a replicated volume to another node with a node killed (SIGKILL)', { skip }, () => {
  let etcd: EtcdServer
  let root: string
  before(async () => {
    etcd = await startEtcd()
    root = await mkdtemp(join(tmpdir(), 'galleon-r68-move-'))
  })
  after(async () => {
    await etcd?.stop()
    await rm(root, { recursive: true, force: true })
  })

  const cases: Array<{ victim: 'mover' | 'target' | 'heir', point: 'added' | 'demoted' | 'promoted' }> = [
    { victim: 'mover', point: 'added' },
    { victim: 'target', point: 'added' },
    { victim: 'mover', point: 'demoted' },
    { victim: 'heir', point: 'promoted' }
  ]
  for (const { victim, point } of cases) {
    it(`the ${victim === 'mover' ? 'moving primary' : victim}${victim === 'heir' ? ' of the primary role' : ''} killed ${point === 'added' ? 'once the record lists the new copy' : `when ${point}`}: served with its data after the restart, and the same move finishes`, { timeout: 240_000 }, async () => {
      const dir = join(root, `${victim}-${point}`)
      await mkdir(dir)
      const prefix = `/r68-move-${victim}-${point}/`
      const procs = procCluster(dir, etcd.endpoint, prefix)
      const coordinator = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint], prefix, requestTimeoutMs: 2000 })
      const recordNow = async (id: string): Promise<ReplicaSetRecord | undefined> => parseRecord((await coordinator.get(recordKey(id)))?.value ?? '')
      try {
        const nodes = new Map<string, ProcNode>()
        for (const id of ['n1', 'n2', 'n3']) nodes.set(id, await procs.start(id))
        const node = (id: string): ProcNode => nodes.get(id) as ProcNode
        await until('every node sees every other', async () => (await Promise.all([...nodes.values()].map(async (n) => await n.call('healthyMembers')))).every((c) => c === 3), 30_000, 50)
        for (const n of nodes.values()) await n.call('createStorageClass', { name: 'plain2', parameters: { replication: '2' } })
        const volume = await node('n1').call('createVolume', { name: 'v', sizeBytes: BLOCKS * BS, storageClass: 'plain2' }) as { id: string }
        const model = new Uint8Array(BLOCKS * BS)
        for (let i = 0; i < BLOCKS; i++) model.set(block(i + 1), i * BS)
        for (let at = 0; at < BLOCKS; at += 256) await node('n1').call('write', 'v', at * BS, b64(model.subarray(at * BS, (at + 256) * BS)), WriteConcern.WriteReplicated)
        await servedBy([node('n1')], 2, 'both copies are in sync')
        const placed = await recordNow(volume.id)
        const stays = placed?.nodes.find((n) => n !== 'n1') as string
        const target = ['n2', 'n3'].find((n) => n !== stays) as string
        // The heir: armed on both other nodes, the one killed is the one the role went to.
        const armed = victim === 'heir' ? [stays, target] : [victim === 'mover' ? 'n1' : target]
        if (point !== 'added') for (const id of armed) await node(id).armKill(point, BLOCKS)
        const moving = outcome(node('n1').call('migrateVolume', 'v', { node: target }))
        let stop = false
        const uncertain = new Map<number, Uint8Array>()
        const load = (async () => {
          for (let n = 0; !stop; n++) {
            const index = n % 8
            const data = block(10_000 + n)
            try {
              await node(stays).call('writeBlock', 'v', index, b64(data), WriteConcern.WriteReplicated)
              model.set(data, index * BS)
            } catch {
              uncertain.set(index, data)
              return
            }
          }
        })()
        if (point === 'added') {
          await until('the record lists the new copy', async () => (await recordNow(volume.id))?.nodes.includes(target) === true, 60_000, 5)
          node(armed[0] as string).child.kill('SIGKILL')
        }
        const victimId = await within(`${armed.join(' or ')} was killed (${point})`, Promise.race(armed.map(async (id) => { await node(id).exited; return id })), 120_000)
        // The other armed node (the heir case) must not die later on its own.
        for (const id of armed) if (id !== victimId) await node(id).armKill('recorded', Number.MAX_SAFE_INTEGER)
        stop = true
        await load
        const first = await Promise.race([moving, Promise.resolve('still waiting')])
        nodes.set(victimId, await procs.start(victimId))
        const all = [...nodes.values()]
        let primary = await servedBy(all, 2, `after the restart of ${victimId}, a primary serves v with its copies in sync (first call: ${first})`)
        for (const [index, data] of uncertain) {
          const now = Buffer.from(await primary.call('readBlock', 'v', index) as string, 'base64')
          const before = model.subarray(index * BS, (index + 1) * BS)
          assert.ok(now.equals(data) || now.equals(before), `block ${index} holds the write in flight at the kill or what it held before`)
          model.set(now, index * BS)
        }
        assert.equal(await primary.call('digest', 'v'), digest(model), 'the volume reads every acknowledged write')

        // The move again, from n1 while it still holds a copy (else it is done already).
        const first2 = await Promise.race([moving, Promise.resolve('still waiting')])
        const holds = await node('n1').call('getVolume', 'v').then(() => true, () => false)
        const again = holds ? await outcome(node('n1').call('migrateVolume', 'v', { node: target })) : 'not needed'
        const record = await recordNow(volume.id)
        assert.ok(again === 'ok' || again === 'not needed' || (again.startsWith('INVALID_ARGUMENT') && record?.nodes.includes('n1') !== true), `the move again: ${again} (first call: ${first2}); record: ${JSON.stringify(record)}`)
        assert.deepEqual([...(record?.nodes ?? [])].sort(), [stays, target].sort(), `the cluster's record: ${JSON.stringify(record)}; move again: ${again}`)
        await until('n1 no longer holds the volume', async () => await node('n1').call('getVolume', 'v').then(() => false, (err: { code?: string }) => err.code === 'VOLUME_NOT_FOUND'), 60_000, 100)
        const remaining = [node(stays), node(target)]
        for (const n of remaining) {
          const view = await n.call('getVolume', 'v') as { storageClass: string, replicas: number }
          assert.deepEqual([view.storageClass, view.replicas], ['plain2', 2], `the copy on ${n.id}`)
        }
        const last = block(99_999)
        await node(stays).call('writeBlock', 'v', BLOCKS - 1, b64(last), WriteConcern.WriteReplicated)
        model.set(last, (BLOCKS - 1) * BS)
        primary = await servedBy(remaining, 2, 'both remaining copies in sync after a new write')
        assert.equal(await primary.call('digest', 'v'), digest(model), 'the primary reads every write')
        const other = primary === remaining[0] ? remaining[1] as ProcNode : remaining[0] as ProcNode
        primary.child.kill('SIGKILL')
        await primary.exited
        await servedBy([other], 1, `${other.id} took the volume over`, false).catch(async (err: Error) => {
          const status = await other.call('replicationStatus', 'v').catch((e: Error) => e.message)
          const members = await other.call('healthyMembers').catch((e: Error) => e.message)
          throw new Error(`${err.message}; record: ${JSON.stringify(await recordNow(volume.id))}; status on ${other.id}: ${JSON.stringify(status)}; healthy members seen there: ${String(members)}; events of n1: ${node('n1').events.slice(-5).join(' | ')}`)
        })
        assert.equal(await other.call('digest', 'v'), digest(model), `the copy on ${other.id} reads every write`)
      } finally {
        await procs.stopAll()
        await coordinator.close()
      }
    })
  }
})
