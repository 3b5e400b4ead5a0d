// What the parts of BackupManager (create.ts, verify.ts, delete.ts) share: the instance, the keys,
// the clock, the targets and the leftover records; and the reports they all make the same way.

import type { BackupTarget } from '../drivers.js'
import { errorCode } from '../errors.js'
import type { GalleonFS } from '../galleonfs.js'
import type { Manifest } from './format.js'
import type { TargetLease } from './leases.js'
import type { BackupLeftovers } from './leftovers.js'
import { writeIndex, type KnownManifests } from './manifests.js'
import type { BackupTargets } from './targets.js'
import type { BackupKeySource } from './types.js'

/** The state of one BackupManager its parts work on. */
export interface BackupContext {
  readonly g: GalleonFS
  readonly keys: BackupKeySource
  readonly now: () => number
  readonly targets: BackupTargets
  readonly leftovers: BackupLeftovers
}

/** Ends a lease; one that cannot be removed is reported (collections wait until they find it abandoned). */
export async function endLease (ctx: BackupContext, target: BackupTarget, lease: TargetLease | undefined): Promise<void> {
  await lease?.end().catch((err: unknown) => {
    ctx.g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `could not remove in-progress lease ${lease.id} from backup target ${target.location} (other processes take it for a running backup until they find it abandoned, and collect no chunk meanwhile): ${(err as Error).message}` })
  })
}

/** The index is a summary: failing to rewrite it is reported, not a failure of the backup or deletion. */
export async function writeIndexOrReport (ctx: BackupContext, target: BackupTarget, added?: { manifest: Manifest, bytes: Uint8Array }, known?: KnownManifests): Promise<void> {
  try {
    await writeIndex(target, ctx.now, added, known)
  } catch (err) {
    ctx.g.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: `could not rewrite the index of backup target ${target.location} (the next backup or deletion tries again): ${(err as Error).message}` })
  }
}
