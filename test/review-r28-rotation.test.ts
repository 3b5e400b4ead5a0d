// r28: review of fbb886c (a rotateVolumeKey whose primary closes or loses the role mid-way is
// answered by the next primary, counted once). In-process nodes on their own disks, a memory
// network and coordinator.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { GalleonError, GalleonFS, WriteConcern } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import { ClassicLevel } from 'classic-level'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { RECORD_PREFIX, parseRecord } from '../src/replication/records.js'
import { observed } from './support/observed.js'
import { until } from './support/wait.js'
import { namePrimary, recordOf } from './support/replica-records.js'
import { encryptedVolume, holdStream } from './support/rotation-cluster.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'

const kit = diskCluster('galleon-r28-')

describe('r28: the primary that began a rotation and lost the role before it confirmed it', () => {
  // rotateOnPrimary begins the rotation on the primary's copy (a new key, the old one kept until
  // the re-encryption is done), then waits for the copies; the re-encryption itself only starts
  // after that (#run). A primary that loses the role in between throws before #run, and nothing
  // starts it later: its resync as a copy takes the rotation only when its generation is older
  // (applyRotation returns at once), so that copy keeps its old key and a rotation under way
  // until the instance is opened again. fbb886c now answers such a call as a success.
  it('re-encrypts its own copy too (as a copy of the next primary), not only at its next open', { timeout: 120_000 }, async () => {
    const { network, coordinators, nodes } = await kit.cluster(3)
    const [n1, n2] = nodes as [DiskNode, DiskNode, DiskNode]
    await encryptedVolume(nodes, 3)
    const held = holdStream(network, 'n1')
    const rotation = observed(n1.g.rotateVolumeKey('keys', { wait: true }))
    await until('the primary sent the rotation to its copies', () => held() > 0, 20_000)
    const volumeId = (await n1.g.getVolume('keys')).id
    const record = await recordOf(coordinators, volumeId)
    assert.equal(record?.spec.keyGeneration, 1, 'the record counts the rotation')
    await namePrimary(coordinators, volumeId, 'n2')
    network.drop(0)
    const answer = await rotation
    assert.equal(answer.keyGeneration, 1)
    await until('n1\'s copy is in sync with n2 again', async () => (await n2.g.replicationStatus('keys')).inSync.includes('n1'), 30_000)
    await until('n1\'s copy re-encrypted under its new key', async () => (await n1.g.getVolumeEncryption('keys')).rotation === undefined, 10_000)
      .catch(async (err: Error) => assert.fail(`${err.message}: ${JSON.stringify(await n1.g.getVolumeEncryption('keys'))}`))
    const mine = await n1.g.getVolumeEncryption('keys')
    assert.equal(mine.keyGeneration, 1)
    assert.deepEqual(mine.keyVersions, [mine.keyVersion], 'n1 keeps only its new key')
    assert.deepEqual(await n1.g.readBlock('keys', 0), block(1))
  })
})

describe('r28: the tokens a volume\'s record keeps', () => {
  // Before fbb886c only forwarded calls put a token in the record, so the primary's own callers
  // could rotate any number of times without pushing a forwarded call's token out of the last 32.
  // Now every call made on the primary adds one: 32 of them (a script rotating in a loop, each
  // waited for) evict the token of a forwarded call whose answer was lost, and its repeat, which
  // the forwarding node sends for up to 30 s, rotates a second time.
  it('a forwarded rotation whose answer was lost is not counted again after 32 rotations called on the primary', { timeout: 120_000 }, async () => {
    const { network, nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    await encryptedVolume(nodes, 2)
    // A: n2's rotation reaches the primary once; its answer is lost, and its repeats fail on the
    // way (BACKEND_UNAVAILABLE, which n2 retries with the same token) until `holding` ends.
    let holding = true
    let requests = 0
    let lostAnswers = 0
    network.drop((m) => {
      if (!holding || m.kind !== 'repl:io') return false
      if (m.type === 'reply' && m.to === 'n2') { lostAnswers++; return true }
      return m.type === 'request' && m.from === 'n2' && ++requests > 1
    })
    const a = observed(n2.g.rotateVolumeKey('keys'))
    await until('the primary counted A', async () => (await n1.g.getVolumeEncryption('keys')).keyGeneration === 1, 20_000)
    await until('A re-encrypted on the primary', async () => (await n1.g.getVolumeEncryption('keys')).rotation === undefined, 20_000)
    // 32 rotations called on the primary itself, each waited for.
    for (let i = 0; i < 32; i++) {
      const state = await n1.g.rotateVolumeKey('keys', { wait: true })
      assert.equal(state.keyGeneration, i + 2)
    }
    assert.ok(lostAnswers > 0 && requests > 1, `A's answer was lost and its repeats held back (${lostAnswers} answers lost, ${requests} requests)`)
    holding = false
    const answer = await a
    const now = await n1.g.getVolumeEncryption('keys')
    assert.equal(now.keyGeneration, 33, `A's repeat counted again: 33 rotations asked for, ${now.keyGeneration ?? 0} counted`)
    assert.equal(answer.keyGeneration, 33, `A answered from the rotation it counted: ${JSON.stringify(answer)}`)
    assert.deepEqual(await n2.g.readBlock('keys', 0), block(1))
  })
})

/** abstract-level's private write hook, which its public put (and its sublevels') end in; not in the types. */
interface PutHook { _put (key: unknown, value: unknown, options: unknown): Promise<void> }
const HookedClassicLevel = ClassicLevel as unknown as new (location: string) => ClassicLevel<string, any> & PutHook

/**
 * The on-disk metadata database, whose writes of a volume's key record with a re-encryption's
 * progress (KeyManager.advanceRotation) wait while `held`: a rotation stays under way there,
 * holding no block lock, journal entry or admin task meanwhile.
 */
class GatedLevel extends HookedClassicLevel {
  held = false
  #waiters: Array<() => void> = []

  release (): void {
    this.held = false
    for (const wake of this.#waiters.splice(0)) wake()
  }

  override async _put (key: unknown, value: unknown, options: unknown): Promise<void> {
    if (this.held && String(key).startsWith('!keys!')) {
      const record = typeof value === 'string' ? JSON.parse(value) as { rotation?: { cursor?: number } } : undefined
      if ((record?.rotation?.cursor ?? 0) > 0) await new Promise<void>((resolve) => { this.#waiters.push(resolve) })
    }
    await super._put(key, value, options)
  }
}

/**
 * A coordinator handle whose write handing a volume's primary role away from `self` is held (its
 * caller gets BACKEND_UNAVAILABLE, the write still in flight) while `armed`, and whose reads of that
 * key fail until `release()` applies it: the hand-off cannot be settled, so the primary stays frozen
 * (forwards() says so) while the record still names it.
 */
function handOffHold (self: string): { armed: boolean, held: boolean, wrap: (c: Coordinator) => Coordinator, release: () => Promise<void> } {
  let held: { key: string, value: string, expectRevision: number | undefined } | undefined
  let put: Coordinator['put'] | undefined
  const h = {
    armed: false,
    get held () { return held !== undefined },
    release: async () => {
      const h0 = held
      held = undefined
      if (h0 !== undefined && put !== undefined) await put(h0.key, h0.value, h0.expectRevision === undefined ? undefined : { expectRevision: h0.expectRevision }).catch(() => undefined)
    },
    wrap: (coordinator: Coordinator) => {
      put = coordinator.put.bind(coordinator)
      const get = coordinator.get.bind(coordinator)
      coordinator.put = async (key, value, options) => {
        if (h.armed && held === undefined && key.startsWith(RECORD_PREFIX) && parseRecord(value)?.primary !== self) {
          held = { key, value, expectRevision: options?.expectRevision }
          throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator\'s answer was lost (the write is still in flight)')
        }
        return await put!(key, value, options)
      }
      coordinator.get = async (key) => {
        if (held !== undefined && held.key === key) throw new GalleonError('BACKEND_UNAVAILABLE', 'injected: the coordinator is out of reach')
        return await get(key)
      }
      return coordinator
    }
  }
  return h
}

describe('r28: a forwarded rotateVolumeKey refused by a primary that is handing its role over', () => {
  // servePrimaryStep answers NOT_LEADER for any failure while forwards() is true, also when the
  // node is still the primary the record names and the failure has nothing to do with the role:
  // here BUSY (its previous rotation still re-encrypts) while a hand-off is in flight. The caller
  // then resends the call (sleeping between tries) for as long as the hand-off lasts, up to its
  // 30 s budget (then BACKEND_UNAVAILABLE, 'no reachable primary'), and the next primary may count
  // a rotation the caller was told nothing about, instead of the BUSY the primary meant.
  it('answers BUSY at once, not NOT_LEADER resent while the hand-off lasts', { timeout: 120_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const hold = handOffHold('n1')
    const nodes: Array<{ id: string, g: GalleonFS }> = []
    let gate: GatedLevel | undefined
    for (const id of ['n1', 'n2', 'n3']) {
      const dir = await kit.tempDir(`galleon-r28-${id}-`)
      if (id === 'n1') gate = new GatedLevel(join(dir, 'metadata'))
      const coordinator = id === 'n1' ? hold.wrap(coordinators.coordinator()) : coordinators.coordinator()
      const g = kit.track(await GalleonFS.open({ storagePath: dir, ...(id === 'n1' ? { metadata: gate as never } : {}), cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator, leaseTtlMs: 1000 } }))
      nodes.push({ id, g })
    }
    await until('every node sees every other', () => nodes.every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 3))
    const n1 = (nodes[0] as { g: GalleonFS }).g
    try {
      for (const { g } of nodes) await g.createStorageClass({ name: 'secret', parameters: { replication: '2', encryption: 'true' } })
      await n1.createVolume({ name: 'keys', sizeBytes: 16 * BS, storageClass: 'secret' })
      for (let i = 0; i < 4; i++) await n1.writeBlock('keys', i, block(i + 1), WriteConcern.WriteReplicated)
      await until('both copies are in sync', async () => await allInSync(n1, 'keys', 2), 20_000)
      const status = await n1.replicationStatus('keys')
      const copy = status.nodes.find((n) => n !== 'n1') as string
      const target = ['n2', 'n3'].find((n) => n !== copy) as string
      // Rotation 1 on the primary: counted and begun; its re-encryption there waits at the gate.
      ;(gate as GatedLevel).held = true
      const first = await n1.rotateVolumeKey('keys')
      assert.equal(first.keyGeneration, 1)
      assert.notEqual((await n1.getVolumeEncryption('keys')).rotation, undefined, 'rotation 1 still re-encrypts on n1')
      // The primary role is handed to `target`; the write that hands it on is held in flight.
      hold.armed = true
      const moved = await n1.migrateVolume('keys', { node: target }).then(() => 'ok', (err: GalleonError) => err.code)
      assert.ok(hold.held, `the hand-off's record write was held (migrateVolume: ${moved})`)
      assert.equal((await n1.replicationStatus('keys')).primary, 'n1', 'the record n1 holds still names it')
      // The copy's node asks for a rotation: n1, still the primary, refuses it (BUSY).
      let requests = 0
      network.drop((m) => { if (m.kind === 'repl:io' && m.type === 'request' && m.from === copy && m.to === 'n1') requests++; return false })
      const caller = (nodes.find((n) => n.id === copy) as { g: GalleonFS }).g
      let outcome: string | undefined
      const second = caller.rotateVolumeKey('keys').then((state) => { outcome = `answered keyGeneration ${state.keyGeneration ?? 0}` }, (err: GalleonError) => { outcome = err.code })
      await until('the call was answered, or sent to n1 three times', () => outcome !== undefined || requests >= 3, 20_000)
      const sent = requests
      const early = outcome
      hold.armed = false
      await hold.release()
      gate?.release()
      await second
      assert.equal(early, 'BUSY', `n1 refused the call (BUSY) and the caller was told so, not sent it ${sent} times (in the end: ${outcome ?? '?'})`)
      assert.equal(sent, 1)
    } finally {
      hold.armed = false
      await hold.release()
      gate?.release()
    }
  })
})
