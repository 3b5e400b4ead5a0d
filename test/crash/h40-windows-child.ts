// Child process of h40-windows.test.ts: node n1 of a cluster coordinated by etcd changes a volume
// in its local catalog and in the cluster's records one after the other, and one coordinator call
// of that change is held for ever; the child prints `ready` when it comes, and the test kills it
// there with SIGKILL. Modes:
//   create    createVolume in a 2-copy class: the local volume is recorded, its cluster record's
//             write is held (never sent).
//   created   the same, but the record's write is sent and lands; only its answer is held.
//   delete    deleteVolume of a replicated volume holding data: its deletion mark is written, the
//             delete of its record is held (never sent).
//   deleted   the same, but the record's delete is sent and lands; only its answer is held.
//   reshape   migrateVolume of a replicated volume to a 1-copy class: the write of its record
//             naming the new class is sent and lands; only its answer is held (the node's own
//             copy converts when it takes the record up, perhaps before the kill, perhaps not).
//   dissolve  migrateVolume { node: 'n2' } of a local volume, cancelled once n2's copy is listed:
//             the volume is local again in the catalog, and the delete of its cluster record is
//             held (never sent).
//
// Args: storagePath etcdEndpoint prefix mode

import { GalleonFS, WriteConcern } from '../../src/index.js'
import type { Coordinator } from '../../src/drivers.js'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'
import { RECORD_PREFIX } from '../../src/replication/records.js'
import { reportLine, runAsChild } from './support.js'
import { blockOf } from './convert-child.js'

export type Mode = 'create' | 'created' | 'delete' | 'deleted' | 'reshape' | 'dissolve'
export const ONE_COPY = 'one-copy'
export const VOLUME = 'windowed'
export const CLASS = 'two-copies'
export const BLOCKS = 32

export { blockOf }

type Call = (...args: unknown[]) => Promise<unknown>

/**
 * `coordinator` whose calls `hold` picks (by method and key) never answer: `before` ones are never
 * sent, the others are sent and only their answer is held. `onHeld` is called at the first.
 * `afterPut` sees every put that was answered.
 */
function holding (coordinator: Coordinator, hold: { method: 'put' | 'delete', when: 'before' | 'after', key: (key: string) => boolean }, onHeld: () => void, afterPut?: (key: string, value: string) => void): Coordinator {
  return new Proxy(coordinator, {
    get: (target, name) => {
      const value = Reflect.get(target, name, target) as unknown
      if (typeof value !== 'function') return value
      if (name !== 'put' && name !== 'delete') return value.bind(target)
      return async (key: string, ...rest: unknown[]) => {
        if (name !== hold.method || !hold.key(key)) {
          const answer = await (value as Call).call(target, key, ...rest)
          if (name === 'put') afterPut?.(key, rest[0] as string)
          return answer
        }
        if (hold.when === 'after') await (value as Call).call(target, key, ...rest)
        onHeld()
        return await new Promise(() => {})
      }
    }
  })
}

async function main (): Promise<void> {
  const [storagePath, endpoint, prefix, mode] = process.argv.slice(2) as [string, string, string, Mode]
  const etcd = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, ttlMs: 2000 })
  const isRecord = (key: string): boolean => key.startsWith(RECORD_PREFIX)
  let armed = false
  const cancel = new AbortController()
  const hold = mode === 'create' || mode === 'created'
    ? { method: 'put' as const, when: mode === 'created' ? 'after' as const : 'before' as const, key: isRecord }
    : mode === 'reshape'
      ? { method: 'put' as const, when: 'after' as const, key: (key: string) => armed && isRecord(key) }
      : { method: 'delete' as const, when: mode === 'deleted' ? 'after' as const : 'before' as const, key: (key: string) => armed && isRecord(key) }
  let g: GalleonFS | undefined
  const onHeld = (): void => {
    if (mode !== 'reshape') { reportLine(`ready ${hold.method} of the record held`); return }
    // Which side of the local conversion the kill comes (about) on, for the test's report.
    void g?.getVolume(VOLUME).then((v) => { reportLine(`ready put of the record held; local class ${v.storageClass}`) }, (err: Error) => { reportLine(`ready (getVolume: ${err.message})`) })
  }
  const coordinator = holding(etcd, hold, onHeld, (key, value) => {
    // dissolve: the move is cancelled once n2's copy is listed in the record.
    if (mode === 'dissolve' && isRecord(key) && (JSON.parse(value) as { nodes?: string[] }).nodes?.includes('n2') === true) cancel.abort(new Error('cancelled by the test'))
  })
  const network = new MemoryNetwork()
  g = await GalleonFS.open({ storagePath, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator, leaseTtlMs: 2000 } })
  if (mode === 'dissolve') {
    const other = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, ttlMs: 2000 })
    await GalleonFS.open({ storagePath: `${storagePath}-n2`, cluster: { nodeId: 'n2', transport: new MemoryTransport({ network, nodeId: 'n2' }), coordinator: other, leaseTtlMs: 2000 } })
    while (g.cluster?.members.some((m) => m.id === 'n2') !== true) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  await g.createStorageClass({ name: CLASS, parameters: { replication: '2' } })
  await g.createStorageClass({ name: ONE_COPY, parameters: {} })
  if (mode === 'create' || mode === 'created') {
    reportLine('creating')
    await g.createVolume({ name: VOLUME, sizeBytes: BLOCKS * 4096, storageClass: CLASS })
    reportLine('error the record write was not held')
    return
  }
  await g.createVolume({ name: VOLUME, sizeBytes: BLOCKS * 4096, ...(mode === 'dissolve' ? {} : { storageClass: CLASS }) })
  for (let i = 0; i < BLOCKS; i++) await g.writeBlock(VOLUME, i, blockOf(i), WriteConcern.WriteDurable)
  reportLine('written')
  armed = true
  if (mode === 'reshape') {
    await g.migrateVolume(VOLUME, { storageClass: ONE_COPY })
    reportLine('error the record write was not held')
    return
  }
  if (mode === 'dissolve') {
    const outcome = await g.migrateVolume(VOLUME, { node: 'n2' }, { signal: cancel.signal }).then(() => 'moved', (err: { code?: string }) => err.code ?? 'failed')
    reportLine(`error the record delete was not held (migrateVolume: ${outcome})`)
    return
  }
  await g.deleteVolume(VOLUME)
  reportLine('error the record delete was not held')
}

runAsChild(import.meta.url, main)
