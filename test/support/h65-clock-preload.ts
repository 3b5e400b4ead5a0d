// Preloaded (node --import) into a child process: replaces globalThis.Date with one whose "now" is
// the real wall clock plus an offset the process can step, as NTP, an operator or a resumed VM
// steps the wall clock. Timers, performance.now() and process.hrtime() are left alone.

/** Control of the stepped clock, on globalThis.h65Clock in a child that preloaded this module. */
export interface SteppedClock {
  /** Steps the wall clock by `ms` (negative: back). */
  step: (ms: number) => void
  /** Total step so far. */
  readonly offsetMs: number
}

const RealDate = Date
let offsetMs = 0
const now = (): number => RealDate.now() + offsetMs

const SteppedDate: DateConstructor = new Proxy(RealDate, {
  // new Date() reads the stepped clock; new Date(anything) is the real constructor.
  construct (target, args, newTarget): object {
    return Reflect.construct(target, args.length === 0 ? [now()] : args, newTarget === SteppedDate ? target : newTarget)
  },
  // Date() called as a function returns the current time as a string.
  apply () {
    return new RealDate(now()).toString()
  },
  get (target, property, receiver) {
    if (property === 'now') return now
    return Reflect.get(target, property, receiver)
  }
})

globalThis.Date = SteppedDate
const control: SteppedClock = {
  step: (ms: number) => { offsetMs += ms },
  get offsetMs () { return offsetMs }
}
;(globalThis as unknown as { h65Clock: SteppedClock }).h65Clock = control

// Driven by a parent over IPC: { h65Step: ms } steps the clock and is answered { h65Stepped: offset }.
if (process.send !== undefined) {
  process.on('message', (message: { h65Step?: number } | null) => {
    if (typeof message?.h65Step !== 'number') return
    offsetMs += message.h65Step
    process.send?.({ h65Stepped: offsetMs })
  })
  // The IPC channel alone does not keep the child alive.
  ;(process.channel as { unref?: () => void } | undefined)?.unref?.()
}
