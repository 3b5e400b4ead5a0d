// A block store wrapper for tests that must see every value written below the engine (the
// encryption tests scan them for plaintext); everything else passes through to the real store.

import type { BlockAddress, BlockOp, BlockStore } from '../../src/index.js'

/** Wraps `inner`: `puts` collects a copy of every value put through a batch. */
export function recording (inner: BlockStore): { store: BlockStore, puts: Array<{ address: BlockAddress, data: Uint8Array }> } {
  const puts: Array<{ address: BlockAddress, data: Uint8Array }> = []
  const store = new Proxy(inner, {
    get (target, prop) {
      if (prop === 'batch') {
        return async (ops: BlockOp[], options?: { sync?: boolean }) => {
          for (const op of ops) if (op.type === 'put') puts.push({ address: { ...op.address }, data: Uint8Array.from(op.data) })
          return await target.batch(ops, options)
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, puts }
}
