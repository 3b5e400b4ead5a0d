// Review r61: class changes of replicated volumes racing deleteVolume (a class change into a Retain
// class) and rotateVolumeKey (either starting while the other records its start), on the primary
// and forwarded from the other node. Two in-process nodes on their own disks, a memory network and
// coordinator whose first handle (n1's) can hold one write.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { until } from './support/wait.js'
import { diskCluster } from './support/disk-cluster.js'
import { classPair, type ClassPair } from './support/control-call-cluster.js'
import { outcomeOf } from './support/assertions.js'

const kit = diskCluster('galleon-r61-')

type Pair = ClassPair
const pair = async (storageClass: string, blocks: number): Promise<Pair> => await classPair(kit, storageClass, blocks)

/** Both copies of v are in `storageClass`, encrypted as `encrypted`, and read `model`. */
async function bothIn (p: Pair, storageClass: string, encrypted: boolean): Promise<void> {
  for (const node of [p.n1, p.n2]) {
    await until(`the copy on ${node.id} is in ${storageClass}`, async () => (await node.g.getVolume('v')).storageClass === storageClass, 30_000)
    assert.equal((await node.g.getVolume('v')).encrypted, encrypted, `the copy on ${node.id} is encrypted: ${encrypted}`)
    assert.deepEqual(await node.g.read('v', 0, p.model.byteLength), p.model, `the copy on ${node.id} reads what was written`)
  }
}

describe('review r61: a replicated volume changing class into a Retain class', () => {
  it('a plain deleteVolume while the copies convert (the record names the Retain class) is refused with BUSY, on the primary and forwarded', async () => {
    const p = await pair('plain2', 2048)
    let deletes: Promise<Array<{ code: string, message: string }>> | undefined
    let primaryCopy = ''
    // The first progress comes once the cluster's record names keep2: the copies convert from then on.
    const migrated = p.n1.g.migrateVolume('v', { storageClass: 'keep2' }, {
      onProgress: () => {
        if (deletes !== undefined) return
        deletes = (async () => {
          primaryCopy = (await p.n1.g.getVolume('v')).storageClass
          return await Promise.all([outcomeOf(p.n1.g.deleteVolume('v')), outcomeOf(p.n2.g.deleteVolume('v'))])
        })()
      }
    })
    const outcome = await outcomeOf(migrated)
    await until('the deletions were made', () => deletes !== undefined)
    const [onPrimary, forwarded] = await (deletes as NonNullable<typeof deletes>)
    const left = (await p.n1.g.listVolumes()).map((v) => `${v.name} (${v.storageClass})`).join(', ') || 'none'
    assert.equal(onPrimary?.code, 'BUSY', `deleteVolume on the primary (its copy in ${primaryCopy} then): ${onPrimary?.code} ${onPrimary?.message}; migration: ${outcome.code} ${outcome.message}; volumes left on n1: ${left}`)
    assert.equal(forwarded?.code, 'BUSY', `deleteVolume on n2: ${forwarded?.code} ${forwarded?.message}`)
    assert.equal(outcome.code, 'ok', `the class change: ${outcome.message}`)
    await bothIn(p, 'keep2', true)
    await p.n2.g.deleteVolume('v', { force: true })
    await until('the volume is gone from both nodes', async () => (await p.n1.g.listVolumes()).length === 0 && (await p.n2.g.listVolumes()).length === 0, 20_000)
  })
})

describe('review r61: rotateVolumeKey and a class change of a replicated volume', () => {
  it('rotateVolumeKey while a class change records its start is refused with BUSY, on the primary and forwarded; the change then completes', async () => {
    const p = await pair('secret2', 64)
    p.hold.arm('"storageClass":"plain2"')
    const migrated = p.n1.g.migrateVolume('v', { storageClass: 'plain2' })
    await until('the class change is writing the record', () => p.hold.held() === 1)
    const onPrimary = await outcomeOf(p.n1.g.rotateVolumeKey('v'))
    const forwarded = await outcomeOf(p.n2.g.rotateVolumeKey('v'))
    p.hold.release()
    const outcome = await outcomeOf(migrated)
    assert.equal(onPrimary.code, 'BUSY', `rotateVolumeKey on the primary: ${onPrimary.code === 'ok' ? 'rotated' : `${onPrimary.code} ${onPrimary.message}`}; the class change then: ${outcome.code} ${outcome.message}`)
    assert.equal(forwarded.code, 'BUSY', `rotateVolumeKey on n2: ${forwarded.code === 'ok' ? 'rotated' : `${forwarded.code} ${forwarded.message}`}`)
    assert.equal(outcome.code, 'ok', `the class change: ${outcome.message}`)
    await bothIn(p, 'plain2', false)
  })

  it('a class change while a key rotation records its start is refused with BUSY and changes nothing; made again after it, it completes', async () => {
    const p = await pair('secret2', 2048)
    p.hold.arm('"keyGeneration":1')
    const rotated = outcomeOf(p.n1.g.rotateVolumeKey('v', { wait: true }))
    await until('the rotation is writing the record', () => p.hold.held() === 1)
    // The rotation's record write is let go once the class change has written its own record
    // (its first progress), or has been refused.
    let progressed = false
    const migrating = outcomeOf(p.n1.g.migrateVolume('v', { storageClass: 'plain2' }, { onProgress: () => { progressed = true; p.hold.release() } }))
    void migrating.finally(() => { p.hold.release() })
    const [outcome, rotation] = await Promise.all([migrating, rotated])
    const classes = await Promise.all([p.n1, p.n2].map(async (n) => `${n.id} ${(await n.g.getVolume('v')).storageClass}`))
    assert.equal(outcome.code, 'BUSY', `the class change during the rotation's start: ${outcome.code} ${outcome.message}; the rotation then: ${rotation.code} ${rotation.message}; copies: ${classes.join(', ')}`)
    assert.equal(progressed, false, `the refused class change wrote the record first (${outcome.message}); copies: ${classes.join(', ')}`)
    assert.equal(rotation.code, 'ok', `the rotation: ${rotation.message}`)
    await bothIn(p, 'secret2', true)
    // { wait: true } waits for the primary's copy; the other copy re-encrypts on its own, and a
    // copy converts only once that is done (a class change made sooner gives up after 3 tries).
    await until('the copy on n2 has re-encrypted too', async () => (await p.n2.g.getVolumeEncryption('v')).rotation === undefined, 60_000)
    await p.n1.g.migrateVolume('v', { storageClass: 'plain2' })
    await bothIn(p, 'plain2', false)
  })
})
