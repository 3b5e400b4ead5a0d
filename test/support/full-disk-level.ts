// A memory-level metadata database whose writes fail as on a full disk (ENOSPC) while `failing` is
// set: for tests of what a refused or half-done metadata change leaves.

import { MemoryLevel } from 'memory-level'

export class FullDiskLevel extends MemoryLevel<string, unknown> {
  failing = false

  #check (): void {
    if (this.failing) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })
  }

  // The hooks abstract-level calls for every put and batch of the database and its sublevels.
  async _batch (...args: unknown[]): Promise<void> {
    this.#check()
    await (MemoryLevel.prototype as unknown as { _batch: (...a: unknown[]) => Promise<void> })._batch.apply(this, args)
  }

  async _put (...args: unknown[]): Promise<void> {
    this.#check()
    await (MemoryLevel.prototype as unknown as { _put: (...a: unknown[]) => Promise<void> })._put.apply(this, args)
  }
}
