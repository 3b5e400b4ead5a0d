// Review r64: key rotations against class changes started on another node, and after one gave up.
// Two in-process nodes on their own disks, a memory network and coordinator whose first handle
// (n1's) can hold one write.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryCoordinatorCluster, MemoryNetwork } from '../backends/memory/index.js'
import { WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { BS, block, diskCluster } from './support/disk-cluster.js'
import { classPair, type ClassPair } from './support/control-call-cluster.js'
import { outcomeOf } from './support/assertions.js'

const kit = diskCluster('galleon-r64-')

type Pair = ClassPair
const pair = async (storageClass: string, blocks: number): Promise<Pair> => await classPair(kit, storageClass, blocks)

describe('review r64: a class change started on another node than the primary', () => {
  it('migrateVolume on n2 while the primary records a key rotation: one of them is refused with BUSY, the other completes; both copies end in one class, reading what was written', async () => {
    const p = await pair('secret2', 256)
    p.hold.arm('"keyGeneration":1')
    const rotated = outcomeOf(p.n1.g.rotateVolumeKey('v', { wait: true }))
    await until('the rotation is writing the record', () => p.hold.held() === 1)
    let progressed = false
    const migrating = outcomeOf(p.n2.g.migrateVolume('v', { storageClass: 'plain2' }, { onProgress: () => { if (!progressed) { progressed = true; p.hold.release() } } }))
    void migrating.finally(() => { p.hold.release() })
    const [outcome, rotation] = await Promise.all([migrating, rotated])
    const classes = await Promise.all([p.n1, p.n2].map(async (n) => `${n.id} ${(await n.g.getVolume('v')).storageClass}`))
    const state = `class change on n2: ${outcome.code} ${outcome.message}; rotation: ${rotation.code} ${rotation.message}; copies: ${classes.join(', ')}`
    assert.ok([outcome.code, rotation.code].includes('ok'), state)
    assert.ok([outcome.code, rotation.code].every((code) => code === 'ok' || code === 'BUSY'), state)
    const storageClass = outcome.code === 'ok' ? 'plain2' : 'secret2'
    for (const node of [p.n1, p.n2]) {
      await until(`the copy on ${node.id} is in ${storageClass}`, async () => (await node.g.getVolume('v')).storageClass === storageClass, 30_000)
      assert.deepEqual(await node.g.read('v', 0, p.model.byteLength), p.model, `the copy on ${node.id} reads what was written (${state})`)
    }
  })
})

describe('review r64: a key rotation after a class change gave up', () => {
  it('the primary\'s copy could not convert (its node lacks the class): rotateVolumeKey is refused with BUSY naming both ways out, and migrating the volume back lets it rotate', async () => {
    const p = await pair('secret2', 64)
    // Only n2 knows secret2b: the copy on n1 (the primary) cannot convert to it.
    await p.n2.g.createStorageClass({ name: 'secret2b', parameters: { replication: '2', encryption: 'true' } })
    const gaveUp = await outcomeOf(p.n2.g.migrateVolume('v', { storageClass: 'secret2b' }))
    assert.equal(gaveUp.code, 'STORAGE_CLASS_NOT_FOUND', `the class change: ${gaveUp.code} ${gaveUp.message}`)
    for (const node of [p.n1, p.n2]) {
      const refused = await outcomeOf(node.g.rotateVolumeKey('v'))
      assert.equal(refused.code, 'BUSY', `rotateVolumeKey on ${node.id}: ${refused.code} ${refused.message}`)
      assert.match(refused.message, /secret2b/, `rotateVolumeKey on ${node.id} names the class the record names: ${refused.message}`)
      assert.match(refused.message, /back to (storage class )?secret2\b/, `rotateVolumeKey on ${node.id} says the volume can be migrated back: ${refused.message}`)
    }
    await p.n1.g.migrateVolume('v', { storageClass: 'secret2' })
    for (const node of [p.n1, p.n2]) {
      await until(`the copy on ${node.id} is back in secret2`, async () => (await node.g.getVolume('v')).storageClass === 'secret2', 30_000)
    }
    const rotated = await outcomeOf(p.n2.g.rotateVolumeKey('v', { wait: true }))
    assert.equal(rotated.code, 'ok', `rotateVolumeKey after the way back: ${rotated.code} ${rotated.message}`)
    for (const node of [p.n1, p.n2]) assert.deepEqual(await node.g.read('v', 0, p.model.byteLength), p.model, `the copy on ${node.id} reads what was written`)
  })
})

describe('key rotation against a move of the volume to another node', () => {
  it('rotateVolumeKey while migrateVolume({ node }) of a 1-copy encrypted volume records the move is refused with BUSY; the move completes with the data intact', async () => {
    const p = await pair('secret1', 128)
    // The move's record of the volume in the coordinator (the copy it is about to get on n2).
    p.hold.arm('"name":"v"')
    const moving = outcomeOf(p.n1.g.migrateVolume('v', { node: 'n2' }))
    await until('the move is writing the record', () => p.hold.held() === 1)
    const rotated = await outcomeOf(p.n1.g.rotateVolumeKey('v', { wait: true }))
    p.hold.release()
    assert.equal(rotated.code, 'BUSY', `rotateVolumeKey during the move: ${rotated.code} ${rotated.message}`)
    assert.match(rotated.message, /moving to another node/)
    const moved = await moving
    assert.equal(moved.code, 'ok', `the move: ${moved.code} ${moved.message}`)
    assert.deepEqual(await p.n2.g.read('v', 0, p.model.byteLength), p.model)
  })

  it('migrateVolume({ node }) of a 1-copy encrypted volume while its key rotation re-encrypts it is refused with BUSY; once the rotation is done the move works', async () => {
    const p = await pair('secret1', 2048)
    const rotating = outcomeOf(p.n1.g.rotateVolumeKey('v', { wait: true }))
    await until('the rotation re-encrypts', async () => (await p.n1.g.getVolumeEncryption('v')).rotation !== undefined)
    const moved = await outcomeOf(p.n1.g.migrateVolume('v', { node: 'n2' }))
    assert.equal(moved.code, 'BUSY', `the move during the rotation: ${moved.code} ${moved.message}`)
    assert.match(moved.message, /re-encrypting/)
    assert.equal((await rotating).code, 'ok')
    assert.equal((await outcomeOf(p.n1.g.migrateVolume('v', { node: 'n2' }))).code, 'ok')
    assert.deepEqual(await p.n2.g.read('v', 0, p.model.byteLength), p.model)
  })
})

describe('a move of a volume to a node that goes away', () => {
  it('migrateVolume({ node: n2 }) ends with BACKEND_UNAVAILABLE once n2 closes before its copy is in sync (not at the 30-minute deadline); the volume stays on n1, with its one copy and its data', { timeout: 120_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await kit.startNode(network, coordinators, 'n1')
    const n2 = await kit.startNode(network, coordinators, 'n2')
    await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
    await n1.g.createVolume({ name: 'v', sizeBytes: 64 * BS })
    const model = new Uint8Array(64 * BS)
    for (let i = 0; i < 64; i++) model.set(block(i + 3), i * BS)
    await n1.g.write('v', 0, model, WriteConcern.WriteDurable)
    // Nothing reaches n2 over the network: its copy never fills (its lease, kept with the coordinator, stays alive).
    network.drop((m) => m.to === 'n2', { silent: true })
    const moving = outcomeOf(n1.g.migrateVolume('v', { node: 'n2' }))
    await until('the move placed a copy on n2', async () => (await n1.g.getVolume('v')).replicas !== undefined && (await n1.g.replicationStatus('v').catch(() => undefined))?.nodes.includes('n2') === true)
    await n2.g.close()
    const moved = await moving
    assert.equal(moved.code, 'BACKEND_UNAVAILABLE', `the move: ${moved.code} ${moved.message}`)
    assert.match(moved.message, /n2 (left the cluster|stopped renewing its lease)/)
    network.drop(() => false)
    await until('the volume has its one copy, on n1, again', async () => JSON.stringify((await n1.g.replicationStatus('v')).nodes) === '["n1"]')
    assert.deepEqual(await n1.g.read('v', 0, model.byteLength), model)
  })
})

