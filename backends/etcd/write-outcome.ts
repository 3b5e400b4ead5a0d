// What became of an etcd transaction whose answer was lost (a deadline passed, a connection
// dropped): etcd may have applied it, may not have, or may yet. Looked up in the key's history
// rather than sent again blindly: a second send of a compare-and-swap etcd applied fails against its
// own write. Used by the etcd coordinator (index.ts).

import { randomBytes } from 'node:crypto'
import type { IKeyValue } from 'etcd3'
import type { StoreCondition, StoreOp, StoreTxnResult } from '../../src/cluster/coordinator-store.js'
import { GalleonError } from '../../src/errors.js'

/** Reads a key as it is (or as it was at `revision`), with the revision etcd answered at. */
export type KeyVersion = (key: string, revision?: number) => Promise<{ kv: IKeyValue | undefined, revision: number }>

/** Whether a transaction condition holds for the key as `kv` (undefined: the key does not exist). */
function holds (condition: StoreCondition, kv: IKeyValue | undefined): boolean {
  return Number((condition.target === 'mod' ? kv?.mod_revision : kv?.create_revision) ?? 0) === condition.revision
}

/**
 * A condition of the transaction that its own ops make false (a put changes the key's mod revision
 * and makes it exist; a delete ends the key): the transaction applies at most once however often it
 * is sent, and not after that condition turned false.
 */
function guardOf (conditions: readonly StoreCondition[], ops: readonly StoreOp[]): StoreCondition | undefined {
  return conditions.find((condition) => ops.some((op) => op.key === condition.key &&
    (op.type === 'put' ? condition.target === 'mod' || condition.revision === 0 : condition.revision > 0)))
}

/** A lease ID chosen here (a positive int64; 0 would let etcd choose). */
export function randomLeaseId (): string {
  const id = randomBytes(8).readBigUInt64BE() >> 1n
  return id === 0n ? randomLeaseId() : String(id)
}

/**
 * What became of a transaction sent after revision `sentAfter` whose answer was lost: its result
 * if etcd applied it, a failed one if it did not and cannot any more, or 'not applied' when it can
 * be sent again (it has not been applied, and its guard keeps it from applying twice; or it has
 * no guard, and writes the same again, as any client retrying a write without condition does).
 * An identical transaction of another client is taken for this one: nothing in etcd tells them
 * apart. One case stays open: a key that had to be absent, is absent now, and may have been created
 * by this transaction and deleted by another client since; sending it again then creates it again.
 */
export async function writeOutcome (conditions: readonly StoreCondition[], ops: readonly StoreOp[], sentAfter: number, version: KeyVersion): Promise<StoreTxnResult | 'not applied'> {
  const guard = guardOf(conditions, ops)
  if (guard === undefined) return 'not applied'
  const now = await version(guard.key)
  const failed: StoreTxnResult = { succeeded: false, revision: now.revision, deleted: 0 }
  if (holds(guard, now.kv)) {
    // Not applied. A condition on a mod or create revision above 0 that is false now stays false
    // (a key never returns to an earlier revision): then sending again would fail for ever.
    for (const condition of conditions) {
      if (condition !== guard && condition.revision > 0 && !holds(condition, (await version(condition.key, now.revision)).kv)) return failed
    }
    return 'not applied'
  }
  if (guard.revision > 0) {
    // A key is at a given mod (or create) revision for one stretch of revisions only: the
    // transaction can only have applied at the first revision after the send where the guard no
    // longer held. The search starts at the send (recent, so not compacted away), not at
    // guard.revision, which may be long ago: if the guard did not hold then, it never held since.
    // A revision etcd compacted away counts as one where the guard held (the transaction, sent
    // lately, most likely came after the compaction); the answer is then "applied" only when its
    // writes show, and "unknown" rather than "failed" otherwise.
    let compactedAway = false
    const guardHeldAt = async (revision: number): Promise<boolean> => {
      try {
        return holds(guard, (await version(guard.key, revision)).kv)
      } catch (err) {
        if (!isCompacted(err)) throw err
        compactedAway = true
        return true
      }
    }
    if (sentAfter > guard.revision && !await guardHeldAt(sentAfter)) return failed
    let low = Math.max(guard.revision, sentAfter)
    let high = now.revision
    if (low >= high) return failed
    while (high - low > 1) {
      const middle = Math.floor((low + high) / 2)
      if (await guardHeldAt(middle)) low = middle
      else high = middle
    }
    const applied = await appliedAt(high, conditions, ops, version).catch((err: unknown) => {
      if (!isCompacted(err)) throw err
      compactedAway = true
      return undefined
    })
    if (applied !== undefined) return applied
    if (compactedAway) throw new GalleonError('BACKEND_UNAVAILABLE', `the history of key '${guard.key}' was compacted while the answer was lost`)
    return failed
  }
  // The key had to be absent: the transaction can only be what created the key there now.
  const created = Number(now.kv?.create_revision ?? 0)
  // There since before the send: it never was absent since, so the transaction did not apply.
  if (created <= sentAfter) return failed
  const applied = await appliedAt(created, conditions, ops, version)
  if (applied !== undefined) return applied
  // Made by another client; this transaction may still have made an earlier one that is gone now.
  throw new GalleonError('BACKEND_UNAVAILABLE', `key '${guard.key}' was created and changed again while the answer was lost`)
}

/** Whether etcd refused a read because the revision asked for was compacted away. */
function isCompacted (err: unknown): boolean {
  return err instanceof Error && /compacted/.test(err.message)
}

/** The transaction's result if etcd applied it at revision `at`: its conditions held just before, and its writes show at `at`. */
async function appliedAt (at: number, conditions: readonly StoreCondition[], ops: readonly StoreOp[], version: KeyVersion): Promise<StoreTxnResult | undefined> {
  for (const condition of conditions) {
    if (!holds(condition, (await version(condition.key, at - 1)).kv)) return undefined
  }
  let deleted = 0
  for (const op of ops) {
    const { kv } = await version(op.key, at)
    if (op.type === 'put') {
      if (kv === undefined || Number(kv.mod_revision) !== at || !kv.value.equals(Buffer.from(op.value)) || kv.lease !== (op.lease ?? '0')) return undefined
    } else {
      if (kv !== undefined) return undefined
      if ((await version(op.key, at - 1)).kv !== undefined) deleted++
    }
  }
  return { succeeded: true, revision: at, deleted }
}
