// One primary's ordered stream of changes to one other copy of its volume: resync first (only the
// blocks changed since the copy's position, or a digest comparison), then batches in order with
// a window of STREAM_WINDOW in flight, acknowledged in order.

import { GalleonError } from '../errors.js'
import type { TransportMessage } from '../drivers.js'
import type { VolumeBlocks } from '../engine/engine.js'
import { LIVE } from '../engine/block-map.js'
import type { ReplicatedChange } from '../engine/replicator.js'
import type { LedgerEntry } from './forwarded-writes.js'
import { encodeChanges } from './stream-codec.js'
import type { ReplicationStatus, SnapshotInfo } from './host.js'
import type { VolumeSpec } from './records.js'
import type { Primary } from './primary.js'
import { APPLY_TIMEOUT_MS, BATCH_MAX_BYTES, DIGEST_BYTES, RESYNC_MESSAGE_BYTES, digestRange, errorText } from './common.js'

/** Where a link stands: down (retrying), resyncing the copy, streaming changes, or stopped. */
export type LinkState = 'down' | 'resyncing' | 'streaming' | 'stopped'

const RESYNC_TIMEOUT_MS = 30_000
/**
 * The slowest a copy may take the stream's batches (1 MiB/s): at that rate a write behind a full
 * window (STREAM_WINDOW batches of BATCH_MAX_BYTES) still gets its acknowledgement well within the
 * 60 s a replicated write waits.
 */
const STREAM_MIN_BYTES_PER_MS = 1024 * 1024 / 1000
const BATCH_MAX_CHANGES = 1024
/** A copy at most this many changes behind may start joining the in-sync list. */
const JOIN_MAX_LAG = 4096
/** Batches in flight to one copy. */
const STREAM_WINDOW = 4
/** Pause before a streaming copy's failed listing as in sync is tried again (when no acknowledgement comes first). */
const IN_SYNC_RETRY_MS = 500
/** Changes held for one copy before it is resynced instead (memory bound of a slow copy). */
const MAX_QUEUED_BYTES = 256 << 20
const DIGEST_BLOCKS_PER_MESSAGE = 1024

function isZero (block: Uint8Array): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false
  return true
}

function changeBytes (change: ReplicatedChange): number {
  return change.type === 'write' ? change.data.byteLength + 32 : 64
}

/** The primary's ordered stream to one other copy, with its resync. */
export class Link {
  readonly node: string
  readonly #primary: Primary
  state: LinkState = 'down'
  acked = 0
  failures = 0
  #queue: Array<{ seq: number, change: ReplicatedChange }> = []
  #queuedBytes = 0
  #shippedBytes = 0
  /** Bytes the resyncs read from the primary's volume, to digest or to send (not client reads). */
  #resyncReadBytes = 0
  #batchesAcknowledged = 0
  #ackWaitMs = 0
  #resyncs = 0
  #progress: { mode: 'delta' | 'digest', blocksDone: number, blocksTotal: number, blocksSent: number } | undefined
  #lastError: string | undefined
  #broken: ((err: unknown) => void) | undefined
  #forceDigest = false
  #stopped = false
  #wake: (() => void) | undefined

  constructor (primary: Primary, node: string) {
    this.#primary = primary
    this.node = node
    // After a graceful hand-over, a copy may hold exactly what this primary started from: every
    // change from the first is kept for it until its resync says whether it does.
    this.#fromStart = primary.setRecord.handoff !== undefined && primary.seq === 0
    if (this.#fromStart) { this.state = 'resyncing'; this.#collecting = true }
  }

  #fromStart: boolean
  /** Set when the changes kept during a resync outgrew the limit: that resync fails and starts over. */
  #abort: string | undefined

  start (): void { void this.#run() }

  stop (): void {
    this.#stopped = true
    this.state = 'stopped'
    clearTimeout(this.#inSyncRetry)
    this.#resetStream()
    this.#broken?.(new GalleonError('CANCELLED', 'link stopped'))
    this.#wake?.()
  }

  /** Ends the back-off of a link that is down (its node is back): it tries again at once. */
  retryNow (): void {
    if (this.state === 'down') this.#wake?.()
  }

  /** The storage the running resync reads (see #resync). */
  #source: VolumeBlocks | undefined

  /** Drops the stream and resyncs (with digests when `digest`). */
  restart (why: string, digest: boolean): void {
    if (digest) this.#forceDigest = true
    if (this.state === 'resyncing') this.#abort ??= why
    this.#broken?.(new GalleonError('IO_ERROR', why))
  }

  /** Bytes of changes queued (to send, or sent and not acknowledged). */
  get queuedBytes (): number { return this.#queuedBytes }

  /** Whether offer() keeps changes now: streaming, or collecting them for after a resync's cut. */
  get takes (): boolean {
    return this.state === 'streaming' || (this.state === 'resyncing' && this.#collecting)
  }

  offer (seq: number, change: ReplicatedChange): void {
    if (!this.takes) return
    this.#queue.push({ seq, change })
    this.#queuedBytes += changeBytes(change)
    if (this.#queuedBytes > MAX_QUEUED_BYTES) {
      // The copy cannot keep up: rather than hold ever more changes in memory, it is resynced
      // (from the blocks changed since its last acknowledged change).
      const why = `the copy fell more than ${MAX_QUEUED_BYTES >> 20} MiB of changes behind`
      if (this.state === 'streaming') {
        this.restart(why, false)
      } else {
        // Mid-resync: the changes kept for after it are dropped, and the resync starts over.
        this.#resetStream()
        this.#collecting = false
        this.#abort ??= why
      }
      return
    }
    if (this.state === 'streaming' && !this.#pumpScheduled) {
      // From a microtask: the changes recorded by the callers woken together go in one batch.
      this.#pumpScheduled = true
      queueMicrotask(() => { this.#pumpScheduled = false; this.#pump() })
    }
  }

  #pumpScheduled = false

  /** Set once the resync has made its cut: changes after it are kept for the stream. */
  #collecting = false

  async #run (): Promise<void> {
    let pause = 200
    while (!this.#stopped && !this.#primary.stopped) {
      try {
        this.state = 'resyncing'
        await this.#resync()
        if (this.#stopped) return
        this.state = 'streaming'
        this.#collecting = false
        this.#lastError = undefined
        pause = 200
        const broken = new Promise<never>((_resolve, reject) => { this.#broken = reject })
        this.#pump()
        this.#maybeInSync()
        await broken
      } catch (err) {
        if (this.#stopped || this.#primary.stopped) return
        this.failures++
        this.#lastError = errorText(err)
        this.state = 'down'
        this.#collecting = false
        this.#abort = undefined
        this.#resetStream()
        this.#progress = undefined
        this.#primary.stopJoining(this.node)
        await this.#primary.dropFromInSync(this.node).catch(() => {})
        if (this.#stopped || this.#primary.stopped) return
        this.#primary.manager.host.emit('replication:link-down', { volumeId: this.#primary.volumeId, node: this.node, message: this.#lastError })
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, pause)
          timer.unref()
          this.#wake = () => { clearTimeout(timer); resolve() }
        })
        this.#wake = undefined
        pause = Math.min(pause * 2, 2000)
      } finally {
        this.#broken = undefined
      }
    }
  }

  /** Batches sent and not yet acknowledged, oldest first. */
  #inflight: Array<{ last: number, count: number, bytes: number, payloadBytes: number, done: boolean }> = []
  /** Queue entries already sent (a prefix of the queue). */
  #sent = 0
  /** Bumped whenever the stream is reset: answers to batches of an earlier stream are ignored. */
  #stream = 0

  /**
   * Sends queued changes in batches, up to STREAM_WINDOW batches in flight (the copy applies them
   * in order and shares its syncs among them); acknowledgements are taken in order.
   */
  #pump (): void {
    while (this.state === 'streaming' && this.#inflight.length < STREAM_WINDOW && this.#sent < this.#queue.length) {
      let bytes = 0
      let count = 0
      // At most BATCH_MAX_BYTES (a single larger change alone), so that no batch's limit (see
      // #watchHead) passes the 60 s a replicated write waits for its copies.
      while (this.#sent + count < this.#queue.length && count < BATCH_MAX_CHANGES) {
        const size = changeBytes((this.#queue[this.#sent + count] as { change: ReplicatedChange }).change)
        if (count > 0 && bytes + size > BATCH_MAX_BYTES) break
        bytes += size
        count++
      }
      const batch = this.#queue.slice(this.#sent, this.#sent + count)
      this.#sent += count
      const { list, payload } = encodeChanges(batch)
      const from = (batch[0] as { seq: number }).seq
      const entry = { last: (batch[batch.length - 1] as { seq: number }).seq, count, bytes, payloadBytes: payload.byteLength, done: false }
      // A batch waits behind those in flight: its limit grows with the bytes ahead of it (and its
      // own) at the slowest rate a resync accepts, so a slow link that moves is not cut off.
      const bytesAhead = this.#inflight.reduce((sum, e) => sum + e.payloadBytes, 0) + payload.byteLength
      const timeoutMs = APPLY_TIMEOUT_MS + Math.ceil(bytesAhead * RESYNC_TIMEOUT_MS / RESYNC_MESSAGE_BYTES)
      this.#inflight.push(entry)
      if (this.#inflight.length === 1) this.#watchHead()
      const stream = this.#stream
      const sentAt = performance.now()
      this.#primary.manager.request(this.node, {
        kind: 'repl:apply',
        header: { volumeId: this.#primary.volumeId, epoch: this.#primary.epoch, from, changes: list },
        payload
      }, timeoutMs).then((reply) => {
        if (stream !== this.#stream || this.state !== 'streaming') return
        if (reply.kind !== 'applied') throw new GalleonError('IO_ERROR', `node ${this.node} asked for a resync (it is at epoch ${String(reply.header.epoch)}, change ${String(reply.header.seq)})`)
        entry.done = true
        this.#batchesAcknowledged++
        this.#ackWaitMs += performance.now() - sentAt
        let progressed = false
        while (this.#inflight[0]?.done === true) {
          const head = this.#inflight.shift() as typeof entry
          this.#queue.splice(0, head.count)
          this.#sent -= head.count
          this.#queuedBytes -= head.bytes
          this.#shippedBytes += head.payloadBytes
          this.acked = head.last
          progressed = true
        }
        if (progressed) {
          this.#watchHead()
          this.#primary.acked()
          this.#maybeInSync()
        }
        this.#pump()
      }).catch((err: unknown) => {
        if (stream === this.#stream) this.#broken?.(err)
      })
    }
  }

  #headTimer: NodeJS.Timeout | undefined
  /**
   * The oldest batch in flight has APPLY_TIMEOUT_MS plus its own bytes at STREAM_MIN_BYTES_PER_MS,
   * counted from when it became the oldest (its send, or the acknowledgement of the one before it):
   * a copy that stops acknowledging, or moves slower than that, is noticed within 9 s of its last
   * acknowledgement however many bytes wait behind, and then leaves the in-sync list (a slower copy
   * would hold every replicated write back past its 60 s); a slow link that keeps up with that rate
   * is never cut off.
   */
  #watchHead (): void {
    clearTimeout(this.#headTimer)
    this.#headTimer = undefined
    const head = this.#inflight[0]
    if (head === undefined) return
    const stream = this.#stream
    const limitMs = APPLY_TIMEOUT_MS + Math.ceil(head.payloadBytes / STREAM_MIN_BYTES_PER_MS)
    this.#headTimer = setTimeout(() => {
      if (stream === this.#stream && this.#inflight[0] === head) this.#broken?.(new GalleonError('BACKEND_UNAVAILABLE', `node ${this.node} did not acknowledge a stream batch (${head.payloadBytes} bytes) within ${limitMs} ms of the one before it`))
    }, limitMs)
    this.#headTimer.unref()
  }

  /** Forgets the stream's queue and batches in flight. */
  #resetStream (): void {
    clearTimeout(this.#headTimer)
    this.#headTimer = undefined
    // The changes kept for the copy since this primary's first one (see #fromStart) are gone with
    // the queue: a copy at the hand-off's position would then lack those made since, so the next
    // resync compares instead of taking that shortcut.
    this.#fromStart = false
    this.#stream++
    this.#queue = []
    this.#queuedBytes = 0
    this.#inflight = []
    this.#sent = 0
  }

  #adding = false
  /**
   * A streaming copy close enough behind joins the in-sync list: first writes start waiting for
   * it, then, once it has acknowledged everything recorded before that, the record lists it.
   */
  #maybeInSync (): void {
    const primary = this.#primary
    if (this.#adding || this.state !== 'streaming' || primary.setRecord.inSync.includes(this.node)) return
    let since = primary.joiningSince(this.node)
    if (since === undefined) {
      if (primary.seq - this.acked > JOIN_MAX_LAG) return
      primary.startJoining(this.node)
      since = primary.joiningSince(this.node) as number
    }
    if (this.acked < since) return
    this.#adding = true
    void primary.addToInSync(this.node).catch(() => {}).finally(() => {
      this.#adding = false
      primary.stopJoining(this.node)
      // Not added (the record changed meanwhile, or the coordinator could not be reached): tried
      // again with the next acknowledgement, and after a pause in case none comes (no writes).
      if (this.state === 'streaming' && !primary.setRecord.inSync.includes(this.node)) this.#retryInSyncSoon()
    })
  }

  #inSyncRetry: NodeJS.Timeout | undefined
  #retryInSyncSoon (): void {
    if (this.#inSyncRetry !== undefined) return
    this.#inSyncRetry = setTimeout(() => {
      this.#inSyncRetry = undefined
      this.#maybeInSync()
    }, IN_SYNC_RETRY_MS)
    this.#inSyncRetry.unref()
  }

  async #call (kind: string, header: Record<string, unknown>, payload?: Uint8Array): Promise<TransportMessage> {
    if (this.#stopped) throw new GalleonError('CANCELLED', 'link stopped')
    return await this.#primary.manager.request(this.node, { kind, header: { volumeId: this.#primary.volumeId, epoch: this.#primary.epoch, ...header }, ...(payload === undefined ? {} : { payload }) }, RESYNC_TIMEOUT_MS)
  }

  /** Brings the copy in line with this primary, up to a cut; changes after the cut are queued meanwhile. */
  async #resync (): Promise<void> {
    const primary = this.#primary
    const manager = primary.manager
    const host = manager.host
    const engine = host.engine
    this.#resyncs++
    const begin = await this.#call('repl:resync-begin', { spec: specToSend(primary.setRecord.spec, host.blocks(primary.volumeId)), primary: manager.nodeId })
    const theirs = { epoch: begin.header.epoch as number, seq: begin.header.seq as number, snapshots: begin.header.snapshots as string[] }
    const handoff = primary.setRecord.handoff
    const fromStart = this.#fromStart
    this.#fromStart = false
    if (fromStart && handoff !== undefined && theirs.epoch === handoff.epoch && theirs.seq === handoff.seq && !this.#forceDigest) {
      // The copy holds what this primary started from (a graceful hand-over): it stays in sync
      // and gets every change of this epoch, kept for it from the first, through the stream.
      if (this.#abort !== undefined) {
        const why = this.#abort
        this.#abort = undefined
        throw new GalleonError('BUSY', why)
      }
      await this.#call('repl:resync-end', { seq: 0 })
      this.acked = 0
      host.emit('replication:resynced', { volumeId: primary.volumeId, node: this.node, mode: 'delta' })
      return
    }
    if (primary.mayBeInSync(this.node)) {
      // A copy is rebuilt only once it is out of the in-sync list: a half-rebuilt copy must never
      // be promoted (nor must writes waiting for it hold up the resync's cut).
      await primary.dropFromInSync(this.node)
    }
    // The cut: snapshots cannot change meanwhile, every change after it is queued for the stream,
    // and the live view is read as it was at the cut (a private engine snapshot pins it), so that
    // replaying the stream on top gives the copy exactly the primary's history.
    let cut = 0
    let snapshots: SnapshotInfo[] = []
    let revertTokens: readonly string[] = []
    let writes: LedgerEntry[] = []
    // The storage read from, fixed for the whole resync (the primary's copy may move meanwhile: then
    // reads at the cut fail, and the resync starts over on the new storage).
    const source = primary.blocks
    this.#source = source
    const pinSize = source.sizeBytes
    const pin = await host.exclusive(async () => await engine.snapshot(source, () => {
      this.#resetStream()
      this.#collecting = true
      cut = primary.seq
      snapshots = host.snapshots(primary.volumeId)
      revertTokens = host.revertTokens(primary.volumeId)
      // The forwarded writes held at the cut: the copy gets their changes as blocks, without identities.
      writes = primary.writes.entries()
    }))
    try {
      await this.#resyncFrom(theirs, cut, snapshots, revertTokens, writes, pin, pinSize)
    } finally {
      await engine.dropSnapshot(source, pin).catch(() => {})
    }
  }

  /**
   * The resync after its cut: the views the copy lacks, block by block, then the cut as its
   * position, with the tokens of the reverts the volume had then (see ReplicationHost.revertTokens)
   * and the forwarded writes it held then (see WriteLedger.entries).
   */
  async #resyncFrom (theirs: { epoch: number, seq: number, snapshots: string[] }, cut: number, snapshots: SnapshotInfo[], revertTokens: readonly string[], writes: LedgerEntry[], pin: number, pinSize: number): Promise<void> {
    const primary = this.#primary
    const host = primary.manager.host
    const engine = host.engine
    const bs = engine.blockSize
    const perMessage = Math.max(1, Math.floor(RESYNC_MESSAGE_BYTES / bs))
    const delta = !this.#forceDigest && theirs.epoch === primary.epoch && theirs.seq <= cut
    this.#forceDigest = false
    const mine = new Set(snapshots.map((s) => s.id))
    const extra = theirs.snapshots.filter((id) => !mine.has(id))
    if (extra.length > 0) await this.#call('repl:resync-prune', { snapshots: extra })
    const have = new Set(theirs.snapshots)
    const views: Array<{ snapshot?: SnapshotInfo }> = [...snapshots.filter((s) => !have.has(s.id)).map((snapshot) => ({ snapshot })), {}]
    const changed = delta ? primary.changedSince(theirs.seq) : undefined
    const source = this.#source ?? primary.blocks
    const blockCount = Math.ceil(source.sizeBytes / bs)
    this.#progress = { mode: delta ? 'delta' : 'digest', blocksDone: 0, blocksTotal: (changed?.length ?? blockCount) * views.length, blocksSent: 0 }
    for (const view of views) {
      const at = view.snapshot?.gen ?? pin
      const viewSize = view.snapshot?.sizeBytes ?? pinSize
      if (changed !== undefined) {
        for (let i = 0; i < changed.length; i += perMessage) {
          await this.#sendBlocks(changed.slice(i, i + perMessage).filter((index) => index * bs < viewSize), at, viewSize)
          this.#progress.blocksDone += Math.min(perMessage, changed.length - i)
        }
      } else {
        for (let first = 0; first < blockCount; first += DIGEST_BLOCKS_PER_MESSAGE) {
          const count = Math.min(DIGEST_BLOCKS_PER_MESSAGE, blockCount - first)
          const [remote, local] = await Promise.all([
            this.#call('repl:digests', { first, count }),
            digestRange(engine, source, first, count, at, viewSize)
          ])
          this.#resyncReadBytes += local.indices.length * bs
          const remoteIndices = remote.header.indices as number[]
          const remoteDigests = remote.payload ?? new Uint8Array(0)
          const theirsByIndex = new Map<number, number>()
          remoteIndices.forEach((index, k) => theirsByIndex.set(index, k))
          const differ: number[] = []
          local.indices.forEach((index, k) => {
            const r = theirsByIndex.get(index)
            theirsByIndex.delete(index)
            if (r === undefined || Buffer.compare(local.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES), remoteDigests.subarray(r * DIGEST_BYTES, (r + 1) * DIGEST_BYTES)) !== 0) differ.push(index)
          })
          // Blocks only the copy has: zeros here.
          for (const index of theirsByIndex.keys()) differ.push(index)
          differ.sort((a, b) => a - b)
          for (let i = 0; i < differ.length; i += perMessage) await this.#sendBlocks(differ.slice(i, i + perMessage), at, viewSize)
          this.#progress.blocksDone += count
        }
      }
      if (view.snapshot !== undefined) await this.#call('repl:resync-snapshot', { id: view.snapshot.id, name: view.snapshot.name, sizeBytes: view.snapshot.sizeBytes, ...(view.snapshot.token === undefined ? {} : { token: view.snapshot.token }) })
    }
    if (this.#abort !== undefined) {
      const why = this.#abort
      this.#abort = undefined
      throw new GalleonError('BUSY', why)
    }
    await this.#call('repl:resync-end', { seq: cut, revertTokens, writes })
    this.acked = cut
    // Still collecting: changes keep being queued until the stream takes over (see #run).
    this.#progress = undefined
    host.emit('replication:resynced', { volumeId: primary.volumeId, node: this.node, mode: delta ? 'delta' : 'digest' })
  }

  /** Sends the current contents of `indices` in the view at `at` (zeros as trims). */
  async #sendBlocks (indices: number[], at: number, viewSize: number): Promise<void> {
    if (indices.length === 0) return
    const engine = this.#primary.manager.host.engine
    const bs = engine.blockSize
    const view = at === LIVE ? undefined : { gen: at, sizeBytes: viewSize }
    const data: Uint8Array[] = []
    const withData: number[] = []
    const zero: number[] = []
    for (const index of indices) {
      if (index * bs >= viewSize) { zero.push(index); continue }
      // A background read: the resync's, not a client's (see BlockEngine.read).
      const block = await engine.read(this.#source ?? this.#primary.blocks, index * bs, bs, view, true)
      this.#resyncReadBytes += bs
      if (isZero(block)) zero.push(index)
      else { withData.push(index); data.push(block) }
    }
    const payload = new Uint8Array(withData.length * bs)
    data.forEach((block, k) => payload.set(block, k * bs))
    await this.#call('repl:resync-blocks', { indices: withData, zero }, payload)
    this.#shippedBytes += payload.byteLength
    if (this.#progress !== undefined) this.#progress.blocksSent += indices.length
  }

  status (): ReplicationStatus['links'][number] {
    return {
      node: this.node,
      state: this.state,
      lagChanges: Math.max(0, this.#primary.seq - this.acked),
      lagBytes: this.#queuedBytes,
      lagSeconds: this.#primary.seq > this.acked ? this.#primary.clock.ageSeconds(this.acked + 1) : 0,
      shippedBytes: this.#shippedBytes,
      resyncReadBytes: this.#resyncReadBytes,
      batchesAcknowledged: this.#batchesAcknowledged,
      ackWaitSeconds: this.#ackWaitMs / 1000,
      resyncs: this.#resyncs,
      ...(this.#progress === undefined ? {} : { resync: { ...this.#progress } }),
      ...(this.#lastError === undefined ? {} : { lastError: this.#lastError })
    }
  }
}

/**
 * The spec a new copy is created from: a record written by a release before VolumeSpec.encrypted
 * lacks the field, and the copy's node would then go by its own class of that name, which may not
 * encrypt; the primary holds the volume and says it is encrypted, so no plaintext of it reaches
 * the copy's storage (the record itself is left as it is: nodes of that release rewrite it).
 */
function specToSend (spec: VolumeSpec, volume: VolumeBlocks | undefined): VolumeSpec {
  return spec.encrypted === undefined && volume?.cipher !== undefined ? { ...spec, encrypted: true } : spec
}
