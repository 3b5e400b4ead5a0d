// Compare-and-swap writes of volumes' records, and the writes whose answer was lost: each is
// settled (written or fenced off) before a later write of the volume decides on the record.

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError } from '../errors.js'
import { settleLostPut, type SettledPut } from '../cluster/lost-write.js'
import { parseRecord, recordKey, type ReplicaSetRecord } from './records.js'
import type { ManagerCore } from './common.js'
import type { Roles } from './roles.js'

/** The record writes of a ReplicationManager (see its update, hasUnsettled and settleAll). */
export class RecordUpdates {
  readonly #core: ManagerCore
  readonly #roles: Roles

  constructor (core: ManagerCore, roles: Roles) {
    this.#core = core
    this.#roles = roles
  }

  /**
   * Writes of a volume's record whose answer was lost and whose outcome could not be settled (see
   * #settle): each may still be applied. update() settles them before it reads the record for a
   * decision, so that no decision rests on a record such a write can still change.
   */
  readonly #unsettled = new Map<string, Array<{ value: string, expectRevision: number, err: unknown }>>()

  /** Compare-and-swap on a volume's record; a write whose answer is lost is settled (see #settle, and ReplicationManager.update). */
  async update (volumeId: string, change: (record: ReplicaSetRecord) => ReplicaSetRecord | undefined): Promise<{ record: ReplicaSetRecord, revision: number } | undefined> {
    await this.#settlePending(volumeId)
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await this.#core.coordinator.get(recordKey(volumeId))
      if (entry === undefined) return undefined
      const record = parseRecord(entry.value)
      if (record === undefined) return undefined
      const next = change(record)
      if (next === undefined) {
        this.#adoptEntry(volumeId, entry)
        return undefined
      }
      const value = JSON.stringify(next)
      let written: { revision: number } | undefined
      try {
        written = await this.#core.coordinator.put(recordKey(volumeId), value, { expectRevision: entry.revision })
      } catch (err) {
        // The write may have happened with its answer lost, or may still happen: settled first.
        written = await this.#settle(volumeId, value, entry.revision, err)
      }
      if (written !== undefined) {
        const set = this.#core.sets.get(volumeId)
        if (set !== undefined) this.#roles.adopt(set, next, written.revision)
        return { record: next, revision: written.revision }
      }
    }
    throw new GalleonError('BUSY', `the record of volume ${volumeId} kept changing; try again`)
  }

  /**
   * Settles a write of a volume's record that failed with `err` (perhaps only its answer was lost;
   * see settleLostPut): the entry written; when it did not apply and never can, this node takes up
   * the record as it is and `err` is thrown (the caller decided on a record that is gone). When
   * that cannot be told, the write is kept as unsettled and `err` is thrown.
   */
  async #settle (volumeId: string, value: string, expectRevision: number, err: unknown): Promise<{ revision: number }> {
    let settled: SettledPut
    try {
      settled = await settleLostPut(this.#core.coordinator, recordKey(volumeId), value, expectRevision, err)
    } catch (unknown) {
      const pending = this.#unsettled.get(volumeId) ?? []
      pending.push({ value, expectRevision, err })
      this.#unsettled.set(volumeId, pending)
      throw unknown
    }
    if (settled.written) return settled.entry
    if (settled.entry !== undefined) this.#adoptEntry(volumeId, settled.entry)
    throw err
  }

  /** Settles the writes of the volume's record whose outcome is unknown (oldest first); throws while one cannot be. */
  async #settlePending (volumeId: string): Promise<void> {
    for (;;) {
      const pending = this.#unsettled.get(volumeId)
      const write = pending?.[0]
      if (pending === undefined || write === undefined) return
      const settled = await settleLostPut(this.#core.coordinator, recordKey(volumeId), write.value, write.expectRevision, write.err)
      // (Another update() of the volume may have settled it meanwhile.)
      const at = pending.indexOf(write)
      if (at >= 0) pending.splice(at, 1)
      if (pending.length === 0 && this.#unsettled.get(volumeId) === pending) this.#unsettled.delete(volumeId)
      if (settled.entry !== undefined) this.#adoptEntry(volumeId, settled.entry)
    }
  }

  /** See ReplicationManager.hasUnsettled. */
  hasUnsettled (volumeId: string): boolean {
    return (this.#unsettled.get(volumeId)?.length ?? 0) > 0
  }

  /** Settles the volume's unsettled record writes (see #settle), retrying (see ReplicationManager.settleAll). */
  async settleAll (volumeId: string, stop: () => boolean, retryMs = 250): Promise<boolean> {
    while (this.hasUnsettled(volumeId)) {
      if (stop()) return false
      try {
        await this.#settlePending(volumeId)
      } catch {
        await sleep(retryMs)
      }
    }
    return true
  }

  /** Takes up a record entry read from the coordinator, if this node holds a copy of the volume. */
  #adoptEntry (volumeId: string, entry: { value: string, revision: number }): void {
    const record = parseRecord(entry.value)
    const set = this.#core.sets.get(volumeId)
    if (record !== undefined && set !== undefined) this.#roles.adopt(set, record, entry.revision)
  }
}
