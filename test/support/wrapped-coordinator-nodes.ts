// In-process cluster nodes (memory network and coordinator, storage in temp directories) whose
// coordinator a test may wrap (a proxy that loses answers, fails reads, holds them at a gate).
// Everything opened or made is closed and removed after the test file.

import { after } from 'node:test'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'
import type { Coordinator } from '../../src/drivers.js'
import { type MemoryCoordinatorCluster, type MemoryNetwork, MemoryTransport } from '../../backends/memory/index.js'

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
