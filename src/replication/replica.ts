// The replica side of replication: the handlers of the repl:* messages a node answers (stream
// batches, taken in order and fenced by epoch; resyncs; deletion; I/O forwarded to the primary).

import { GalleonError, describe } from '../errors.js'
import type { TransportMessage } from '../drivers.js'
import type { VolumeBlocks } from '../engine/engine.js'
import { LIVE } from '../engine/block-map.js'
import { decodeChanges } from './stream-codec.js'
import type { ReplicatedChange } from '../engine/replicator.js'
import { WriteConcern } from '../types.js'
import { parseRecord, recordKey, type VolumeSpec } from './records.js'
import { digestRange, type LocalSet, type ManagerCore } from './common.js'
import type { ForwardedRequest } from './host.js'
import { ATTACHMENTS_KIND } from './attachments.js'

/** The refusal of I/O sent to node `nodeId` as to the volume's primary when it holds no copy of it. */
function noCopyMessage (nodeId: string, volumeId: string): string {
  return `node ${nodeId} holds no copy of volume ${volumeId} (any more): it is not its primary`
}

/**
 * The refusal of I/O sent to node `nodeId`, the volume's primary, once its instance has begun to
 * close: the call goes to the next primary (the one the close hands the role to, or the one a
 * failover names), where it runs instead of failing with NOT_OPEN.
 */
function closingMessage (nodeId: string, volumeId: string): string {
  return `node ${nodeId} is closing: it serves no I/O of volume ${volumeId} any more (it goes to the next primary)`
}

/**
 * The refusal of I/O sent to node `nodeId` as to the volume's primary while it does not hold the
 * role: the sender's record is old, or the record names this node but it has not taken the role up
 * yet (it is starting: see ReplicationManager.start, which reclaims it after its handlers are in place).
 */
function notPrimaryMessage (nodeId: string, volumeId: string, primary: string): string {
  return `node ${nodeId} is not the primary of volume ${volumeId} (it is ${primary})`
}

/**
 * The refusal of a write another node forwarded to `nodeId` as to the volume's primary, which this
 * node does not run as the primary (fenced, handing the role over, or no longer it when the write
 * got its turn): refused before it ran, in the words of notPrimaryMessage, so that the sending node
 * asks the primary itself (see ReplicationBridge.forward). `primary` is the one this node knows of
 * (undefined: none, or this node itself).
 */
export function notServingRefusal (nodeId: string, volumeId: string, primary: string | undefined): GalleonError {
  return new GalleonError('NOT_LEADER', notPrimaryMessage(nodeId, volumeId, primary === undefined || primary === nodeId ? 'unknown' : primary))
}

/**
 * Whether `err`, the failure of I/O (a repl:io message) on volume `volumeId` sent to node `nodeId`,
 * is one of the refusals above: the node answered before it ran anything (unlike the NOT_LEADER of
 * a primary that lost the role under the call, which may have taken effect). Errors cross the
 * transport as a code and a message only, so they are known by their whole messages (unchanged
 * from earlier releases), which name `nodeId` and `volumeId`.
 */
export function ioRefusedBeforeRunning (err: unknown, nodeId: string, volumeId: string): boolean {
  if (!(err instanceof GalleonError) || err.code !== 'NOT_LEADER') return false
  if (err.message === noCopyMessage(nodeId, volumeId) || err.message === closingMessage(nodeId, volumeId)) return true
  const start = notPrimaryMessage(nodeId, volumeId, '')
  const open = start.slice(0, -1) // "node X is not the primary of volume V (it is "
  return err.message.startsWith(open) && err.message.endsWith(')') && /^[^\s()]+$/.test(err.message.slice(open.length, -1))
}

/** The replica-side handlers of one node's ReplicationManager, and how they apply changes to its copies. */
export class ReplicaSide {
  readonly #core: ManagerCore
  /** Completion of the changes an `applied` reply covers (see repl:apply). */
  readonly #pendingApply = new WeakMap<TransportMessage, Promise<void>>()

  constructor (core: ManagerCore) {
    this.#core = core
  }

  /** Registers the repl:* handlers with the cluster, then tells it this node serves them. */
  register (): void {
    const on = (kind: string, handler: (set: LocalSet, header: Record<string, unknown>, payload: Uint8Array | undefined, from: string) => Promise<TransportMessage>): void => {
      this.#core.cluster.handle(kind, async (from, request) => {
        const volumeId = request.header.volumeId
        if (typeof volumeId !== 'string') throw new GalleonError('INVALID_ARGUMENT', `${kind} needs a volumeId`)
        if (kind === 'repl:resync-begin') {
          // A closing node would take a copy into the in-sync list only to leave it at once (writes
          // then wait for it until its primary takes it out): it is brought in line when it starts again.
          if (this.#core.closing) throw new GalleonError('BUSY', `node ${this.#core.nodeId} is closing: it takes no resync of volume ${volumeId} now (it is resynced when it starts again)`)
          if (this.#core.sets.has(volumeId) && this.#core.host.blocks(volumeId) === undefined) {
            // Left over from a copy deleted here (every deletion forgets the set first; a message
            // could make one again meanwhile): this is a new copy like any other.
            this.#core.forget(volumeId)
          }
          if (this.#core.deleting.has(volumeId)) {
            // Given up or moved away, and its deletion is under way: the resync comes again later
            // and then finds no copy (or, if the deletion failed, the copy left over; see below).
            throw new GalleonError('BUSY', `the copy of volume ${volumeId} on node ${this.#core.nodeId} is being deleted; a resync retries later`)
          }
          // A new copy: created here first.
          if (!this.#core.sets.has(volumeId)) {
            // Only for a volume whose record places a copy here, checked again once it exists: a
            // resync that was on its way while the volume was deleted (or the copy given up) must
            // not leave a copy nobody knows of.
            // And only from the node the record names as primary (not a stale one, nor for a record
            // left naming this node alone after its volume was made local again).
            const placed = async (): Promise<boolean> => {
              const entry = await this.#core.coordinator.get(recordKey(volumeId))
              const record = entry === undefined ? undefined : parseRecord(entry.value)
              return record !== undefined && record.nodes.includes(this.#core.nodeId) && record.primary === from && from !== this.#core.nodeId
            }
            const refused = (): GalleonError => new GalleonError('VOLUME_NOT_FOUND', `volume ${volumeId} has no copy placed on node ${this.#core.nodeId} by primary ${from} (it was deleted, the copy here was given up, or ${from} is not its primary)`)
            if (!(await placed())) throw refused()
            // A local volume of this id that is no copy in the cluster, although the record places
            // one here, is the copy of an earlier placement whose deletion failed: it is taken back
            // (and resynced). One the record does not place here (a volume made local again) was
            // refused above: a resync must never overwrite it.
            await this.#core.host.createCopy(request.header.spec as VolumeSpec)
            if (!(await placed()) && !this.#core.sets.has(volumeId)) {
              await this.#core.host.deleteCopy(volumeId)
              throw refused()
            }
            // The copy of the same id that was being deleted here is not gone yet (createCopy
            // found its record): tried again once it is.
            if (this.#core.host.blocks(volumeId) === undefined) throw new GalleonError('BUSY', `the earlier copy of volume ${volumeId} on node ${this.#core.nodeId} is still being deleted; a resync retries later`)
            if (!this.#core.sets.has(volumeId)) {
              const set = this.#core.setOf(volumeId)
              void this.#core.refresh(set)
            }
          }
        }
        const set = this.#core.sets.get(volumeId)
        if (set === undefined) {
          if (kind === 'repl:delete') return { kind: 'ok', header: {} }
          // I/O sent here as to the primary: this node handed the volume off (or never had it), so
          // the sender's record is old; it looks again (a deleted volume is gone from its record too).
          if (kind === 'repl:io') throw new GalleonError('NOT_LEADER', noCopyMessage(this.#core.nodeId, volumeId))
          throw new GalleonError('VOLUME_NOT_FOUND', `node ${this.#core.nodeId} holds no copy of volume ${volumeId}`)
        }
        if (kind === 'repl:io') return await handler(set, request.header, request.payload, from)
        if (kind !== 'repl:delete') this.#fence(set, request.header.epoch)
        if (kind === 'repl:apply') await this.#turn(set, request.header)
        const run = set.chain.then(async () => {
          if (kind !== 'repl:apply' && set.applying.size > 0) await Promise.allSettled(set.applying)
          return await handler(set, request.header, request.payload, from)
        })
        set.chain = run.catch(() => {})
        const reply = await run
        if (kind === 'repl:apply' && reply.kind === 'applied') {
          // Issued in order under the chain; applied and made durable outside it, so that batches
          // in flight together share their store writes and syncs (the journal groups them).
          const position = { epoch: request.header.epoch as number, seq: reply.header.seq as number }
          try {
            await this.#pendingApply.get(reply)
          } catch (err) {
            // What this copy holds is no longer known exactly: the next resync compares everything.
            set.position = { epoch: 0, seq: 0 }
            throw err
          }
          // The writes were synced with their data (#issueAll, durable); a store without syncs,
          // or a batch of other changes, is flushed here.
          if (!this.#core.host.engine.store.supports.durableSync || !changesOnlyData(request.header.changes)) await this.#core.host.engine.flush()
          if (position.epoch > set.durable.epoch || (position.epoch === set.durable.epoch && position.seq > set.durable.seq)) set.durable = position
          this.#savePositionSoon(set)
        }
        return reply
      })
    }
    this.#core.cluster.handle('repl:layout', async (_from, request) => {
      const volumeId = request.header.volumeId
      if (typeof volumeId !== 'string') throw new GalleonError('INVALID_ARGUMENT', 'repl:layout needs a volumeId')
      return { kind: 'layout', header: { ...this.#core.host.copyLayout(volumeId, request.header.retry === true) } }
    })
    // Asked of every node, whether it holds a copy or not (one whose copy is being made may have nothing open yet).
    this.#core.cluster.handle(ATTACHMENTS_KIND, async (_from, request) => {
      const volumeId = request.header.volumeId
      if (typeof volumeId !== 'string') throw new GalleonError('INVALID_ARGUMENT', `${ATTACHMENTS_KIND} needs a volumeId`)
      const held = this.#core.host.attachments(volumeId)
      return { kind: 'attachments', header: { mounts: [...held.mounts], writers: held.writers, readers: held.readers, snapshotReaders: held.snapshotReaders } }
    })
    on('repl:apply', async (set, header, payload) => {
      const epoch = header.epoch as number
      const from = header.from as number
      if (set.resyncing || set.position.epoch !== epoch || set.position.seq + 1 !== from) {
        return { kind: 'resync', header: { epoch: set.position.epoch, seq: set.position.seq } }
      }
      const changes = decodeChanges(header.changes, payload)
      const blocks = this.#copy(set)
      // Issued in order here; the reply waits (outside the chain) until they are applied and durable.
      const { done: applied } = await this.#issueAll(set, blocks, changes, true)
      set.position = { epoch, seq: from + changes.length - 1 }
      const reply: TransportMessage = { kind: 'applied', header: { seq: set.position.seq } }
      this.#pendingApply.set(reply, applied)
      set.applying.add(applied)
      void applied.finally(() => set.applying.delete(applied)).catch(() => {})
      return reply
    })
    on('repl:resync-begin', async (set, header) => {
      set.resyncing = true
      set.nextFrom = undefined
      // A node deposed as primary (by this message's epoch, see #fence, or by the record) may still
      // have writes it recorded as primary on their way into its engine (a journal append, a sync):
      // the copy says where it stands, and shows its blocks to the digest comparison, only once
      // they are in. One landing after its block was compared would stay on this copy alone (the
      // new primary never had it), and every snapshot taken from then on would differ there.
      await this.#copy(set).drainTickets()
      this.#adoptPrimaryHint(set, header)
      // A copy that missed an expansion grows first, so the blocks beyond its old end can come.
      const size = (header.spec as { sizeBytes?: unknown } | undefined)?.sizeBytes
      if (Number.isSafeInteger(size) && (size as number) > this.#copy(set).sizeBytes) await this.#core.host.applyExpand(set.volumeId, size as number)
      // A copy that missed key rotations of the volume (away, or out of sync) rotates its own key
      // before it takes anything more, so no block the resync sends is sealed under the old one.
      const generation = (header.spec as { keyGeneration?: unknown } | undefined)?.keyGeneration
      if (Number.isSafeInteger(generation) && (generation as number) > 0) await this.#core.host.applyKeyRotation(set.volumeId, generation as number)
      // Answered only once no snapshot call is under way here (as the primary takes its cut): a
      // deposed primary's createSnapshot, deleteSnapshot or restoreSnapshot that began while it led
      // may still wait (for its writes, its metadata, its readers). Answered before, a snapshot it
      // took would stay on this copy alone (only those listed are pruned), one it deleted would be
      // gone here alone (only those not listed are sent), and a revert would change blocks after
      // the digest comparison read them. Calls from now on find this node no primary and forward.
      const snapshots = await this.#core.host.exclusive(async () => {
        // A revert this node left unfinished while it was the primary (its intent still fences the
        // copy's I/O, and a reopen would finish it on this copy alone) is the primary's now: the
        // copy holds what that primary did once the resync ends, comparing every block (a part
        // reverted copy is rebuilt whatever position it had).
        if (set.primary === undefined && await this.#core.host.dropUnfinishedRevert(set.volumeId)) {
          set.position = { epoch: 0, seq: 0 }
          set.durable = set.position
        }
        return this.#core.host.snapshots(set.volumeId).map((s) => s.id)
      })
      return { kind: 'resync-state', header: { epoch: set.position.epoch, seq: set.position.seq, snapshots } }
    })
    on('repl:resync-prune', async (set, header) => {
      for (const id of header.snapshots as string[]) await this.#core.host.applyDeleteSnapshot(set.volumeId, id)
      return { kind: 'ok', header: {} }
    })
    on('repl:digests', async (set, header) => {
      const blocks = this.#copy(set)
      const { indices, digests } = await digestRange(this.#core.host.engine, blocks, header.first as number, header.count as number, LIVE)
      return { kind: 'digests', header: { indices }, payload: digests }
    })
    on('repl:resync-blocks', async (set, header, payload) => {
      const blocks = this.#copy(set)
      const bs = this.#core.host.engine.blockSize
      const indices = header.indices as number[]
      const zero = header.zero as number[]
      const limit = Math.ceil(blocks.sizeBytes / bs)
      for (const list of [indices, zero]) {
        if (!Array.isArray(list) || !list.every((i) => Number.isSafeInteger(i) && i >= 0 && i < limit)) throw new GalleonError('INVALID_ARGUMENT', 'resync blocks need lists of block indices within the volume')
      }
      let at = 0
      if (payload === undefined ? indices.length > 0 : payload.byteLength < indices.length * bs) throw new GalleonError('INVALID_ARGUMENT', 'resync blocks are shorter than their list says')
      const changes: ReplicatedChange[] = zero.map((index) => ({ type: 'trim', offset: index * bs, length: bs }))
      for (const index of indices) {
        changes.push({ type: 'write', offset: index * bs, data: (payload as Uint8Array).subarray(at, at + bs) })
        at += bs
      }
      await this.#applyAll(set, blocks, changes)
      return { kind: 'ok', header: {} }
    })
    on('repl:resync-snapshot', async (set, header) => {
      await this.#core.host.engine.flush()
      const size = header.sizeBytes
      // The size the primary's snapshot has: the copy may have grown to the volume's size since.
      if (size !== undefined && (!Number.isSafeInteger(size) || (size as number) <= 0)) throw new GalleonError('INVALID_ARGUMENT', `repl:resync-snapshot has a bad sizeBytes: ${describe(size)}`)
      await this.#core.host.applySnapshot(set.volumeId, String(header.id), String(header.name), size as number | undefined, typeof header.token === 'string' ? header.token : undefined)
      return { kind: 'ok', header: {} }
    })
    on('repl:resync-end', async (set, header) => {
      if (!Number.isSafeInteger(header.seq) || (header.seq as number) < 0) throw new GalleonError('INVALID_ARGUMENT', 'resync-end needs the sequence number of the cut')
      await this.#core.host.engine.flush()
      // The reverts the copy now holds are the primary's at the cut (one this copy made alone, as
      // a primary whose stream never reached the others, was undone by the resync). Absent: a
      // hand-over's copy, which followed the same stream, or a primary of an earlier version.
      const reverts = header.revertTokens
      if (Array.isArray(reverts)) await this.#core.host.keepRevertTokens(set.volumeId, reverts.filter((t): t is string => typeof t === 'string'))
      // Likewise the forwarded writes it holds (the resync's blocks carry no identities); absent: as above.
      if (header.writes !== undefined) set.writes.replace(header.writes)
      set.position = { epoch: header.epoch as number, seq: header.seq as number }
      set.durable = set.position
      set.nextFrom = set.position.seq + 1
      set.resyncing = false
      await this.#core.host.savePosition(set.volumeId, set.position)
      return { kind: 'ok', header: {} }
    })
    on('repl:delete', async (set) => {
      await this.#core.dropCopy(set.volumeId)
      return { kind: 'ok', header: {} }
    })
    on('repl:io', async (set, header, payload) => {
      if (this.#core.host.closing()) throw new GalleonError('NOT_LEADER', closingMessage(this.#core.nodeId, set.volumeId))
      if (set.primary === undefined) {
        throw new GalleonError('NOT_LEADER', notPrimaryMessage(this.#core.nodeId, set.volumeId, set.record?.primary ?? 'unknown'))
      }
      const reply = await this.#core.host.serveForwarded(set.volumeId, header as unknown as ForwardedRequest, payload)
      return { kind: 'io', header: reply.header, ...(reply.payload === undefined ? {} : { payload: reply.payload }) }
    })
    this.#core.cluster.serving()
  }

  /**
   * Stream batches enter the copy's queue in sequence order even if the transport hands them over
   * out of order: a batch that comes early waits (briefly) for the ones before it.
   */
  async #turn (set: LocalSet, header: Record<string, unknown>): Promise<void> {
    const from = header.from
    const changes = header.changes
    if (typeof from !== 'number' || !Array.isArray(changes)) return
    const expected = set.nextFrom
    if (expected !== undefined && from > expected && header.epoch === set.position.epoch) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 2000)
        timer.unref()
        set.turns.set(from, () => { clearTimeout(timer); resolve() })
      })
      set.turns.delete(from)
    }
    set.nextFrom = from + changes.length
    set.turns.get(set.nextFrom)?.()
  }

  /** Refuses a message from an epoch older than one this copy knows of. */
  #fence (set: LocalSet, epoch: unknown): void {
    if (typeof epoch !== 'number') throw new GalleonError('INVALID_ARGUMENT', 'replication messages carry the primary epoch')
    if (epoch < set.knownEpoch || (set.primary !== undefined && epoch <= set.primary.epoch)) {
      throw new GalleonError('NOT_LEADER', `stale epoch ${epoch}: node ${this.#core.nodeId} knows of epoch ${Math.max(set.knownEpoch, set.primary?.epoch ?? 0)} for volume ${set.volumeId}`)
    }
    if (epoch > set.knownEpoch) {
      set.knownEpoch = epoch
      // A newer primary exists: if this node still thinks it leads, it does not.
      if (set.primary !== undefined) this.#core.stepDown(set, `a primary with epoch ${epoch} is shipping changes`)
    }
  }

  #adoptPrimaryHint (set: LocalSet, header: Record<string, unknown>): void {
    if (typeof header.primary === 'string' && typeof header.epoch === 'number' && (set.record === undefined || header.epoch > set.record.epoch)) {
      set.record = { ...(set.record ?? { spec: header.spec as VolumeSpec, nodes: [], inSync: [] }), primary: header.primary, epoch: header.epoch }
    }
  }

  #copy (set: LocalSet): VolumeBlocks {
    const blocks = this.#core.host.blocks(set.volumeId)
    if (blocks === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `node ${this.#core.nodeId} lost its copy of volume ${set.volumeId}`)
    return blocks
  }

  /**
   * Issues changes in order without waiting for writes and trims to finish (the engine takes each
   * one's block claims as it is called, so changes to one block apply in the order issued);
   * a snapshot waits for everything before it. Resolves, once all are issued, to a promise of
   * their completion.
   */
  async #issueAll (set: LocalSet, blocks: VolumeBlocks, changes: readonly ReplicatedChange[], durable = false): Promise<{ done: Promise<void> }> {
    const engine = this.#core.host.engine
    // Durable: the batch's writes go to the journal as one synced group (the copy's acknowledgement
    // needs them on disk anyway; one sync with the data instead of a second one after it).
    const concern = durable && engine.store.supports.durableSync ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
    let pending: Array<Promise<void>> = []
    const settle = async (waiting: Array<Promise<void>>): Promise<void> => {
      const results = await Promise.allSettled(waiting)
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
      if (failed !== undefined) throw failed.reason
    }
    const bs = engine.blockSize
    // Background: the primary's changes (stream or resync), not client I/O of this copy. Counted
    // here too, a volume's writes summed over its nodes came out once per copy.
    for (const change of changes) {
      // Issued in order, as the primary recorded it: a repeat of the forwarded write is not written again (see forwarded-writes.ts).
      if ((change.type === 'write' || change.type === 'trim') && change.writer !== undefined) set.writes.note(change.writer)
      if (change.type === 'write') {
        // One whole block (the usual change) takes the engine's one-block path, which does less per write.
        pending.push(change.data.byteLength === bs && change.offset % bs === 0
          ? engine.writeBlock(blocks, change.offset / bs, change.data, concern, undefined, true)
          : engine.write(blocks, change.offset, change.data, concern, undefined, true))
      } else if (change.type === 'trim') {
        pending.push(engine.trim(blocks, change.offset, change.length, concern, undefined, true))
      } else {
        const before = pending
        pending = []
        await settle(before)
        if (change.type === 'snapshot') {
          await engine.flush()
          await this.#core.host.applySnapshot(set.volumeId, change.id, change.name, undefined, change.token)
        } else if (change.type === 'expand') {
          await this.#core.host.applyExpand(set.volumeId, change.sizeBytes)
        } else if (change.type === 'revert') {
          await this.#core.host.applyRevert(set.volumeId, change.snapshotId, change.token)
        } else if (change.type === 'rekey') {
          // Before the changes after it: from here on the copy seals under its new key, as the primary does.
          await this.#core.host.applyKeyRotation(set.volumeId, change.generation)
        } else {
          await this.#core.host.applyDeleteSnapshot(set.volumeId, change.id)
        }
      }
    }
    const done = settle(pending)
    done.catch(() => {})
    // Wrapped: an async function returning a promise would wait for it.
    return { done }
  }

  /** Applies changes in order (as #issueAll issues them) and resolves once all are applied. */
  async #applyAll (set: LocalSet, blocks: VolumeBlocks, changes: readonly ReplicatedChange[]): Promise<void> {
    await (await this.#issueAll(set, blocks, changes)).done
  }

  /** The applied position is saved now and then (an older saved position only means a longer resync). */
  #savePositionSoon (set: LocalSet): void {
    if (set.saveTimer !== undefined) return
    set.saveTimer = setTimeout(() => {
      set.saveTimer = undefined
      void this.#core.host.savePosition(set.volumeId, set.durable).catch(() => {})
    }, 200)
    set.saveTimer.unref()
  }
}

/** Whether a stream batch (as its header lists it) holds only writes and trims. */
function changesOnlyData (changes: unknown): boolean {
  return Array.isArray(changes) && changes.every((c) => {
    const type = (c as { t?: unknown } | null)?.t
    return type === 'w' || type === 't'
  })
}
