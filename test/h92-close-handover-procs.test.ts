// h92 with real processes: three nodes over TCP, coordinated by a real etcd, each with a 60 s lease.
// The primary n1 is stopped by SIGTERM (a daemon stopped for a rolling restart: the instance closes
// cleanly) while n2 writes: the close hands the primary role to an in-sync copy, so n2's writes
// resolve with n1 still listed healthy (its lease running: no failover happened), every
// acknowledged write is there, and n1 started again is a copy that resyncs. Before, the volume had
// no primary until n1's lease lapsed, and a write on n2 failed once its failover wait was out.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { BS, block } from './support/disk-cluster.js'
import { childExit } from './support/child-script.js'
import { spawnNodeChild } from './support/node-child-calls.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'

const CHILD = fileURLToPath(new URL('./support/h70-node-child.ts', import.meta.url))
const LEASE_MS = 60_000

interface ChildNode { readonly id: string, readonly child: ChildProcess, call: (op: string, ...args: unknown[]) => Promise<unknown> }
interface Status { role?: string, primary?: string, inSync?: string[], nodes?: string[] }

describe('h92 with real processes: TCP, etcd, the primary stopped by SIGTERM', { skip: etcdSkipReason() }, () => {
  const children = new Set<ChildProcess>()
  let root: string | undefined
  let etcd: EtcdServer | undefined
  after(async () => {
    for (const child of children) child.kill('SIGKILL')
    await Promise.all([...children].map(async (child) => await childExit(child)))
    await etcd?.stop()
    if (root !== undefined) await rm(root, { recursive: true, force: true })
  })

  async function startChild (id: string): Promise<ChildNode> {
    const { child, call } = await spawnNodeChild(CHILD, [id, join(root as string, id), (etcd as EtcdServer).endpoint, '/h92', 'h92-cluster-secret', String(LEASE_MS)], id, {
      onSpawn: (spawned) => {
        children.add(spawned)
        spawned.once('exit', () => { children.delete(spawned) })
      }
    })
    return { id, child, call }
  }

  it('n2\'s writes resolve through n1\'s close with n1 still listed healthy; nothing acknowledged is lost; n1 comes back as a copy and resyncs', { timeout: 180_000 }, async () => {
    root = await mkdtemp(join(tmpdir(), 'galleon-h92-procs-'))
    etcd = await startEtcd()
    const n1 = await startChild('n1')
    const [n2, n3] = await Promise.all(['n2', 'n3'].map(startChild)) as [ChildNode, ChildNode]
    await until('every node sees every other', async () => (await Promise.all([n1, n2, n3].map(async (n) => await n.call('healthyMembers')))).every((count) => count === 3), 30_000, 50)
    await n1.call('createVolume', { name: 'v', sizeBytes: 64 * BS, replicas: 3 })
    await until('every copy is in sync', async () => {
      const status = await n1.call('replicationStatus', 'v') as Status
      return status.role === 'primary' && status.inSync?.length === 3
    }, 30_000, 50)
    for (let i = 0; i < 4; i++) await n1.call('writeBlock', 'v', i, Buffer.from(block(i)).toString('base64'), WriteConcern.WriteAcknowledged)

    const acknowledged = new Map<number, number>()
    const failures: string[] = []
    let writing = true
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        const index = 4 + (i % 40)
        try {
          await n2.call('writeBlock', 'v', index, Buffer.from(block(500 + i)).toString('base64'), WriteConcern.WriteReplicated)
          acknowledged.set(index, 500 + i)
        } catch (err) {
          failures.push(`${(err as { code?: string }).code ?? '?'}: ${(err as Error).message}`)
        }
      }
    })()
    await until('n2 has written a little', () => acknowledged.size >= 3, 30_000, 20)
    const exited = childExit(n1.child)
    n1.child.kill('SIGTERM')
    await exited
    assert.equal(n1.child.exitCode, 0, 'n1 closed and exited')
    // A write after the close (before: it waited for a primary, then failed after the failover wait).
    await n2.call('writeBlock', 'v', 50, Buffer.from(block(50)).toString('base64'), WriteConcern.WriteReplicated)
      .catch((err: { code?: string, message?: string }) => assert.fail(`a write on n2 after n1 closed: ${err.code ?? '?'}: ${err.message ?? ''}`))
    acknowledged.set(50, 50)
    const status = await n2.call('replicationStatus', 'v') as Status
    assert.ok(status.primary === 'n2' || status.primary === 'n3', `an in-sync copy is primary: ${JSON.stringify(status)}`)
    assert.equal(await n2.call('healthyMembers'), 3, 'n1 is still listed healthy: its lease runs on, nothing failed over')
    writing = false
    await writer
    assert.deepEqual(failures, [], 'no write on n2 failed')
    for (let i = 0; i < 4; i++) assert.equal(await n3.call('readBlock', 'v', i), Buffer.from(block(i)).toString('base64'), `n1's weak write ${i} survived`)
    for (const [index, seed] of acknowledged) assert.equal(await n3.call('readBlock', 'v', index), Buffer.from(block(seed)).toString('base64'), `n2's write to block ${index}`)

    const back = await startChild('n1')
    await until('n1 is in sync again', async () => ((await back.call('replicationStatus', 'v')) as Status).inSync?.includes('n1') === true, 60_000, 100)
    const again = await back.call('replicationStatus', 'v') as Status
    assert.equal(again.role, 'replica', `n1 came back as a copy: ${JSON.stringify(again)}`)
    assert.equal(await back.call('readBlock', 'v', 50), Buffer.from(block(50)).toString('base64'))
  })
})
