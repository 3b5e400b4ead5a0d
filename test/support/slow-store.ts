// A file block store whose batches are slow and can be made to fail: for tests of what a mount
// does with writes it acknowledged before they reached the volume.

import { join } from 'node:path'
import type { BlockStore } from '../../src/index.js'

/** A file store in `<dir>/blocks` whose batches take `delay` ms, and fail (those with puts) while `control.failing` is set. */
export async function slowStore (dir: string, delay: number): Promise<{ store: BlockStore, control: { failing: boolean } }> {
  const { FileBlockStore } = await import('../../backends/file/index.js')
  const inner = new FileBlockStore({ location: join(dir, 'blocks') })
  const control = { failing: false }
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (...args: Parameters<typeof inner.batch>) => {
          await new Promise((resolve) => setTimeout(resolve, delay))
          if (control.failing && args[0].some((op) => op.type === 'put')) throw new Error('injected write failure')
          return await target.batch(...args)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, control }
}
