// Errors of background work that no caller hears (a block store's compaction, the audit log's
// index build): reported as `io:error` events with no volume, once the instance exists.

import type { EventEmitter } from 'eventemitter3'
import { errorCode } from '../errors.js'
import type { GalleonEvents } from '../events.js'

/** At most this many reports wait for the instance (the first ones: they name the cause). */
const MAX_WAITING = 32

/** Takes background errors from drivers and the instance's parts; emits them once attached. */
export class BackgroundErrors {
  #emitter: EventEmitter<GalleonEvents> | undefined
  #waiting: unknown[] = []

  /** For DriverContext.reportBackgroundError and the instance's own parts. */
  readonly report = (err: unknown): void => {
    if (this.#emitter === undefined) {
      if (this.#waiting.length < MAX_WAITING) this.#waiting.push(err)
      return
    }
    emit(this.#emitter, err)
  }

  /**
   * From now on reports go to `emitter`; those made before are emitted on the turn after this one,
   * once open() has returned the instance and its caller could attach listeners.
   */
  attach (emitter: EventEmitter<GalleonEvents>): void {
    this.#emitter = emitter
    const waiting = this.#waiting
    this.#waiting = []
    if (waiting.length > 0) setImmediate(() => { for (const err of waiting) emit(emitter, err) })
  }
}

function emit (emitter: EventEmitter<GalleonEvents>, err: unknown): void {
  emitter.emit('io:error', { volumeId: '', volumeName: '', operation: 'write', code: errorCode(err), message: (err as Error)?.message ?? String(err) })
}
