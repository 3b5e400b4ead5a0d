// A forwarded rotateVolumeKey whose answer is lost is sent again; its repeat must not rotate a
// second time, also when another node's rotation was counted in between: the volume's record keeps
// the tokens of the last rotations, not only the last one's (which let the repeat of A after B
// rotate again). In-process nodes on their own disks, a memory coordinator and network.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { BS, allInSync, block, diskCluster } from './support/disk-cluster.js'

const kit = diskCluster('galleon-rot-tokens-')

describe('replicated key rotation tokens', () => {
  it('a lost answer retried after another rotation was counted does not rotate again', { timeout: 90_000 }, async () => {
    const { network, nodes } = await kit.cluster(3)
    for (const node of nodes) await node.g.createStorageClass({ name: 'secret', parameters: { replication: '3', encryption: 'true' } })
    const [n1, n2, n3] = nodes as [typeof nodes[0], typeof nodes[0], typeof nodes[0]]
    await n1.g.createVolume({ name: 'keys', sizeBytes: 16 * BS, storageClass: 'secret' })
    await n1.g.write('keys', 0, block(1), WriteConcern.WriteReplicated)
    await until('every copy is in sync', async () => await allInSync(n1.g, 'keys', 3), 20_000)
    // A: n3's rotation counts on the primary, and every answer to n3 is lost until B is done.
    let holdAnswers = true
    let lost = 0
    network.drop((m) => holdAnswers && m.type === 'reply' && m.kind === 'repl:io' && m.to === 'n3' && ++lost > 0)
    const a = n3.g.rotateVolumeKey('keys')
    a.catch(() => {})
    await until('the primary counted A', async () => (await n1.g.getVolumeEncryption('keys')).keyGeneration === 1, 20_000)
    // B only once A's re-encryption on the primary is over: a rotation asked for meanwhile is refused (BUSY).
    await until('A re-encrypted on the primary', async () => (await n1.g.getVolumeEncryption('keys')).rotation === undefined, 20_000)
    // B: n2's rotation, answered.
    const b = await n2.g.rotateVolumeKey('keys')
    assert.equal(b.keyGeneration, 2)
    holdAnswers = false
    const state = await a
    assert.ok(lost > 0, 'an answer to A was lost')
    assert.equal(state.keyGeneration, 2, `A's repeat answered without rotating: ${JSON.stringify(state)}`)
    assert.equal((await n1.g.getVolumeEncryption('keys')).keyGeneration, 2, 'two rotations, not three')
    assert.deepEqual(await n1.g.read('keys', 0, BS), block(1))
  })
})
