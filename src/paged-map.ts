// A map from block indices (non-negative safe integers) to values, stored in pages of 256 slots.
//
// Block indices are dense (0 up to a volume's block count) and the hot paths touch runs of
// neighbouring ones (a 1 MiB write: 256 consecutive blocks). A Map<number, V> hashes every index
// to a different place in a table that, for a 1 GiB volume, holds 262,144 entries: each lookup is a
// hash, a bucket load and a chain walk through memory that neighbouring indices do not share. Here
// neighbouring indices share a page (an array of 256 slots), found through a small map of pages
// with the last page used cached, so a run of lookups costs one page lookup and array loads. With
// the file store's index and the engine's block map both on Map, a 1 MiB NBD write spent about 13%
// of the event loop in Map lookups (perf, 2026-12-03).
//
// Memory: 2 KiB per page in use (8 bytes per slot), so a sparse pattern (one block per 256) costs
// more than a Map would; the common patterns (sequential runs, a volume's blocks mostly written)
// cost less. Iteration is in ascending key order within a page and in page creation order.

/** Keys per page: page n holds the keys n * PAGE_SLOTS .. (n + 1) * PAGE_SLOTS - 1. */
export const PAGE_SLOTS = 256

class Page<V> {
  readonly slots: Array<V | undefined> = new Array<V | undefined>(PAGE_SLOTS).fill(undefined)
  count = 0
  constructor (readonly number: number) {}
}

export class PagedMap<V> {
  readonly #pages = new Map<number, Page<V>>()
  #last: Page<V> | undefined
  #size = 0

  /** Number of keys with a value. */
  get size (): number { return this.#size }

  #page (key: number): Page<V> | undefined {
    const number = Math.floor(key / PAGE_SLOTS)
    const last = this.#last
    if (last !== undefined && last.number === number) return last
    const page = this.#pages.get(number)
    if (page !== undefined) this.#last = page
    return page
  }

  get (key: number): V | undefined {
    // `key & 0xff` is the slot for any safe integer: ToInt32 keeps the low 32 bits.
    return this.#page(key)?.slots[key & 0xff]
  }

  has (key: number): boolean {
    return this.get(key) !== undefined
  }

  /** Stores `value` (not undefined) for `key`. */
  set (key: number, value: V): void {
    let page = this.#page(key)
    if (page === undefined) {
      page = new Page<V>(Math.floor(key / PAGE_SLOTS))
      this.#pages.set(page.number, page)
      this.#last = page
    }
    const slot = key & 0xff
    if (page.slots[slot] === undefined) {
      page.count++
      this.#size++
    }
    page.slots[slot] = value
  }

  /** Removes `key`; returns whether it had a value. */
  delete (key: number): boolean {
    const page = this.#page(key)
    const slot = key & 0xff
    if (page === undefined || page.slots[slot] === undefined) return false
    page.slots[slot] = undefined
    this.#size--
    if (--page.count === 0) {
      this.#pages.delete(page.number)
      if (this.#last === page) this.#last = undefined
    }
    return true
  }

  clear (): void {
    this.#pages.clear()
    this.#last = undefined
    this.#size = 0
  }

  * keys (): Generator<number> {
    for (const [key] of this.entries()) yield key
  }

  /** Entries of the keys present when each page is reached; keys set or deleted meanwhile may or may not be seen. */
  * entries (): Generator<[number, V]> {
    for (const page of [...this.#pages.values()]) {
      const base = page.number * PAGE_SLOTS
      for (let slot = 0; slot < PAGE_SLOTS; slot++) {
        const value = page.slots[slot]
        if (value !== undefined) yield [base + slot, value]
      }
    }
  }

  /**
   * Numbers of the pages in use that overlap [first, last], ascending: the only places a walk of the
   * range's keys need look. Work is the fewer of the range's pages and the pages in use (those then
   * sorted), so a huge sparse range costs what its keys do, not its length.
   */
  pagesBetween (first: number, last: number): number[] {
    const out: number[] = []
    if (!(first <= last)) return out
    const firstPage = Math.floor(first / PAGE_SLOTS)
    const lastPage = Math.floor(last / PAGE_SLOTS)
    if (lastPage - firstPage < this.#pages.size) {
      for (let number = firstPage; number <= lastPage; number++) if (this.#pages.has(number)) out.push(number)
      return out
    }
    for (const number of this.#pages.keys()) if (number >= firstPage && number <= lastPage) out.push(number)
    return sortNumbers(out)
  }

  [Symbol.iterator] (): Generator<[number, V]> {
    return this.entries()
  }
}

/** Sorts numbers in place, ascending (a typed-array sort: numeric, and faster than a comparator). */
function sortNumbers (numbers: number[]): number[] {
  const sorted = Float64Array.from(numbers).sort()
  for (let i = 0; i < sorted.length; i++) numbers[i] = sorted[i] as number
  return numbers
}
