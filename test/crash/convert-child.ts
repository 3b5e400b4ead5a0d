// Child process of convert-crash.test.ts: node n1 of a cluster coordinated by etcd makes a 1-copy
// volume (its blocks written durably), then makes it replicated with migrateVolume: to a 2-copy
// class (mode `class`), or by moving it to node n2, run in this process too (mode `move`). n1
// holds the write of the volume's cluster record for ever, and prints `ready` when that write
// comes: its catalog already says the volume is replicated, and no record says so in the cluster.
// The test kills it there with SIGKILL.
//
// Args: storagePath etcdEndpoint prefix mode

import { GalleonFS, WriteConcern } from '../../src/index.js'
import type { Coordinator } from '../../src/drivers.js'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { RECORD_PREFIX } from '../../src/replication/records.js'
import { reportLine, runAsChild } from './support.js'

export const VOLUME = 'converting'
export const CLASS = 'two-copies'
export const BLOCKS = 64

/** Block i's bytes: its index in every byte pair, so a block from elsewhere is told apart. */
export function blockOf (index: number): Uint8Array {
  const block = new Uint8Array(4096)
  for (let i = 0; i < block.length; i += 2) { block[i] = index & 0xff; block[i + 1] = (index >> 8) & 0xff }
  return block
}

/** `coordinator` with its writes of volume records held for ever, `onHeld` called at the first. */
export function holdingRecords (coordinator: Coordinator, onHeld: () => void): Coordinator {
  return new Proxy(coordinator, {
    get: (target, name) => {
      const value = Reflect.get(target, name, target) as unknown
      if (typeof value !== 'function') return value
      if (name !== 'put') return value.bind(target)
      return async (key: string, ...rest: unknown[]) => {
        if (!key.startsWith(RECORD_PREFIX)) return await (value as (...args: unknown[]) => Promise<unknown>).call(target, key, ...rest)
        onHeld()
        return await new Promise(() => {})
      }
    }
  })
}

async function main (): Promise<void> {
  const [storagePath, endpoint, prefix, mode] = process.argv.slice(2) as [string, string, string, 'class' | 'move']
  const etcd = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, ttlMs: 2000 })
  const coordinator = holdingRecords(etcd, () => { reportLine('ready record write held') })
  const network = new MemoryNetwork()
  const g = await GalleonFS.open({ storagePath, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator, leaseTtlMs: 2000 } })
  if (mode === 'move') {
    const other = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, ttlMs: 2000 })
    await GalleonFS.open({ storagePath: `${storagePath}-n2`, cluster: { nodeId: 'n2', transport: new MemoryTransport({ network, nodeId: 'n2' }), coordinator: other, leaseTtlMs: 2000 } })
    while (g.cluster?.members.some((m) => m.id === 'n2') !== true) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  await g.createStorageClass({ name: CLASS, parameters: { replication: '2' } })
  await g.createVolume({ name: VOLUME, sizeBytes: BLOCKS * 4096 })
  for (let i = 0; i < BLOCKS; i++) await g.writeBlock(VOLUME, i, blockOf(i), WriteConcern.WriteDurable)
  reportLine('written')
  await g.migrateVolume(VOLUME, mode === 'move' ? { node: 'n2' } : { storageClass: CLASS })
  reportLine('error the record write was not held')
}

runAsChild(import.meta.url, main)
