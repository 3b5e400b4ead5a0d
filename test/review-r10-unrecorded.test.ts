// Review r10 of commit ff1b4a9 (a replicated copy the cluster has no record of refuses forwarded
// I/O at once): a copy whose record goes because its volume was deleted (the deletion mark names
// its node) is no such copy. I/O on it while it is being dropped must say the volume is gone
// (VOLUME_NOT_FOUND, as before the commit), not that a coordinator lost the record and that
// deleteVolume with force deletes the copy.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern } from '../src/index.js'
import type { Coordinator } from '../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { deletedKey } from '../src/replication/records.js'
import { until } from './support/wait.js'

const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

/** Holds a node's reads of one key until released; says when the first such read came. */
class KeyGate {
  key: string | undefined
  #release: (() => void) | undefined
  readonly #held = new Promise<void>((resolve) => { this.#release = resolve })
  #hit: (() => void) | undefined
  readonly hit = new Promise<void>((resolve) => { this.#hit = resolve })

  /** The coordinator with its get(key) held by this gate (methods bound: the handle has private fields). */
  wrap (coordinator: Coordinator): Coordinator {
    return new Proxy(coordinator, {
      get: (target, name) => {
        const value = Reflect.get(target, name, target) as unknown
        if (typeof value !== 'function') return value
        if (name !== 'get') return value.bind(target)
        return async (key: string, ...rest: unknown[]) => {
          if (key === this.key) {
            this.#hit?.()
            await this.#held
          }
          return await (value as (...args: unknown[]) => Promise<unknown>).call(target, key, ...rest)
        }
      }
    })
  }

  release (): void { this.#release?.() }
}

async function startNode (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, gate?: KeyGate): Promise<GalleonFS> {
  const storagePath = await mkdtemp(join(tmpdir(), `galleon-r10-${id}-`))
  dirs.push(storagePath)
  const coordinator = coordinators.coordinator()
  const g = await GalleonFS.open({
    storagePath,
    cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: gate === undefined ? coordinator : gate.wrap(coordinator), leaseTtlMs: 1000 }
  })
  opened.push(g)
  return g
}

describe('review r10: a copy whose volume was deleted is not an unrecorded copy', () => {
  it('I/O on a replica while its deleted volume\'s copy is being dropped fails with VOLUME_NOT_FOUND, not "no record ... deleteVolume force"', { timeout: 60_000 }, async () => {
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const gate = new KeyGate()
    const n1 = await startNode(network, coordinators, 'n1')
    const n2 = await startNode(network, coordinators, 'n2', gate)
    await until('both nodes see each other', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    for (const g of [n1, n2]) await g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
    const volume = await n1.createVolume({ name: 'gone', sizeBytes: '256K', storageClass: 'double' })
    await n1.writeBlock('gone', 1, new Uint8Array(4096).fill(7), WriteConcern.WriteReplicated)
    await until('two copies of gone in sync', async () => (await n1.replicationStatus('gone')).inSync.length === 2)
    assert.deepEqual(await n2.readBlock('gone', 1), new Uint8Array(4096).fill(7), 'n2 forwards its reads to n1')

    // n2 learns of the deletion from the coordinator only (the primary's repl:delete is lost), and
    // its read of the deletion mark is held: its copy is on its way out, the mark names n2.
    gate.key = deletedKey(volume.id)
    network.drop((m) => m.kind === 'repl:delete' && m.to === 'n2')
    await n1.deleteVolume('gone')
    await gate.hit

    const read = n2.readBlock('gone', 1).then(() => undefined, (err: { code?: string, message?: string }) => err)
    // (With the mark read done, the copy is dropped and the volume is gone on n2.)
    gate.release()
    const err = await read
    assert.ok(err !== undefined, 'the read of a deleted volume fails')
    assert.equal(err.code, 'VOLUME_NOT_FOUND', `a deleted volume is not found; got ${err.code}: ${err.message}`)
    assert.doesNotMatch(String(err.message), /force: true/, 'no advice to force-delete the copy of a volume that was deleted')
    await until('n2 dropped its copy', async () => await n2.getVolume('gone').then(() => false, (e: { code?: string }) => e.code === 'VOLUME_NOT_FOUND'))
  })
})
