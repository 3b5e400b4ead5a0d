// Review r32 of h72 (forwarded control calls carry a token and are sent again after a lost answer).
// 1. A repeat is answered with what the first attempt did, its failure too: a forwarded
//    deleteSnapshot refused BUSY on the primary (a clone still reads the snapshot) whose answer was
//    lost was told it succeeded when another call deleted the snapshot before the repeat came.
// 2. The implicit snapshot a deleted clone leaves to its source's primary (forwardReleases) was sent
//    with a token, so a primary out of reach was asked again for up to 30 s, which the clone's
//    deletion waited out; it is asked once, as before h72.
// In-process nodes on their own disks with a memory network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { namePrimary } from './support/replica-records.js'
import { replicatedVolume } from './support/control-call-cluster.js'
import { diskCluster, type DiskNode } from './support/disk-cluster.js'

const kit = diskCluster('galleon-r32-')

describe('review r32: a forwarded control call repeated after a lost answer', () => {
  it('deleteSnapshot refused BUSY on the primary is answered BUSY, though another call deleted the snapshot before the repeat', { timeout: 60_000 }, async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await replicatedVolume(nodes, 2)
    await n1.g.createSnapshot('v', 's1')
    await n1.g.cloneVolume({ volume: 'v', snapshot: 's1' }, 'c')
    await until('n2 has the snapshot', async () => (await n2.g.listSnapshots('v')).length === 1)
    // The primary's answer (BUSY) is lost; n2's repeats are lost too until released.
    let lost = 0
    let repeats = 0
    let holding = true
    network.drop((m) => {
      if (m.kind !== 'repl:io') return false
      if (m.type === 'reply' && m.to === 'n2' && lost === 0) { lost++; return true }
      if (m.type === 'request' && m.from === 'n2' && lost > 0) { repeats++; return holding }
      return false
    })
    const call = observed(n2.g.deleteSnapshot('v', 's1'))
    await until('the primary answered', () => lost > 0, 20_000)
    await until('the call is being sent again', () => repeats > 0, 20_000)
    assert.deepEqual((await n1.g.listSnapshots('v')).map((s) => s.name), ['s1'], 'the primary refused it: a clone reads it')
    // Another call deletes it, once the clone is gone.
    await n1.g.deleteVolume('c')
    await n1.g.deleteSnapshot('v', 's1')
    holding = false
    await assert.rejects(call, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'BUSY', `the call's own attempt was refused: ${err.message}`)
      return true
    })
    network.drop(0)
  })

  it('a clone\'s deletion asks its source\'s primary once to drop the implicit snapshot (not again for 30 s when it is out of reach)', { timeout: 90_000 }, async () => {
    const { network, coordinators, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    const volumeId = await replicatedVolume(nodes, 2)
    await n1.g.cloneVolume('v', 'c')
    await until('n2 has the implicit snapshot', async () => (await n2.g.listSnapshots('v')).length === 1)
    await namePrimary(coordinators, volumeId, 'n2')
    await until('n2 took the role up', async () => (await n2.g.replicationStatus('v')).role === 'primary', 20_000)
    await until('n1 knows', async () => (await n1.g.replicationStatus('v')).role !== 'primary', 20_000)
    // n2 is out of n1's reach for forwarded calls (each is reset at once).
    let asked = 0
    network.drop((m) => {
      if (m.kind !== 'repl:io' || m.type !== 'request' || m.from !== 'n1') return false
      asked++
      return true
    })
    await n1.g.deleteVolume('c')
    network.drop(0)
    assert.equal(asked, 1, 'the primary was asked once')
    assert.deepEqual((await n1.g.listVolumes()).map((v) => v.name), ['v'], 'the clone is gone')
  })
})
