// The order in which backups were taken. Every "newest" or "latest" decision (an incremental's
// base, the snapshots a backup keeps, retention, a policy's chain length, listBackups) uses it, not
// the dates backups carry: a wall clock stepped back (NTP, an operator, a resumed VM) dates newer
// backups before older ones.
//
// Each manifest carries a sequence number, per volume on its target: one more than the largest the
// backup saw among the volume's manifests there when it started (read before its snapshot is
// taken). Per volume rather than per target because every decision it serves is about one volume's
// backups, and so a backup needs only the manifests it reads anyway (its volume's, through the
// index), and manifests of other volumes (damaged, altered, or from writers of other versions)
// cannot disturb it. It needs no lock and no clock: a backup that starts after another one's
// manifest is stored, in any instance or process writing the target, is numbered after it. Two
// that run at the same time from two instances may get the same number (neither saw the other, so
// either order is true); equal numbers fall back to the dates, then the ids.
//
// Manifests written before sequences (no `sequence`) count as 0: they come before every numbered
// one of their volume, and among themselves by date, as they always did. That is the order of an
// upgrade (every numbered backup is taken after the release that numbers them took over); an
// earlier release still writing to the same target alongside this one has its later backups
// ordered before this one's (upgrade every instance writing a target).

/** What orders a backup: its volume, sequence (null or absent: from before sequences), date and id. */
export interface TakenOrderKey {
  readonly id: string
  readonly volumeId: string
  readonly sequence?: number | null
  readonly createdAt: string
}

/** Orders two backups of one volume (on one target) by when they were taken, older first. */
export function compareTaken (a: TakenOrderKey, b: TakenOrderKey): number {
  return (a.sequence ?? 0) - (b.sequence ?? 0) || a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id)
}

/**
 * Backups (or manifests, index lines) oldest first: each volume's in the order they were taken
 * (compareTaken); the volumes' lists, whose sequences do not compare, merged by date (then id),
 * which is all there is to order backups of different volumes by. Without sequences (or with a
 * clock that never stepped back) that is the order by date and id that listings always had.
 */
export function inTakenOrder<T> (items: Iterable<T>, key: (item: T) => TakenOrderKey): T[] {
  const byVolume = new Map<string, Array<{ readonly item: T, readonly key: TakenOrderKey }>>()
  for (const item of items) {
    const k = key(item)
    let list = byVolume.get(k.volumeId)
    if (list === undefined) byVolume.set(k.volumeId, list = [])
    list.push({ item, key: k })
  }
  // Each volume's list newest last, reversed so that its oldest is popped first.
  const stacks = [...byVolume.values()].map((list) => list.sort((a, b) => compareTaken(b.key, a.key)))
  const out: T[] = []
  for (;;) {
    let oldest: (typeof stacks)[number] | undefined
    for (const stack of stacks) {
      const head = stack.at(-1)
      const best = oldest?.at(-1)
      if (head !== undefined && (best === undefined || (head.key.createdAt.localeCompare(best.key.createdAt) || head.key.id.localeCompare(best.key.id)) < 0)) oldest = stack
    }
    const next = oldest?.pop()
    if (next === undefined) return out
    out.push(next.item)
  }
}

/** The sequence of a volume's next backup: one more than the largest of its `manifests` (at most Number.MAX_SAFE_INTEGER). */
export function nextSequence (manifests: Iterable<{ readonly sequence?: number }>): number {
  let largest = 0
  for (const manifest of manifests) if (manifest.sequence !== undefined && manifest.sequence > largest) largest = manifest.sequence
  // A manifest altered on the target can claim any number (as it can claim any date): at the top,
  // later backups share it and are ordered by their dates, rather than failing.
  return Math.min(Number.MAX_SAFE_INTEGER, largest + 1)
}
