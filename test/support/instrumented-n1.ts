// A cluster node "n1" on disk whose parts a test holds or breaks on demand: its metadata writes wait
// behind a gate, reads of one block index fail, and the coordinator's answers about one key (a
// volume's record) can be withheld (watch events lost, reads failing). Used by the tests of a
// revert cut short on a primary that loses its role (h76, review-r35).

import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { FileBlockStore } from '../../backends/file/index.js'
import { MemoryTransport, type MemoryCoordinator, type MemoryCoordinatorCluster, type MemoryNetwork } from '../../backends/memory/index.js'
import { GalleonError, GalleonFS, type BlockAddress } from '../../src/index.js'
import type { BlockReadOptions, Coordinator, CoordinatorEvent } from '../../src/drivers.js'
import type { diskCluster } from './disk-cluster.js'

/** A gate that calls wait behind while it is held. */
export class Gate {
  #gate: Promise<void> | undefined
  #open: (() => void) | undefined
  waiting = 0
  hold (): void { this.#gate ??= new Promise((resolve) => { this.#open = resolve }) }
  release (): void { this.#gate = undefined; this.#open?.() }
  async pass (): Promise<void> {
    if (this.#gate === undefined) return
    this.waiting++
    try { await this.#gate } finally { this.waiting-- }
  }
}

/** The file block store, whose reads of block `failIndex` (any volume, any version) fail while it is set. */
export class FailingReads extends FileBlockStore {
  failIndex: number | undefined
  override async get (address: BlockAddress, options?: BlockReadOptions): Promise<Uint8Array | undefined> {
    if (address.index === this.failIndex) throw new GalleonError('IO_ERROR', `injected read failure of block ${address.index}`)
    return await super.get(address, options)
  }
}

/** n1's coordinator: while `blind`, watch events of `key` are lost; while `unreadable`, reads of it fail. */
export interface RecordView { key: string, blind: boolean, unreadable: boolean }

export interface InstrumentedN1 {
  g: GalleonFS
  dir: string
  /** n1's coordinator handle (to end its leases). */
  handle: MemoryCoordinator
  view: RecordView
  /** n1's metadata writes wait here while it is held. */
  writes: Gate
  store: FailingReads
  /** The volume record n1 keeps in its metadata database. */
  record: (id: string) => Promise<{ revertTo?: string } | undefined>
}

/** Opens n1 (lease TTL 1 s) in a new directory of `kit`, on `network` and a new handle of `coordinators`. */
export async function instrumentedN1 (kit: ReturnType<typeof diskCluster>, network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, dirPrefix: string): Promise<InstrumentedN1> {
  const dir = await kit.tempDir(dirPrefix)
  const db = new ClassicLevel<string, unknown>(join(dir, 'metadata'), { valueEncoding: 'json' })
  const writes = new Gate()
  // Sublevels write through their root's put.
  const put = db.put.bind(db) as (...args: unknown[]) => Promise<void>
  db.put = (async (...args: unknown[]) => { await writes.pass(); await put(...args) }) as typeof db.put
  const volumes = db.sublevel<string, { revertTo?: string }>('volumes', { valueEncoding: 'json' })
  const handle = coordinators.coordinator()
  const view: RecordView = { key: '', blind: false, unreadable: false }
  const coordinator = new Proxy(handle, {
    get: (target, name) => {
      const value = Reflect.get(target, name, target) as unknown
      if (typeof value !== 'function') return value
      if (name === 'watch') return (prefix: string, listener: (event: CoordinatorEvent) => void) => handle.watch(prefix, (event) => { if (!(view.blind && event.key === view.key)) listener(event) })
      if (name === 'get') return async (key: string) => { if (view.unreadable && key === view.key) throw new Error('coordinator unreachable (read)'); return await handle.get(key) }
      return value.bind(target)
    }
  }) as Coordinator
  const store = new FailingReads({ location: join(dir, 'blocks') })
  const g = kit.track(await GalleonFS.open({ storagePath: dir, metadata: db, blockStore: store, cluster: { nodeId: 'n1', transport: new MemoryTransport({ network, nodeId: 'n1' }), coordinator, leaseTtlMs: 1000 } }))
  return { g, dir, handle, view, writes, store, record: async (id) => await volumes.get(id) }
}
