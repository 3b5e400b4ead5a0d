// Counted holds on names: a map of amounts per key, with releases that undo exactly their own part.

/** Adds `amount` to `counts[key]`; the returned function takes it back once (the key goes at 0). */
export function holdCount (counts: Map<string, number>, key: string, amount = 1): () => void {
  counts.set(key, (counts.get(key) ?? 0) + amount)
  let released = false
  return () => {
    if (released) return
    released = true
    const left = (counts.get(key) ?? 0) - amount
    if (left > 0) counts.set(key, left)
    else counts.delete(key)
  }
}
