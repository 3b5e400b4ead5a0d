// Child process of the pool crash test (audit-pools-classes.test.ts): volume creates, clones (of
// live volumes, of clones and of snapshots), expansions, snapshots, reverts and forced deletes in
// one small storage pool, several at a time, until the parent kills it with SIGKILL.
//
// Usage: node --import tsx pool-child.ts <storagePath> <file|level> <seed>
// Lines: `ready` once the pool exists; `op <what>` per operation started; `error <message>` on failure.

import { GalleonFS, WriteConcern } from '../../src/index.js'
import { seededRandom } from '../conformance/fixtures.js'
import { reportLine, runAsChild } from './support.js'

export const POOL = 'crashpool'
export const POOL_CAPACITY = 24 << 20
const BLOCK = 4096
const EXPECTED = new Set(['NO_SPACE', 'VOLUME_NOT_FOUND', 'VOLUME_EXISTS', 'SNAPSHOT_NOT_FOUND', 'SNAPSHOT_EXISTS', 'BUSY'])

async function main (): Promise<void> {
  const [storagePath, backend, seedText] = process.argv.slice(2) as [string, 'file' | 'level', string]
  const random = seededRandom(Number(seedText))
  const g = await GalleonFS.open({ storagePath, backend })
  if ((await g.listPools()).length === 0) await g.createPool({ name: POOL, capacityBytes: POOL_CAPACITY })
  reportLine('ready')
  let counter = 0
  const pick = async (): Promise<string | undefined> => {
    const volumes = await g.listVolumes()
    return volumes[Math.floor(random() * volumes.length)]?.name
  }
  const step = async (): Promise<void> => {
    const dice = random()
    const name = await pick()
    const fresh = `v${process.pid}-${counter++}`
    if (name === undefined || dice < 0.2) {
      reportLine(`op create ${fresh}`)
      await g.createVolume({ name: fresh, sizeBytes: (1 + Math.floor(random() * 4)) << 20, pool: POOL })
    } else if (dice < 0.45) {
      const at = Math.floor(random() * 64)
      await g.writeBlock(name, at, new Uint8Array(BLOCK).fill(at + 1), WriteConcern.WriteDurable)
    } else if (dice < 0.55) {
      reportLine(`op clone ${name} ${fresh}`)
      await g.cloneVolume(name, fresh)
    } else if (dice < 0.62) {
      const snapshots = await g.listSnapshots(name)
      const snapshot = snapshots.find((s) => !s.implicit)
      if (snapshot === undefined) {
        reportLine(`op snapshot ${name}`)
        await g.createSnapshot(name, `s${counter}`)
      } else if (random() < 0.5) {
        reportLine(`op clone-snapshot ${name} ${fresh}`)
        await g.cloneVolume({ volume: name, snapshot: snapshot.name }, fresh)
      } else {
        reportLine(`op revert ${name}`)
        await g.restoreSnapshot(name, snapshot.name)
      }
    } else if (dice < 0.75) {
      const volume = await g.getVolume(name)
      reportLine(`op expand ${name}`)
      await g.expandVolume(name, volume.sizeBytes + (1 << 20))
    } else {
      reportLine(`op delete ${name}`)
      await g.deleteVolume(name, { force: true })
    }
  }
  const worker = async (): Promise<void> => {
    for (;;) {
      try {
        await step()
      } catch (err) {
        if (!EXPECTED.has((err as { code?: string }).code ?? '')) throw err
      }
    }
  }
  await Promise.all([worker(), worker(), worker()])
}

runAsChild(import.meta.url, main)
