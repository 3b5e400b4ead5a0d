// A coordinator for tests of writes whose answer is lost: its put of one key lands (or, with
// `applies` false, never reaches the coordinator) and answers with an error, after which no read
// answers until `readsDown` is cleared: a coordinator that stops answering right after a write.

import { GalleonError } from '../../src/index.js'
import type { Coordinator } from '../../src/drivers.js'

type Call = (...args: unknown[]) => Promise<unknown>

/** A coordinator whose put of `lostKey` lands with its answer lost, after which no read answers until readsDown is cleared. */
export class LosingCoordinator {
  lostKey: string | undefined
  readsDown = false
  /** false: the put of lostKey fails without being applied (the request never reached the coordinator). */
  applies = true

  wrap (coordinator: Coordinator): Coordinator {
    return new Proxy(coordinator, {
      get: (target, name) => {
        const value = Reflect.get(target, name, target) as unknown
        if (typeof value !== 'function') return value
        if (name === 'get') {
          return async (...args: unknown[]) => {
            if (this.readsDown) throw new GalleonError('BACKEND_UNAVAILABLE', 'test: the coordinator answers no read')
            return await (value as Call).apply(target, args)
          }
        }
        if (name === 'put') {
          return async (key: string, ...rest: unknown[]) => {
            if (key === this.lostKey && !this.applies) {
              this.lostKey = undefined
              this.readsDown = true
              throw new GalleonError('BACKEND_UNAVAILABLE', 'test: this put never reached the coordinator')
            }
            const answer = await (value as Call).call(target, key, ...rest)
            if (key !== this.lostKey) return answer
            this.lostKey = undefined
            this.readsDown = true
            throw new GalleonError('BACKEND_UNAVAILABLE', 'test: the answer of this put was lost')
          }
        }
        return value.bind(target)
      }
    })
  }
}
