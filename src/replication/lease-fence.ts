// Fencing by lease: while this node holds no cluster lease its primaries serve nothing, and once it
// holds a new one each volume's record is read (and confirmed) again before its copy serves.

import { setTimeout as sleep } from 'node:timers/promises'
import type { Coordinator } from '../drivers.js'
import { parseRecord, recordKey } from './records.js'
import type { LocalSet, ManagerCore } from './common.js'
import type { Roles } from './roles.js'

/** The lease fencing of a ReplicationManager's local sets (see LocalSet.fenced). */
export class LeaseFence {
  readonly #core: ManagerCore
  readonly #roles: Roles
  /** This node's lease ended and no new one is held yet (see LocalSet.fenced). */
  #leaseLost = false
  /** Bumped at every loss of the lease: an unfence whose awaits spanned a loss (and a new lease) starts over. */
  #leaseLosses = 0

  constructor (core: ManagerCore, roles: Roles) {
    this.#core = core
    this.#roles = roles
  }

  /** This node's lease ended and no new one is held yet: a new local set starts fenced. */
  get lost (): boolean { return this.#leaseLost }

  /**
   * Fencing by lease: once this node's lease ends (its own deadline, which passes before the
   * coordinator expires the lease and so before any failover), its primaries serve nothing; once it
   * holds a new lease, each volume's record is read again (a failover meanwhile makes this node step
   * down) before its primary serves again.
   */
  changed (held: boolean): void {
    this.#leaseLost = !held
    if (!held) {
      this.#leaseLosses++
      for (const set of this.#core.sets.values()) {
        set.fenced = true
        if (set.primary !== undefined) this.#core.host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.#core.nodeId, code: 'NOT_LEADER', message: `node ${this.#core.nodeId} lost its cluster lease (its keepalives did not reach the coordinator in time): as the primary of volume ${set.volumeId} it serves no I/O until it holds a lease again and the volume's record says it is still the primary` })
      }
      return
    }
    for (const set of this.#core.sets.values()) if (set.fenced) void this.#unfence(set)
  }

  /** Reads the volume's record again (retrying while the coordinator does not answer), then lets the set serve. */
  async #unfence (set: LocalSet): Promise<void> {
    const current = (losses: number): boolean => losses === this.#leaseLosses && !this.#leaseLost && set.fenced && !this.#core.closed && this.#core.sets.get(set.volumeId) === set
    // One unfence per lease: a loss meanwhile ends this one (the next lease starts its own).
    const losses = this.#leaseLosses
    let garbledReported = false
    for (let delayMs = 100; current(losses); delayMs = Math.min(delayMs * 2, 2000)) {
      let read: { entry: Awaited<ReturnType<Coordinator['get']>> } | undefined
      try {
        read = { entry: await this.#core.coordinator.get(recordKey(set.volumeId)) }
      } catch {
        read = undefined
      }
      // A lease lost (and maybe got back) meanwhile, or the set gone: this read counts for nothing.
      if (!current(losses)) return
      if (read !== undefined) {
        const entry = read.entry
        const record = entry === undefined ? undefined : parseRecord(entry.value)
        if (record !== undefined && entry !== undefined && record.primary === this.#core.nodeId) {
          // Still named primary: the record is written back unchanged at the revision read, so a
          // failover the cluster leader decided while this node was away (a compare-and-swap at
          // that revision, still on its way) can no longer land after this node serves again; if
          // it landed first, this write fails and the next read shows the new primary.
          const written = await this.#core.coordinator.put(recordKey(set.volumeId), entry.value, { expectRevision: entry.revision }).catch(() => undefined)
          if (!current(losses)) return
          if (written !== undefined) {
            this.#roles.adopt(set, record, written.revision)
            set.fenced = false
            return
          }
        } else if (entry !== undefined && record === undefined) {
          // A record that cannot be read as one (damaged, another format) confirms nothing: the
          // copy stays fenced and reads it again, saying so once.
          if (!garbledReported) this.#core.host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.#core.nodeId, code: 'CORRUPTION', message: `the cluster's record of volume ${set.volumeId} cannot be read as a replica-set record, so node ${this.#core.nodeId} cannot confirm it is still the primary: it serves no I/O for the volume until the record reads right again` })
          garbledReported = true
        } else {
          if (record !== undefined && entry !== undefined) this.#roles.adopt(set, record, entry.revision)
          // Deleted meanwhile, and the watch's delete not here yet (a watch that reconnects after
          // the outage delivers it late): taken as that delete now, so the copy serves nothing.
          else if (entry === undefined && set.record !== undefined) this.#roles.recordGone(set)
          set.fenced = false
          return
        }
      }
      await sleep(delayMs, undefined, { ref: false })
    }
  }
}
