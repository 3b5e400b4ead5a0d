// In-process cluster nodes (memory network and coordinator, storage in temp directories) whose
// coordinator a test may wrap (a proxy that loses answers, fails reads, holds them at a gate).
// Everything opened or made is closed and removed after the test file. GatedRecord is such a proxy.

import { after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS, WriteConcern, type Volume } from '../../src/index.js'
import { recordKey } from '../../src/replication/records.js'
import { until } from './wait.js'
import type { Coordinator } from '../../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'

/** Starts nodes with a 1 s lease; `prefix` starts the names of their temp directories. */
export function wrappedCoordinatorNodes (prefix: string): (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string, wrap?: (c: Coordinator) => Coordinator) => Promise<GalleonFS> {
  const dirs: string[] = []
  const opened: GalleonFS[] = []
  after(async () => {
    await Promise.allSettled(opened.map(async (g) => await g.close()))
    await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
  })
  return async (network, coordinators, id, wrap) => {
    const storagePath = await mkdtemp(join(tmpdir(), `${prefix}-${id}-`))
    dirs.push(storagePath)
    const coordinator = coordinators.coordinator()
    const g = await GalleonFS.open({
      storagePath,
      cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: wrap === undefined ? coordinator : wrap(coordinator), leaseTtlMs: 1000 }
    })
    opened.push(g)
    return g
  }
}

/**
 * A coordinator whose next put of `key` lands and answers with an error, whose reads of `key` fail
 * while `unreadable` is set, and wait at a gate while `held` is set (`release` lets them go on);
 * its deletes of `key` fail unsent while `failDeletes` counts down.
 */
export class GatedRecord {
  key: string | undefined
  unreadable = false
  held = false
  landed = false
  /** Deletes of `key` that fail before they reach the coordinator, from now on. */
  failDeletes = 0
  readonly waiting: Array<() => void> = []

  /** Lets the first `count` reads waiting at the gate go on (all when undefined). */
  release (count?: number): void {
    for (const go of this.waiting.splice(0, count ?? this.waiting.length)) go()
  }

  wrap (coordinator: Coordinator): Coordinator {
    return new Proxy(coordinator, {
      get: (target, name) => {
        const value = Reflect.get(target, name, target) as unknown
        if (typeof value !== 'function') return value
        const call = async (...args: unknown[]): Promise<unknown> => await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args)
        if (name === 'put') {
          return async (key: string, ...rest: unknown[]) => {
            const result = await call(key, ...rest)
            if (key === this.key && !this.landed) {
              this.landed = true
              this.unreadable = true
              throw new Error('coordinator unreachable (answer of the put lost)')
            }
            return result
          }
        }
        if (name === 'delete') {
          return async (key: string, ...rest: unknown[]) => {
            if (key === this.key && this.failDeletes > 0) {
              this.failDeletes--
              throw new Error('coordinator unreachable (delete not sent)')
            }
            return await call(key, ...rest)
          }
        }
        if (name === 'get') {
          return async (key: string, ...rest: unknown[]) => {
            if (key === this.key && this.held) await new Promise<void>((resolve) => this.waiting.push(resolve))
            if (key === this.key && this.unreadable) throw new Error('coordinator unreachable (read)')
            return await call(key, ...rest)
          }
        }
        return value.bind(target)
      }
    })
  }
}

/**
 * n1 (coordinating through a GatedRecord) and n2, both with the 2-copy class `double`; n1's local
 * volume conv (block 3 written) failed to become replicated: migrateVolume's record write landed
 * with its answer lost, the record could not be read, and the call rolled back to a local volume.
 * The GatedRecord is left unreadable, as the coordinator that stopped answering.
 */
export async function failedConversion (startNode: ReturnType<typeof wrappedCoordinatorNodes>): Promise<{ network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, gate: GatedRecord, n1: GalleonFS, n2: GalleonFS, volume: Volume, first: unknown }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const gate = new GatedRecord()
  const n1 = await startNode(network, coordinators, 'n1', (c) => gate.wrap(c))
  const n2 = await startNode(network, coordinators, 'n2')
  await until('both nodes see each other', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
  for (const g of [n1, n2]) await g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
  const volume = await n1.createVolume({ name: 'conv', sizeBytes: '256K' })
  await n1.writeBlock('conv', 3, new Uint8Array(4096).fill(3), WriteConcern.WriteDurable)

  gate.key = recordKey(volume.id)
  const first = await n1.migrateVolume('conv', { storageClass: 'double' }).then(() => undefined, (err: unknown) => err)
  assert.ok(first !== undefined, 'the call fails: its record write answered with an error and the record could not be read')
  return { network, coordinators, gate, n1, n2, volume, first }
}
