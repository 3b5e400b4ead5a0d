// Runs tasks one at a time, in call order; a failed task does not stop the ones after it.

export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve()

  /** Runs `task` after every task queued before it has settled. */
  async run<T> (task: () => Promise<T>): Promise<T> {
    const run = this.#tail.catch(() => {}).then(task)
    this.#tail = run
    return await run
  }
}
