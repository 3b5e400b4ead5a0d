// Recovery after open: rebuilds every volume's block map from the versions in the store and deletes
// what no view reads (superseded versions left by a crash, blocks of volumes that no longer exist).

import { GalleonError } from '../errors.js'
import { Address, type BlockOp } from '../drivers.js'
import { genOf, storeGen, versionOf } from './block-map.js'
import type { EngineCore } from './engine-core.js'
import type { VolumeBlocks } from './volume-blocks.js'
import { LoopStreak, loopTurn } from '../loop-streak.js'

/** A volume as recovery needs it: its snapshots' generations and, for a clone, its source. */
export interface RecoverableVolume {
  readonly storageId: number
  readonly sizeBytes: number
  readonly snapshotGens?: readonly number[]
  readonly parent?: { readonly storageId: number, readonly gen: number, readonly sizeBytes: number }
}

/** What recovery calls on the engine (BlockEngine): registering volumes and linking clones. */
export interface RecoveryTarget {
  attach (storageId: number, sizeBytes: number): VolumeBlocks
  linkClone (clone: VolumeBlocks, source: VolumeBlocks, gen: number, sourceSizeBytes: number): void
}

/** The body of BlockEngine.recover (documented there). */
export async function recover (core: EngineCore, engine: RecoveryTarget, volumes: readonly RecoverableVolume[]): Promise<{ staleVersions: number, orphanVolumes: number[] }> {
  // A store's addresses may all come from memory (the file store's index): without a turn now and
  // then, a store of millions of blocks holds the event loop (timers, lease keep-alives) for seconds.
  const streak = new LoopStreak()
  for (const { storageId, sizeBytes, snapshotGens } of volumes) {
    if (streak.tooLong(performance.now())) await loopTurn()
    const volume = engine.attach(storageId, sizeBytes)
    for (const gen of [...(snapshotGens ?? [])].sort((a, b) => a - b)) {
      volume.map.addSnapshot(gen)
      if (gen > volume.nextGen) volume.nextGen = gen
    }
  }
  for (const { storageId, parent } of volumes) {
    if (parent === undefined) continue
    const source = core.volumes.get(parent.storageId)
    if (source === undefined) throw new GalleonError('CORRUPTION', `clone with storage id ${storageId} names source ${parent.storageId}, which does not exist; the metadata is damaged`)
    engine.linkClone(core.volumes.get(storageId) as VolumeBlocks, source, parent.gen, parent.sizeBytes)
  }
  const found = new Map<number, Map<number, number | number[]>>()
  const orphans = new Set<number>()
  for await (const address of core.store.addresses()) {
    if (streak.tooLong(performance.now())) await loopTurn()
    const volume = core.volumes.get(address.volume)
    if (volume === undefined) { orphans.add(address.volume); continue }
    let blocks = found.get(address.volume)
    if (blocks === undefined) found.set(address.volume, blocks = new Map())
    const version = versionOf(address.gen)
    const seen = blocks.get(address.index)
    if (seen === undefined) blocks.set(address.index, version)
    else if (typeof seen === 'number') blocks.set(address.index, [seen, version])
    else seen.push(version)
    if (genOf(version) >= volume.nextGen) volume.nextGen = genOf(version) + 1
  }
  const garbage: BlockOp[] = []
  for (const [storageId, blocks] of found) {
    const volume = core.volumes.get(storageId) as VolumeBlocks
    for (const [index, seen] of blocks) {
      if (streak.tooLong(performance.now())) await loopTurn()
      for (const version of volume.map.load(index, typeof seen === 'number' ? [seen] : seen)) {
        garbage.push({ type: 'del', address: new Address(storageId, index, storeGen(version)) })
      }
    }
  }
  for (const volume of orphans) await core.store.deleteVolume(volume)
  if (garbage.length > 0) await core.store.batch(garbage, { sync: true })
  return { staleVersions: garbage.length, orphanVolumes: [...orphans] }
}
