// A coordinator for tests of writes whose answer is lost: its put of one key lands (or, with
// `applies` false, never reaches the coordinator) and answers with an error, after which no read
// answers until `readsDown` is cleared: a coordinator that stops answering right after a write.

import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonError, GalleonFS, WriteConcern } from '../../src/index.js'
import type { Coordinator } from '../../src/drivers.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { until } from './wait.js'

type Call = (...args: unknown[]) => Promise<unknown>

/** A coordinator whose put of `lostKey` lands with its answer lost, after which no read answers until readsDown is cleared. */
export class LosingCoordinator {
  lostKey: string | undefined
  readsDown = false
  /** false: the put of lostKey fails without being applied (the request never reached the coordinator). */
  applies = true

  wrap (coordinator: Coordinator): Coordinator {
    return new Proxy(coordinator, {
      get: (target, name) => {
        const value = Reflect.get(target, name, target) as unknown
        if (typeof value !== 'function') return value
        if (name === 'get') {
          return async (...args: unknown[]) => {
            if (this.readsDown) throw new GalleonError('BACKEND_UNAVAILABLE', 'test: the coordinator answers no read')
            return await (value as Call).apply(target, args)
          }
        }
        if (name === 'put') {
          return async (key: string, ...rest: unknown[]) => {
            if (key === this.lostKey && !this.applies) {
              this.lostKey = undefined
              this.readsDown = true
              throw new GalleonError('BACKEND_UNAVAILABLE', 'test: this put never reached the coordinator')
            }
            const answer = await (value as Call).call(target, key, ...rest)
            if (key !== this.lostKey) return answer
            this.lostKey = undefined
            this.readsDown = true
            throw new GalleonError('BACKEND_UNAVAILABLE', 'test: the answer of this put was lost')
          }
        }
        return value.bind(target)
      }
    })
  }
}

/** One node of {@link lostAnswerCluster}: its instance and storage directory. */
export interface LostAnswerNode { g: GalleonFS, dir: string }

/**
 * Two in-process nodes, n1 coordinating through a LosingCoordinator, both with a 2-copy class
 * `double`, and on n1 a local volume `lost` (128 KiB, block 3 filled with 3s). Directories and
 * instances go to `made` for the test to remove and close.
 */
export async function lostAnswerCluster (made: { dirs: string[], opened: GalleonFS[] }, prefix: string, losing: LosingCoordinator): Promise<{ n1: LostAnswerNode, n2: LostAnswerNode, coordinators: MemoryCoordinatorCluster, volumeId: string }> {
  const network = new MemoryNetwork()
  const coordinators = new MemoryCoordinatorCluster()
  const start = async (id: string, wrapped?: LosingCoordinator): Promise<LostAnswerNode> => {
    const dir = await mkdtemp(join(tmpdir(), `${prefix}-${id}-`))
    made.dirs.push(dir)
    const coordinator = coordinators.coordinator()
    const g = await GalleonFS.open({ storagePath: dir, cluster: { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: wrapped === undefined ? coordinator : wrapped.wrap(coordinator), leaseTtlMs: 1000 } })
    made.opened.push(g)
    return { g, dir }
  }
  const n1 = await start('n1', losing)
  const n2 = await start('n2')
  await until('both nodes see each other', () => [n1, n2].every((n) => n.g.cluster?.members.filter((m) => m.healthy).length === 2))
  for (const n of [n1, n2]) await n.g.createStorageClass({ name: 'double', parameters: { replication: '2' } })
  const volume = await n1.g.createVolume({ name: 'lost', sizeBytes: '128K' })
  await n1.g.writeBlock('lost', 3, new Uint8Array(4096).fill(3), WriteConcern.WriteDurable)
  return { n1, n2, coordinators, volumeId: volume.id }
}
