// Review r68: a class change of a replicated volume made while another copy still re-encrypts with
// the volume's new data key (rotateVolumeKey with { wait: true } waits for the primary's copy only).
// That copy refuses to convert until its re-encryption is done; the class change used to count
// each refusal as a failed conversion and gave up after three polls with BUSY. Two in-process
// nodes on their own disks; n2's block store holds its reads at a gate, so its re-encryption
// (which reads every block) stays under way for as long as the test wants.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { GalleonFS, WriteConcern } from '../src/index.js'
import type { BlockStore } from '../src/drivers.js'
import { until } from './support/wait.js'
import { BS, allInSync, block, diskCluster } from './support/disk-cluster.js'
import { outcomeOf } from './support/assertions.js'

const kit = diskCluster('galleon-r68-')

/** A file block store whose reads wait while the gate is shut; `waiting` counts reads held so far. */
function gatedStore (location: string): { store: BlockStore, shut: () => void, open: () => void, waiting: () => number } {
  const inner = new FileBlockStore({ location })
  let gate: Promise<void> | undefined
  let openGate: () => void = () => {}
  let waiting = 0
  const store = new Proxy(inner, {
    get: (target, name) => {
      const value = Reflect.get(target, name, target) as unknown
      if (typeof value !== 'function') return value
      if (name !== 'get' && name !== 'getMany') return value.bind(target)
      return async (...args: unknown[]) => {
        if (gate !== undefined) { waiting++; await gate }
        return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args)
      }
    }
  }) as unknown as BlockStore
  return {
    store,
    shut: () => { gate = new Promise<void>((resolve) => { openGate = resolve }) },
    open: () => { gate = undefined; openGate() },
    waiting: () => waiting
  }
}

describe('review r68: a class change while a copy re-encrypts with the new data key', () => {
  it('waits for that copy to finish re-encrypting, then converts it (it used to give up with BUSY after 3 tries)', { timeout: 120_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await kit.startNode(network, coordinators, 'n1')
    const dir2 = await kit.tempDir('galleon-r68-n2-')
    const gated = gatedStore(join(dir2, 'gated-blocks'))
    const n2errors: string[] = []
    const g2 = kit.track(await GalleonFS.open({
      storagePath: dir2,
      blockStore: gated.store,
      cluster: { nodeId: 'n2', transport: new MemoryTransport({ network, nodeId: 'n2' }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
    }))
    g2.on('replication:error', (event: { message: string }) => { n2errors.push(event.message) })
    await until('both nodes see each other', () => [n1.g, g2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    for (const g of [n1.g, g2]) {
      await g.createStorageClass({ name: 'plain2', parameters: { replication: '2' } })
      await g.createStorageClass({ name: 'secret2', parameters: { replication: '2', encryption: 'true' } })
    }
    const blocks = 64
    await n1.g.createVolume({ name: 'v', sizeBytes: blocks * BS, storageClass: 'secret2' })
    const model = new Uint8Array(blocks * BS)
    for (let i = 0; i < blocks; i++) model.set(block(i + 3), i * BS)
    await n1.g.write('v', 0, model, WriteConcern.WriteReplicated)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'v', 2), 20_000)

    // n2's re-encryption waits at its first read of a block.
    gated.shut()
    await n1.g.rotateVolumeKey('v', { wait: true })
    await until('the copy on n2 re-encrypts, held at the gate', async () => gated.waiting() > 0 && (await g2.getVolumeEncryption('v')).rotation !== undefined, 20_000)

    // The class change asks n2 for its copy's layout on every poll. Once n2 has refused to convert
    // and been asked six times more (the class change gave up at the third refusal), the gate opens.
    let asked = 0
    network.drop((m) => { if (m.from === 'n1' && m.to === 'n2' && m.type === 'request' && m.kind === 'repl:layout') asked++; return false })
    let settled = false
    const migrating = outcomeOf(n1.g.migrateVolume('v', { storageClass: 'plain2' })).finally(() => { settled = true })
    await until('n2 refused to convert while it re-encrypts', () => settled || n2errors.some((m) => m.includes('converting the copy')), 30_000)
    const askedAtRefusal = asked
    await until('n2 was asked six more times, or the class change ended', () => settled || asked >= askedAtRefusal + 6, 30_000)
    const endedWhileHeld = settled
    gated.open()
    network.drop(0)
    const outcome = await migrating
    assert.equal(outcome.code, 'ok', `the class change (${endedWhileHeld ? 'ended while n2 still re-encrypted' : 'still waited when n2 was let go'}): ${outcome.code} ${outcome.message}; n2 reported: ${n2errors.join(' | ')}`)
    for (const g of [n1.g, g2]) {
      const volume = await g.getVolume('v')
      assert.equal(volume.storageClass, 'plain2')
      assert.equal(volume.encrypted, false)
      assert.deepEqual(await g.read('v', 0, model.byteLength), model, 'the copy reads what was written')
    }
    assert.equal((await g2.getVolumeEncryption('v').catch(() => ({ rotation: undefined }))).rotation, undefined)
  })
})
