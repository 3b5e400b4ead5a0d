// h70: rotateVolumeKey called on a node that is not the volume's primary is forwarded there with a
// token (a repeat of it is not counted twice). When that primary closed while its in-sync copies
// were still to confirm the rotation, the caller got WRITE_CONCERN_UNSATISFIED, although the
// cluster's record had counted the rotation and the next primary finished it: the caller was told
// "failed" for a rotation that happened, and a retry rotated twice. Now the primary answers a step
// it loses the role under with NOT_LEADER, the caller sends the call again with the same token to
// the next primary, and that one (which may be the caller's own node) answers once it has taken
// the counted rotation. A call made on the primary itself goes on the same way (with a token) to
// the next primary when the role moves away under it. The moment is hit deterministically: the
// primary's stream batch carrying the rotation is held (so it waits for its copies), and the
// primary closes (or the record names another one) once it has gone out.
// In-process nodes on their own disks with a memory network and coordinator, then the same with
// real processes over TCP and a real etcd (the primary closed by SIGTERM, a copy SIGSTOPped).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { WriteConcern } from '../src/index.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { namePrimary, recordOf } from './support/replica-records.js'
import { encryptedVolume, holdStream } from './support/rotation-cluster.js'
import { BS, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { childExit } from './support/child-script.js'
import { spawnNodeChild } from './support/node-child-calls.js'
import { etcdSkipReason, startEtcd, type EtcdServer } from './support/etcd.js'

const kit = diskCluster('galleon-h70-')
const CHILD = fileURLToPath(new URL('./support/h70-node-child.ts', import.meta.url))

describe('h70: a forwarded rotateVolumeKey whose primary closes under it', () => {
  it('waited for on a copy\'s node: answered by the next primary (rotated once, re-encrypted), not WRITE_CONCERN_UNSATISFIED', { timeout: 90_000 }, async () => {
    const { network, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    await encryptedVolume(nodes, 3)
    const held = holdStream(network, 'n1')
    const rotation = observed(n3.g.rotateVolumeKey('keys', { wait: true }))
    // The primary counted the rotation, began it, and sent it to its copies: it now waits for them.
    await until('the primary sent the rotation to its copies', () => held() > 0, 20_000)
    assert.equal((await n1.g.getVolumeEncryption('keys')).keyGeneration, 1, 'the primary counted and began the rotation')
    await n1.g.close()
    network.drop(0)
    const answer = await rotation
    const status = await n3.g.replicationStatus('keys')
    assert.ok(status.primary === 'n2' || status.primary === 'n3', `a copy's node took over: ${JSON.stringify(status)}`)
    const primary = status.primary === 'n2' ? n2 : n3
    assert.equal(answer.keyGeneration, 1, `one rotation, answered: ${JSON.stringify(answer)}`)
    assert.equal(answer.rotation, undefined, `the wait ended with the re-encryption: ${JSON.stringify(answer)}`)
    const now = await primary.g.getVolumeEncryption('keys')
    assert.equal(now.keyGeneration, 1, `the next primary counts one rotation, not two: ${JSON.stringify(now)}`)
    assert.equal(now.rotation, undefined)
    assert.deepEqual(now.keyVersions, [now.keyVersion], 'the next primary\'s copy keeps only its new key')
    assert.deepEqual(await n3.g.readBlock('keys', 0), block(1))
    // A next rotation counts as the second.
    assert.equal((await n2.g.rotateVolumeKey('keys')).keyGeneration, 2)
  })

  it('not waited for, on the node that becomes the next primary: answered there from the counted rotation', { timeout: 90_000 }, async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await encryptedVolume(nodes, 2)
    const held = holdStream(network, 'n1')
    const rotation = observed(n2.g.rotateVolumeKey('keys'))
    await until('the primary sent the rotation to its copy', () => held() > 0, 20_000)
    await n1.g.close()
    network.drop(0)
    const answer = await rotation
    assert.equal((await n2.g.replicationStatus('keys')).primary, 'n2', 'the caller\'s node took over')
    assert.equal(answer.keyGeneration, 1, `one rotation, answered: ${JSON.stringify(answer)}`)
    await until('n2 re-encrypted its copy', async () => (await n2.g.getVolumeEncryption('keys')).rotation === undefined, 20_000)
    assert.equal((await n2.g.getVolumeEncryption('keys')).keyGeneration, 1, 'one rotation, not two')
    assert.deepEqual(await n2.g.readBlock('keys', 0), block(1))
  })
})

describe('h70: rotateVolumeKey called on the primary, which loses the role under it', () => {
  it('is answered by the next primary from the rotation it counted (not WRITE_CONCERN_UNSATISFIED), counted once', { timeout: 90_000 }, async () => {
    const { network, coordinators, nodes } = await kit.cluster(3)
    const [n1, n2, n3] = nodes as [DiskNode, DiskNode, DiskNode]
    await encryptedVolume(nodes, 3)
    const held = holdStream(network, 'n1')
    const rotation = observed(n1.g.rotateVolumeKey('keys', { wait: true }))
    await until('the primary sent the rotation to its copies', () => held() > 0, 20_000)
    // The cluster's leader fails the volume over to n2 as it does when the primary's lease ended
    // (n1 paused past its lease, say): the record names n2 under the next epoch, the only one in sync.
    const volumeId = (await n1.g.getVolume('keys')).id
    const record = await recordOf(coordinators, volumeId)
    assert.equal(record?.primary, 'n1')
    assert.equal(record?.spec.keyGeneration, 1, 'the record counts the rotation')
    await namePrimary(coordinators, volumeId, 'n2')
    network.drop(0)
    const answer = await rotation
    assert.equal((await n3.g.replicationStatus('keys')).primary, 'n2')
    assert.equal(answer.keyGeneration, 1, `one rotation, answered: ${JSON.stringify(answer)}`)
    assert.equal(answer.rotation, undefined, `the wait ended with the re-encryption: ${JSON.stringify(answer)}`)
    const now = await n2.g.getVolumeEncryption('keys')
    assert.equal(now.keyGeneration, 1, `the next primary counts one rotation, not two: ${JSON.stringify(now)}`)
    assert.equal(now.rotation, undefined)
    assert.deepEqual(await n1.g.readBlock('keys', 0), block(1))
  })
})

const SKIP = etcdSkipReason()

/** A node in a child process (test/support/h70-node-child.ts). */
interface ChildNode {
  readonly id: string
  readonly child: ChildProcess
  /** Calls a GalleonFS method there; rejects with { code, message } as the node answered. */
  call: (op: string, ...args: unknown[]) => Promise<unknown>
}

describe('h70 with real processes: TCP transport, etcd, the primary closed by SIGTERM', { skip: SKIP }, () => {
  const children = new Set<ChildProcess>()
  let root: string | undefined
  let etcd: EtcdServer | undefined
  after(async () => {
    for (const child of children) {
      child.kill('SIGCONT')
      child.kill('SIGKILL')
    }
    await Promise.all([...children].map(async (child) => await childExit(child)))
    await etcd?.stop()
    if (root !== undefined) await rm(root, { recursive: true, force: true })
  })

  async function startChild (id: string): Promise<ChildNode> {
    const { child, call } = await spawnNodeChild(CHILD, [id, join(root as string, id), (etcd as EtcdServer).endpoint, '/h70', 'h70-cluster-secret'], id, {
      onSpawn: (spawned) => {
        children.add(spawned)
        spawned.once('exit', () => { children.delete(spawned) })
      }
    })
    return { id, child, call }
  }

  it('a rotation waited for on a copy\'s node is answered by the next primary, counted once', { timeout: 120_000 }, async () => {
    root = await mkdtemp(join(tmpdir(), 'galleon-h70-procs-'))
    etcd = await startEtcd()
    const [n1, n2, n3] = await Promise.all(['n1', 'n2', 'n3'].map(startChild)) as [ChildNode, ChildNode, ChildNode]
    const nodes = [n1, n2, n3]
    await until('every node sees every other', async () => (await Promise.all(nodes.map(async (n) => await n.call('healthyMembers')))).every((count) => count === 3), 30_000, 50)
    for (const node of nodes) await node.call('createStorageClass', { name: 'secret', parameters: { replication: '3', encryption: 'true' } })
    await n1.call('createVolume', { name: 'keys', sizeBytes: 16 * BS, storageClass: 'secret' })
    await n1.call('writeBlock', 'keys', 0, Buffer.from(block(1)).toString('base64'), WriteConcern.WriteReplicated)
    await until('every copy is in sync', async () => {
      const status = await n1.call('replicationStatus', 'keys') as { role: string, inSync: string[] }
      return status.role === 'primary' && status.inSync.length === 3
    }, 30_000, 50)
    // n2 stops (SIGSTOP): the primary's rotation waits for its confirmation; n3 calls and waits.
    n2.child.kill('SIGSTOP')
    try {
      const rotation = observed(n3.call('rotateVolumeKey', 'keys', { wait: true }))
      await until('the primary counted and began the rotation', async () => (await n1.call('getVolumeEncryption', 'keys') as { keyGeneration?: number }).keyGeneration === 1, 30_000, 20)
      const exited = childExit(n1.child)
      n1.child.kill('SIGTERM')
      await exited
      assert.equal(n1.child.exitCode, 0, 'the primary closed and exited')
      n2.child.kill('SIGCONT')
      const answer = await rotation.catch((err: { code?: string, message?: string }) => assert.fail(`the rotation counted by the cluster was answered ${err.code ?? '?'}: ${err.message ?? ''}`)) as { keyGeneration?: number, rotation?: unknown }
      assert.equal(answer.keyGeneration, 1, `one rotation, answered: ${JSON.stringify(answer)}`)
      assert.equal(answer.rotation, undefined, `the wait ended with the re-encryption: ${JSON.stringify(answer)}`)
    } finally {
      n2.child.kill('SIGCONT')
    }
    const status = await n3.call('replicationStatus', 'keys') as { primary?: string }
    const primary = status.primary === 'n2' ? n2 : n3
    assert.ok(status.primary === 'n2' || status.primary === 'n3', `a copy's node took over: ${JSON.stringify(status)}`)
    const now = await primary.call('getVolumeEncryption', 'keys') as { keyGeneration?: number, rotation?: unknown }
    assert.equal(now.keyGeneration, 1, `the next primary counts one rotation, not two: ${JSON.stringify(now)}`)
    assert.equal(await n3.call('readBlock', 'keys', 0), Buffer.from(block(1)).toString('base64'))
  })
})
