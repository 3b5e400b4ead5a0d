// Background work of the file block store, run one task at a time: the queue itself, the reporting of
// errors no caller waits for, and the hint files written for sealed segments.

import { wrapIo } from '../../src/abstract-block-store.js'
import { writeFileAtomically } from '../../src/durable-files.js'
import { hintPath } from './segment.js'
import { noop, type Segment, type StoreState } from './store-state.js'

/** Queues `task` after all background work already queued. */
export function maintain<T> (state: StoreState, task: () => Promise<T>): Promise<T> {
  const run = state.maintenance.then(task)
  state.maintenance = run.then(noop, noop)
  return run
}

/** Hands an error of background work to onBackgroundError, or keeps it in lastBackgroundError. */
export function reportBackground (state: StoreState, err: unknown): void {
  const error = wrapIo(err, `background work of the block store at ${state.location} failed`)
  // Called as a plain function: the listener must not see the store's internal state as `this`.
  const listener = state.onBackgroundError
  if (listener === undefined) {
    state.lastBackgroundError = error
    return
  }
  try {
    listener(error)
  } catch {
    // Called from a promise handler: a throwing listener would become an unhandled rejection and
    // stop the process. Keep the error where it can still be found.
    state.lastBackgroundError = error
  }
}

/** Queues the writing of a sealed segment's hint file as background work. */
export function scheduleHint (state: StoreState, segment: Segment): void {
  maintain(state, async () => await writeHint(state, segment)).catch((err: unknown) => reportBackground(state, err))
}

/** Writes the hint of a sealed segment: to a temporary name, fsynced, then renamed into place. */
async function writeHint (state: StoreState, segment: Segment): Promise<void> {
  const hint = segment.hint
  if (hint === undefined || state.segments.get(segment.id) !== segment || state.failure !== undefined) return
  await writeFileAtomically(hintPath(state.location, segment.id), hint.finish(segment.size))
  segment.hint = undefined
}
