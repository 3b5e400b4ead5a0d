// Child of test/review-r30-backup-leases.test.ts, run with the stepped wall clock preloaded
// (test/support/h65-clock-preload.ts), as test/support/h69-child.ts with more places to stop at:
// one GalleonFS instance (in memory) takes, adopts and deletes backups on a directory target as
// the parent asks over IPC, and can stop at a chosen call until the parent releases it.
//
// Requests: { rid, op, ... }, each answered { rid, result } or { rid, error: { code, message } }:
//   backup  { target, seed, encrypted, hold }  a new volume written with blockPattern(seed), backed
//           up; hold: it stops in putManifest (every chunk stored and checked), says { event: 'held' }
//   adopt   { target, id, hold }  adoptBackup; hold: it stops in its first putManifest (its lease
//           written, every chunk checked), says { event: 'held' }
//   delete  { target, id, holdAt, graceSeconds }  deleteBackup; holdAt 'chunkTime' (its first
//           chunkTime: the collection runs, before it deletes anything) or 'removeDead' (the read of a
//           lease it judged dead, just before removing it): says { event: 'holding' }
//   Each stopped call goes on at { op: 'release' }.

import { createHash } from 'node:crypto'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { GalleonFS } from '../../src/index.js'
import { leaseTiming } from '../../src/backup/leases.js'
import { blockPattern } from './patterns.js'

const BS = 4096
const BLOCKS = 32
// Leases refreshed every 200 ms instead of 10 s, so that one judged by watching it takes 2.6 s.
leaseTiming.refreshMs = 200

const g = await GalleonFS.open({ inMemory: true })
await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
let releases: Array<() => void> = []
const released = async (): Promise<void> => { await new Promise<void>((resolve) => { releases.push(resolve) }) }
let volumes = 0

type HoldAt = 'putManifest' | 'chunkTime' | 'removeDead'

/** A directory target that stops once, at `at`, until the parent releases it. */
class HeldTarget extends DirectoryBackupTarget {
  constructor (path: string, readonly rid: number, readonly at: HoldAt) { super({ path }) }
  #held = false
  async #hold (): Promise<void> {
    if (this.#held) return
    this.#held = true
    process.send?.({ event: this.at === 'putManifest' ? 'held' : 'holding', rid: this.rid })
    await released()
  }

  override async putManifest (id: string, data: Uint8Array): Promise<void> {
    if (this.at === 'putManifest') await this.#hold()
    await super.putManifest(id, data)
  }

  override async chunkTime (id: string): Promise<number | undefined> {
    if (this.at === 'chunkTime') await this.#hold()
    return await super.chunkTime(id)
  }

  override async getLease (id: string): Promise<Uint8Array | undefined> {
    // Called by leases.ts's removeDead (the re-read before a lease judged dead is removed).
    if (this.at === 'removeDead' && (new Error().stack ?? '').includes('removeDead')) await this.#hold()
    return await super.getLease(id)
  }
}

interface Request { rid: number, op: string, target: string, seed?: number, encrypted?: boolean, hold?: boolean, id?: string, holdAt?: HoldAt, graceSeconds?: number }

async function handle (request: Request): Promise<unknown> {
  switch (request.op) {
    case 'backup': {
      const name = `v${volumes++}`
      const data = blockPattern(BLOCKS, request.seed as number, BS)
      await g.createVolume({ name, sizeBytes: BLOCKS * BS, ...(request.encrypted === true ? { storageClass: 'sealed' } : {}) })
      await g.write(name, 0, data)
      const target = request.hold === true ? new HeldTarget(request.target, request.rid, 'putManifest') : request.target
      const backup = await g.createBackup(name, { target })
      return { id: backup.id, chunks: backup.chunks, sha256: createHash('sha256').update(data).digest('hex') }
    }
    case 'adopt': {
      const target = request.hold === true ? new HeldTarget(request.target, request.rid, 'putManifest') : request.target
      return await g.adoptBackup(request.id as string, { target })
    }
    case 'delete': {
      const target = request.holdAt !== undefined ? new HeldTarget(request.target, request.rid, request.holdAt) : request.target
      return await g.deleteBackup(request.id as string, { target, ...(request.graceSeconds === undefined ? {} : { chunkGraceSeconds: request.graceSeconds }) })
    }
    default:
      throw new Error(`unknown op ${request.op}`)
  }
}

process.on('message', (message: Request | null) => {
  if (message === null || typeof message !== 'object' || typeof message.op !== 'string') return
  if (message.op === 'release') {
    const waiting = releases
    releases = []
    for (const resolve of waiting) resolve()
    return
  }
  handle(message).then((result) => { process.send?.({ rid: message.rid, result }) }, (err: Error & { code?: string }) => {
    process.send?.({ rid: message.rid, error: { code: err?.code ?? 'ERROR', message: err?.stack ?? String(err) } })
  })
})
// The preload unrefs the channel: this child lives until killed.
;(process.channel as { ref?: () => void } | undefined)?.ref?.()
process.send?.({ ready: process.pid })
