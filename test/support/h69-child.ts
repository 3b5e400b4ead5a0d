// Child of test/h69-backup-gc-clock.test.ts, run with the stepped wall clock preloaded
// (test/support/h65-clock-preload.ts): two GalleonFS instances (in memory) that take, hold and
// delete backups on a directory target as the parent asks over IPC, so that a backup can be held
// between its chunks and its manifest while a deletion runs elsewhere (another process, or the
// other instance of this one) after the wall clock stepped.
//
// Requests: { rid, op, ... }, each answered { rid, result } or { rid, error: { code, message } }:
//   backup  { instance, target, seed, hold }  a new volume written with blockPattern(seed), backed up;
//           hold: the backup stops in putManifest (after every chunk is stored and checked, before
//           its manifest is written), says { event: 'held', rid }, and goes on at { op: 'release' }
//   delete  { instance, target, id, holdAt }  deleteBackup; holdAt 'deleteChunk' or 'deleteManifest':
//           it stops at its first such call, says { event: 'holding', rid }, and goes on at { op: 'release' }
//   open    { target }  opens the target with a new driver object (as a new process would)
//   exit

import { createHash } from 'node:crypto'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { GalleonFS } from '../../src/index.js'
import { leaseTiming } from '../../src/backup/leases.js'
import { blockPattern } from './patterns.js'

const BS = 4096
const BLOCKS = 32
// Leases refreshed every 200 ms instead of 10 s, so that one judged by watching it takes a second.
leaseTiming.refreshMs = 200

const instances = [await GalleonFS.open({ inMemory: true }), await GalleonFS.open({ inMemory: true })]
let releases: Array<() => void> = []
const released = async (): Promise<void> => { await new Promise<void>((resolve) => { releases.push(resolve) }) }
let volumes = 0

/** A directory target whose putManifest (or first deleteChunk, or deleteManifest) waits for the parent. */
class HeldTarget extends DirectoryBackupTarget {
  constructor (path: string, readonly rid: number, readonly at: 'putManifest' | 'deleteChunk' | 'deleteManifest') { super({ path }) }
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

  override async deleteChunk (id: string): Promise<void> {
    if (this.at === 'deleteChunk') await this.#hold()
    await super.deleteChunk(id)
  }

  override async deleteManifest (id: string): Promise<void> {
    if (this.at === 'deleteManifest') await this.#hold()
    await super.deleteManifest(id)
  }
}

interface Request { rid: number, op: string, instance?: number, target: string, seed?: number, hold?: boolean, id?: string, holdAt?: 'deleteChunk' | 'deleteManifest' }

async function handle (request: Request): Promise<unknown> {
  const g = instances[request.instance ?? 0] as GalleonFS
  switch (request.op) {
    case 'backup': {
      const name = `v${volumes++}`
      const data = blockPattern(BLOCKS, request.seed as number, BS)
      await g.createVolume({ name, sizeBytes: BLOCKS * BS })
      await g.write(name, 0, data)
      const target = request.hold === true ? new HeldTarget(request.target, request.rid, 'putManifest') : request.target
      const backup = await g.createBackup(name, { target })
      return { id: backup.id, chunks: backup.chunks, sha256: createHash('sha256').update(data).digest('hex') }
    }
    case 'delete': {
      const target = request.holdAt !== undefined ? new HeldTarget(request.target, request.rid, request.holdAt) : request.target
      return await g.deleteBackup(request.id as string, { target })
    }
    case 'open':
      await new DirectoryBackupTarget({ path: request.target }).open()
      return 'opened'
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
  if (message.op === 'exit') {
    void Promise.allSettled(instances.map(async (g) => { await g.close() })).then(() => process.exit(0))
    return
  }
  handle(message).then((result) => { process.send?.({ rid: message.rid, result }) }, (err: Error & { code?: string }) => {
    process.send?.({ rid: message.rid, error: { code: err?.code ?? 'ERROR', message: err?.stack ?? String(err) } })
  })
})
// The preload unrefs the channel: this child lives until told to exit (or killed).
;(process.channel as { ref?: () => void } | undefined)?.ref?.()
process.send?.({ ready: process.pid })
