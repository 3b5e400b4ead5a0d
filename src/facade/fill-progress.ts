// The progress a migration reports while copies of a volume on other nodes fill, sampled from the
// replication status (see ClusterMigrations).

import type { ReplicationManager } from '../replication/manager.js'

/**
 * Progress of copies being filled on other nodes (their links' resyncs, sampled from the
 * replication status), summed over the copies and never going backwards: a link clears its
 * progress when its resync ends, so a copy seen filling that is in sync at a later sample counts
 * as filled (done = total) at once, not at finish(); a copy that filled between two samples counts
 * as its whole size at finish(); and a resync that starts over does not take the figures back.
 */
export class FillProgress {
  readonly #seen = new Map<string, { done: number, total: number }>()
  #done = 0
  #total = 0

  /** `blocksPerCopy`: what a copy that filled unseen counts for (the volume's blocks, once per view). */
  constructor (private readonly replication: ReplicationManager, private readonly volumeId: string, private readonly blocksPerCopy: number) {}

  /** Samples the links to `nodes`; true when the figures moved. */
  sample (nodes: readonly string[]): boolean {
    const status = this.replication.status(this.volumeId)
    const links = status?.links ?? []
    for (const node of nodes) {
      const resync = links.find((l) => l.node === node)?.resync
      if (resync !== undefined) {
        this.#seen.set(node, { done: resync.blocksDone, total: resync.blocksTotal })
      } else {
        const seen = this.#seen.get(node)
        if (seen !== undefined && status?.inSync.includes(node) === true) seen.done = seen.total
      }
    }
    return this.#update([...this.#seen.values()].reduce((sum, s) => sum + s.done, 0), [...this.#seen.values()].reduce((sum, s) => sum + s.total, 0))
  }

  /** The figures at the end, every copy of `nodes` filled: done equals total. */
  finish (nodes: readonly string[]): { done: number, total: number } {
    const total = nodes.reduce((sum, node) => sum + (this.#seen.get(node)?.total ?? this.blocksPerCopy), 0)
    this.#update(Math.max(total, this.#total), total)
    this.#done = this.#total
    return { done: this.#done, total: this.#total }
  }

  get done (): number { return this.#done }
  get total (): number { return this.#total }

  #update (done: number, total: number): boolean {
    const nextDone = Math.max(this.#done, done)
    const nextTotal = Math.max(this.#total, total, nextDone)
    const moved = nextDone !== this.#done || nextTotal !== this.#total
    this.#done = nextDone
    this.#total = nextTotal
    return moved
  }
}
