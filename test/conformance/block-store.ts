// Conformance suite for BlockStore drivers: `blockStoreSuite()` registers the same node:test tests for
// any backend, skipping (visibly) what the backend's `supports` says it lacks.

import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as nodeTest from 'node:test'
import { setImmediate as nextMacrotask, setTimeout as sleep } from 'node:timers/promises'
import { MAX_BLOCK_VALUE_BYTES, type BlockAddress, type BlockOp, type BlockStore, type BlockStoreSupports } from '../../src/drivers.js'
import type { GalleonErrorCode } from '../../src/errors.js'
import { addr, assertBytes, bytesOf, collect, del, put, seededRandom as mulberry32 } from './fixtures.js'

/** Options of {@link blockStoreSuite}. */
export interface BlockStoreSuiteOptions {
  /** Backend name, used in test titles. */
  name: string
  /**
   * Creates a closed store at `location`, a fresh temporary directory per test (removed afterwards).
   * For a persistent backend, calling it again with the same location must give the same data.
   */
  factory: (location: string) => BlockStore | Promise<BlockStore>
  /**
   * Narrows the capabilities to test; by default everything `store.supports` declares. `false` skips
   * that capability's tests (e.g. a factory that cannot reopen data); `true` asserts the store declares it.
   */
  supports?: Partial<BlockStoreSupports>
  /** The `test` function to register with (default: node:test's). */
  test?: typeof nodeTest.test
  /** The `describe` function to group with (default: node:test's). */
  describe?: typeof nodeTest.describe
}

/** A declared capability, or an optional method the store has. */
type Capability = keyof BlockStoreSupports | 'getMany'
const CAPABILITIES: ReadonlyArray<keyof BlockStoreSupports> = ['persistent', 'durableSync', 'atomicBatch', 'reclaimsSpace']

interface StoreContext {
  /** A store at a fresh location, open unless the test asked otherwise. */
  store: BlockStore
  /** Closes `previous` and opens a new instance from the factory at the same location. */
  reopen: (previous: BlockStore) => Promise<BlockStore>
}

/**
 * Registers the BlockStore conformance tests for one backend. A backend is conformant when all pass:
 *
 * ```ts
 * blockStoreSuite({ name: 'mine', factory: (location) => new MyBlockStore({ location }) })
 * ```
 */
export function blockStoreSuite (options: BlockStoreSuiteOptions): void {
  const { name, factory } = options
  const test = options.test ?? nodeTest.test
  const describe = options.describe ?? nodeTest.describe

  /**
   * One test on a fresh location and a store (opened unless `open` is false), skipped unless the store
   * has every capability in `needs`.
   */
  function storeTest (title: string, needs: readonly Capability[], body: (context: StoreContext) => Promise<void>, { open = true } = {}): void {
    test(title, async (t) => {
      const location = await mkdtemp(join(tmpdir(), 'galleonfs-conformance-'))
      const stores: BlockStore[] = []
      const create = async (): Promise<BlockStore> => {
        const store = await factory(location)
        stores.push(store)
        return store
      }
      let passed = false
      try {
        const store = await create()
        const missing = needs.filter((capability) => !capabilities(store, options.supports)[capability])
        if (missing.length > 0) {
          t.skip(`${name} does not support ${missing.join(', ')}`)
          passed = true
          return
        }
        if (open) await store.open()
        await body({
          store,
          reopen: async (previous) => {
            await previous.close()
            const next = await create()
            await next.open()
            return next
          }
        })
        passed = true
      } finally {
        try {
          // A failure to close is a failure of the test, unless the body already failed.
          for (const store of stores) await store.close().catch((err: unknown) => { if (passed) throw err })
        } finally {
          await rm(location, { recursive: true, force: true })
        }
      }
    })
  }

  describe(`BlockStore conformance: ${name}`, () => {
    describe('lifecycle', () => {
      test('declares a name and its capabilities, and starts closed', async () => {
        const location = await mkdtemp(join(tmpdir(), 'galleonfs-conformance-'))
        try {
          const store = await factory(location)
          assert.equal(typeof store.name, 'string')
          assert.ok(store.name.length > 0, 'name must not be empty')
          for (const capability of CAPABILITIES) assert.equal(typeof store.supports[capability], 'boolean', `supports.${capability}`)
          for (const [capability, wanted] of Object.entries(options.supports ?? {})) {
            if (wanted === true) assert.equal(store.supports[capability as keyof BlockStoreSupports], true, `the suite was told ${name} supports ${capability}`)
          }
          assert.equal(store.status, 'closed')
        } finally {
          await rm(location, { recursive: true, force: true })
        }
      })

      storeTest('open() and close() are idempotent', [], async ({ store }) => {
        await store.open()
        await store.open()
        assert.equal(store.status, 'open')
        await store.close()
        await store.close()
        assert.equal(store.status, 'closed')
      }, { open: false })

      storeTest('concurrent open() and close() calls settle to the last one asked for', [], async ({ store }) => {
        await Promise.all([store.open(), store.open(), store.open()])
        assert.equal(store.status, 'open')
        await Promise.all([store.close(), store.close()])
        assert.equal(store.status, 'closed')
        await Promise.all([store.open(), store.close()])
        assert.equal(store.status, 'closed')
        await store.open()
        await store.batch([put(addr(1, 1), bytesOf(16, 1))])
        assertBytes(await store.get(addr(1, 1)), bytesOf(16, 1))
      }, { open: false })

      storeTest('open() calls racing a close() open the store once', [], async ({ store }) => {
        await store.batch([put(addr(1, 1), bytesOf(16, 1))])
        const closing = store.close()
        await Promise.all([closing, store.open(), store.open()])
        assert.equal(store.status, 'open')
        await store.batch([put(addr(1, 2), bytesOf(16, 2))])
        assertBytes(await store.get(addr(1, 2)), bytesOf(16, 2))
      })

      storeTest('every operation rejects with NOT_OPEN before open() and after close()', [], async ({ store }) => {
        for (const when of ['before open()', 'after close()']) {
          if (when === 'after close()') {
            await store.open()
            await store.close()
          }
          await rejectsWith(() => store.get(addr(1, 1)), 'NOT_OPEN', `get ${when}`)
          if (store.getMany !== undefined) await rejectsWith(() => store.getMany!([addr(1, 1)]), 'NOT_OPEN', `getMany ${when}`)
          await rejectsWith(() => store.batch([put(addr(1, 1), bytesOf(4, 1))]), 'NOT_OPEN', `batch ${when}`)
          await rejectsWith(() => store.batch([]), 'NOT_OPEN', `empty batch ${when}`)
          await rejectsWith(() => store.sync(), 'NOT_OPEN', `sync ${when}`)
          await rejectsWith(() => collect(store.addresses()), 'NOT_OPEN', `addresses ${when}`)
          await rejectsWith(() => store.deleteVolume(1), 'NOT_OPEN', `deleteVolume ${when}`)
          await rejectsWith(() => store.stats(), 'NOT_OPEN', `stats ${when}`)
        }
      }, { open: false })

      storeTest('an addresses() scan that close() cuts rejects with NOT_OPEN, also when the store was opened again', [], async ({ store }) => {
        for (const reopen of [false, true]) {
          // (again after a reopen: a store that is not persistent comes back empty)
          await store.batch(Array.from({ length: 300 }, (_, i) => put(addr(1, i), bytesOf(16, i))))
          const scan = store.addresses()[Symbol.asyncIterator]()
          assert.equal((await scan.next()).done, false)
          await store.close()
          if (reopen) await store.open()
          let seen = 1
          let code: unknown = 'ended'
          try {
            while ((await scan.next()).done !== true) seen++
          } catch (err) {
            code = (err as { code?: unknown }).code
          }
          assert.equal(code, 'NOT_OPEN', `${reopen ? 'close() and open()' : 'close()'} under a scan: it ended with ${String(code)} after ${seen} of 300 addresses`)
          if (!reopen) await store.open()
        }
        await store.batch(Array.from({ length: 300 }, (_, i) => put(addr(1, i), bytesOf(16, i))))
        assert.equal((await collect(store.addresses())).length, 300)
      })

      storeTest('a closed store can be opened again, keeping its data if persistent', [], async ({ store }) => {
        await store.batch([put(addr(2, 3), bytesOf(100, 7))])
        await store.close()
        await store.open()
        const value = await store.get(addr(2, 3))
        if (store.supports.persistent) assertBytes(value, bytesOf(100, 7))
        await store.batch([put(addr(2, 4), bytesOf(10, 8))])
        assertBytes(await store.get(addr(2, 4)), bytesOf(10, 8))
      })

      storeTest('close() lets batches already called finish', [], async ({ store, reopen }) => {
        const writes = Array.from({ length: 20 }, (_, i) => store.batch([put(addr(1, i), bytesOf(512, i))], { sync: i % 5 === 0 }))
        // Observed at once: one that close() fails is reported by the check below, not as an
        // unhandled rejection while close() is awaited.
        for (const write of writes) write.catch(() => {})
        await store.close()
        const results = await Promise.allSettled(writes)
        assert.deepEqual(results.map((r) => r.status), writes.map(() => 'fulfilled'))
        if (!store.supports.persistent) return
        const reopened = await reopen(store)
        for (let i = 0; i < 20; i++) assertBytes(await reopened.get(addr(1, i)), bytesOf(512, i), `block ${i}`)
      })
    })

    describe('reads and writes', () => {
      storeTest('get() of a missing address resolves to undefined', [], async ({ store }) => {
        assert.equal(await store.get(addr(1, 1)), undefined)
        await store.batch([put(addr(1, 1, 5), bytesOf(8, 1))])
        assert.equal(await store.get(addr(1, 1, 4)), undefined, 'another generation')
        assert.equal(await store.get(addr(1, 2, 5)), undefined, 'another index')
        assert.equal(await store.get(addr(2, 1, 5)), undefined, 'another volume')
      })

      storeTest('put/get round-trips values of 1 byte to MAX_BLOCK_VALUE_BYTES', [], async ({ store }) => {
        const sizes = [1, 2, 511, 512, 4096, 65536, 1 << 20, MAX_BLOCK_VALUE_BYTES]
        for (const [i, size] of sizes.entries()) await store.batch([put(addr(3, i), bytesOf(size, i))])
        for (const [i, size] of sizes.entries()) assertBytes(await store.get(addr(3, i)), bytesOf(size, i), `${size} bytes`)
      })

      storeTest('stores exactly the bytes of a view, not its whole buffer, and accepts Buffers', [], async ({ store }) => {
        const backing = bytesOf(4096, 9)
        const view = backing.subarray(1000, 1100)
        await store.batch([put(addr(1, 1), view), put(addr(1, 2), Buffer.from(bytesOf(300, 3)))])
        assertBytes(await store.get(addr(1, 1)), bytesOf(4096, 9).subarray(1000, 1100))
        assertBytes(await store.get(addr(1, 2)), bytesOf(300, 3))
      })

      storeTest('stored values are isolated from the caller\'s and the reader\'s buffers', [], async ({ store }) => {
        // Buffers too: Buffer#slice() returns a view, not a copy.
        for (const [index, kind] of [[1, 'Uint8Array'], [2, 'Buffer']] as const) {
          const data = kind === 'Buffer' ? Buffer.from(bytesOf(4096, index)) : bytesOf(4096, index)
          await store.batch([put(addr(1, index), data)])
          data.fill(0xee)
          const first = await store.get(addr(1, index))
          assertBytes(first, bytesOf(4096, index), `${kind}: after the caller reused its buffer`)
          first?.fill(0xdd)
          assertBytes(await store.get(addr(1, index)), bytesOf(4096, index), `${kind}: after a reader changed its copy`)
        }
      })

      storeTest('a value handed out stays as it was through later reads and writes (until released)', [], async ({ store }) => {
        // Callers keep values (the engine's block cache does): a store that reused the memory of one
        // for a later read or write would change blocks already served.
        await store.batch([put(addr(1, 0), bytesOf(4096, 1)), put(addr(1, 1), bytesOf(4096, 2))])
        const first = await store.get(addr(1, 0))
        const both = store.getMany === undefined ? undefined : await store.getMany([addr(1, 0), addr(1, 1)])
        await store.get(addr(1, 1))
        await store.getMany?.([addr(1, 1), addr(1, 0)])
        await store.batch([put(addr(1, 0), bytesOf(4096, 3)), put(addr(1, 1), bytesOf(4096, 4))])
        await store.get(addr(1, 0))
        await store.getMany?.([addr(1, 1), addr(1, 0)])
        assertBytes(first, bytesOf(4096, 1), 'a value of get()')
        if (both !== undefined) {
          assertBytes(both[0], bytesOf(4096, 1), 'the first value of getMany()')
          assertBytes(both[1], bytesOf(4096, 2), 'the second value of getMany()')
        }
      })

      storeTest('a put replaces the value at its address, whatever the sizes', [], async ({ store }) => {
        await store.batch([put(addr(1, 1), bytesOf(4096, 1))])
        await store.batch([put(addr(1, 1), bytesOf(10, 2))])
        assertBytes(await store.get(addr(1, 1)), bytesOf(10, 2))
        await store.batch([put(addr(1, 1), bytesOf(70000, 3))])
        assertBytes(await store.get(addr(1, 1)), bytesOf(70000, 3))
        await assertStats(store, { blocks: 1, liveBytes: 70000 })
      })

      storeTest('many generations of one block coexist', [], async ({ store }) => {
        for (let gen = 0; gen < 20; gen++) await store.batch([put(addr(5, 42, gen), bytesOf(256 + gen, gen))])
        await store.batch([del(addr(5, 42, 3)), del(addr(5, 42, 17))])
        for (let gen = 0; gen < 20; gen++) {
          const value = await store.get(addr(5, 42, gen))
          if (gen === 3 || gen === 17) assert.equal(value, undefined, `gen ${gen} was deleted`)
          else assertBytes(value, bytesOf(256 + gen, gen), `gen ${gen}`)
        }
        assert.equal((await collect(store.addresses({ volume: 5 }))).length, 18)
      })

      // getMany() is optional in the interface (AbstractBlockStore provides it): a store without it skips these.
      storeTest('getMany() returns what get() returns for each address, in order, isolated copies', ['getMany'], async ({ store, reopen }) => {
        // Adjacent versions written in one batch (a multi-block write), others scattered, some
        // deleted, some never written, one repeated; then again after reopen (read from the medium).
        await store.batch(Array.from({ length: 64 }, (_, i) => put(addr(3, i, 1), bytesOf(4096 + (i % 3), i))))
        await store.batch([put(addr(4, 7, 2), bytesOf(100, 200)), put(addr(3, 100, 1), bytesOf(1, 201))])
        await store.batch([del(addr(3, 10, 1)), del(addr(3, 11, 1))])
        const wanted = [
          ...Array.from({ length: 64 }, (_, i) => addr(3, i, 1)),
          addr(4, 7, 2), addr(3, 5, 1), addr(9, 9, 9), addr(3, 100, 1), addr(3, 63, 1), addr(3, 0, 1)
        ]
        const check = async (s: BlockStore, when: string): Promise<void> => {
          const many = await s.getMany!(wanted)
          assert.equal(many.length, wanted.length, `one result per address ${when}`)
          for (let i = 0; i < wanted.length; i++) assert.deepEqual(many[i], await s.get(wanted[i] as BlockAddress), `address ${i} ${when}`)
          assert.equal(many[10], undefined, `deleted ${when}`)
          assert.equal(many[66], undefined, `never written ${when}`)
          // Every value is the caller's own: changing one changes no other result and no stored value.
          for (const value of many) value?.fill(0xee)
          assertBytes(await s.get(addr(3, 0, 1)), bytesOf(4096, 0), `stored bytes unchanged ${when}`)
          assert.deepEqual(await s.getMany!([]), [], `empty list ${when}`)
        }
        await check(store, 'while open')
        if (store.supports.persistent) await check(await reopen(store), 'after reopen')
      })

      storeTest('getMany() during writes returns whole values', ['getMany'], async ({ store }) => {
        // Each round reads the versions the previous round wrote while the next batch is in flight.
        let previous = store.batch(Array.from({ length: 16 }, (_, i) => put(addr(1, i, 0), bytesOf(4096, 0))))
        for (let round = 1; round <= 20; round++) {
          await previous
          previous = store.batch(Array.from({ length: 16 }, (_, i) => put(addr(1, i, round), bytesOf(4096, round))))
          const many = await store.getMany!(Array.from({ length: 16 }, (_, i) => addr(1, i, round - 1)))
          for (const value of many) assertBytes(value, bytesOf(4096, round - 1), `round ${round}`)
        }
        await previous
      })

      storeTest('the largest address components round-trip through get() and addresses()', [], async ({ store }) => {
        const max = Number.MAX_SAFE_INTEGER
        const addresses = [addr(0, 0, 0), addr(0xffffffff, 0, 0), addr(1, max, 0), addr(1, 0, max), addr(0xffffffff, max, max), addr(2, 2 ** 52, 2 ** 52 - 1)]
        await store.batch(addresses.map((a, i) => put(a, bytesOf(32, i))))
        for (const [i, a] of addresses.entries()) assertBytes(await store.get(a), bytesOf(32, i), show(a))
        assert.deepEqual(sortedKeys(await collect(store.addresses())), sortedKeys(addresses))
      })

      storeTest('addresses differing only at the top of their ranges never collide', [], async ({ store }) => {
        // Pairs that concatenate to the same digits if a fixed-width encoding is too narrow for 53 bits.
        const pairs: Array<[BlockAddress, BlockAddress]> = [
          [addr(1, 2 ** 52 + 1, 5), addr(1, 2 ** 48, 2 ** 52 + 5)],
          [addr(1, 2 ** 53 - 15, 10), addr(1, 2 ** 49 - 1, 2 ** 52 + 10)],
          [addr(1, 2 ** 52, 0), addr(1, 0, 2 ** 52)]
        ]
        for (const [a, b] of pairs) {
          await store.batch([put(a, bytesOf(8, 1)), put(b, bytesOf(8, 2))])
          assertBytes(await store.get(a), bytesOf(8, 1), show(a))
          assertBytes(await store.get(b), bytesOf(8, 2), show(b))
        }
        await assertStats(store, { blocks: pairs.length * 2, liveBytes: pairs.length * 16 })
      })
    })

    describe('argument validation', () => {
      storeTest('rejects malformed addresses with INVALID_ARGUMENT', [], async ({ store }) => {
        for (const [what, address] of BAD_ADDRESSES) {
          await rejectsWith(() => store.get(address as BlockAddress), 'INVALID_ARGUMENT', `get(${what})`)
          if (store.getMany !== undefined) await rejectsWith(() => store.getMany!([addr(1, 1), address as BlockAddress]), 'INVALID_ARGUMENT', `getMany(${what})`)
          await rejectsWith(() => store.batch([{ type: 'put', address: address as BlockAddress, data: bytesOf(4, 1) }]), 'INVALID_ARGUMENT', `put(${what})`)
          await rejectsWith(() => store.batch([{ type: 'del', address: address as BlockAddress }]), 'INVALID_ARGUMENT', `del(${what})`)
        }
        await assertStats(store, { blocks: 0, liveBytes: 0 })
      })

      storeTest('rejects empty, oversize and non-Uint8Array data with INVALID_ARGUMENT', [], async ({ store }) => {
        const bad: Array<[string, unknown]> = [
          ['empty', new Uint8Array(0)], ['MAX_BLOCK_VALUE_BYTES + 1', new Uint8Array(MAX_BLOCK_VALUE_BYTES + 1)],
          ['a string', 'data'], ['an array', [1, 2, 3]], ['an ArrayBuffer', new ArrayBuffer(4)], ['a DataView', new DataView(new ArrayBuffer(4))],
          ['null', null], ['undefined', undefined], ['a number', 7]
        ]
        for (const [what, data] of bad) {
          await rejectsWith(() => store.batch([{ type: 'put', address: addr(1, 1), data: data as Uint8Array }]), 'INVALID_ARGUMENT', `data ${what}`)
        }
        assert.equal(await store.get(addr(1, 1)), undefined)
      })

      storeTest('rejects malformed ops and op lists with INVALID_ARGUMENT', [], async ({ store }) => {
        const badOps: Array<[string, unknown]> = [
          ['null', null], ['a number', 1], ['type "delete"', { type: 'delete', address: addr(1, 1) }],
          ['type "PUT"', { type: 'PUT', address: addr(1, 1), data: bytesOf(4, 1) }], ['no type', { address: addr(1, 1), data: bytesOf(4, 1) }],
          ['no address', { type: 'del' }]
        ]
        for (const [what, op] of badOps) await rejectsWith(() => store.batch([op as BlockOp]), 'INVALID_ARGUMENT', `op ${what}`)
        for (const [what, ops] of [['undefined', undefined], ['null', null], ['an op', put(addr(1, 1), bytesOf(4, 1))], ['a string', 'put']] as const) {
          await rejectsWith(() => store.batch(ops as unknown as BlockOp[]), 'INVALID_ARGUMENT', `ops ${what}`)
        }
        assert.equal(await store.get(addr(1, 1)), undefined)
      })

      storeTest('a batch with one invalid op writes nothing', [], async ({ store }) => {
        await store.batch([put(addr(1, 1), bytesOf(100, 1))])
        const good = [put(addr(1, 2), bytesOf(100, 2)), del(addr(1, 1)), put(addr(1, 1, 1), bytesOf(50, 3))]
        const invalid = { type: 'put', address: addr(1, 3), data: new Uint8Array(0) } as BlockOp
        for (const position of [0, 1, 3]) {
          const ops = [...good]
          ops.splice(position, 0, invalid)
          await rejectsWith(() => store.batch(ops, { sync: position === 1 }), 'INVALID_ARGUMENT', `invalid op at ${position}`)
        }
        assertBytes(await store.get(addr(1, 1)), bytesOf(100, 1))
        assert.equal(await store.get(addr(1, 2)), undefined)
        assert.equal(await store.get(addr(1, 1, 1)), undefined)
        assert.deepEqual(sortedKeys(await collect(store.addresses())), ['1/1/0'])
        await assertStats(store, { blocks: 1, liveBytes: 100 })
      })

      storeTest('deleteVolume() and addresses() reject malformed volumes with INVALID_ARGUMENT', [], async ({ store }) => {
        await store.batch([put(addr(0x10000000, 1), bytesOf(8, 1)), put(addr(0, 1), bytesOf(8, 2))])
        for (const volume of [-1, 1.5, Number.NaN, Infinity, '1', null]) {
          await rejectsWith(() => store.deleteVolume(volume as number), 'INVALID_ARGUMENT', `deleteVolume(${String(volume)})`)
          await rejectsWith(() => collect(store.addresses({ volume: volume as number })), 'INVALID_ARGUMENT', `addresses({ volume: ${String(volume)} })`)
        }
        // A volume id beyond 32 bits must not alias a real volume (whose key may share a prefix with it).
        const outcome = await store.deleteVolume(2 ** 32).then(() => 'resolved', (err: { code?: unknown }) => err.code)
        assertBytes(await store.get(addr(0x10000000, 1)), bytesOf(8, 1), 'volume 0x10000000 after deleteVolume(2 ** 32)')
        assertBytes(await store.get(addr(0, 1)), bytesOf(8, 2), 'volume 0 after deleteVolume(2 ** 32)')
        assert.equal(outcome, 'INVALID_ARGUMENT', 'deleteVolume(2 ** 32)')
        await rejectsWith(() => collect(store.addresses({ volume: 2 ** 32 })), 'INVALID_ARGUMENT', 'addresses({ volume: 2 ** 32 })')
      })
    })

    describe('batches', () => {
      storeTest('ops of one batch apply in order', [], async ({ store }) => {
        await store.batch([put(addr(1, 1), bytesOf(10, 1)), del(addr(1, 1))])
        assert.equal(await store.get(addr(1, 1)), undefined, 'put then del')
        await store.batch([put(addr(1, 2), bytesOf(10, 1))])
        await store.batch([del(addr(1, 2)), put(addr(1, 2), bytesOf(20, 2))])
        assertBytes(await store.get(addr(1, 2)), bytesOf(20, 2), 'del then put')
        await store.batch([put(addr(1, 3), bytesOf(10, 1)), put(addr(1, 3), bytesOf(30, 3))])
        assertBytes(await store.get(addr(1, 3)), bytesOf(30, 3), 'the last put wins')
        await store.batch([put(addr(1, 4), bytesOf(10, 1)), del(addr(1, 4)), put(addr(1, 4), bytesOf(40, 4))])
        assertBytes(await store.get(addr(1, 4)), bytesOf(40, 4), 'put, del, put')
        await assertStats(store, { blocks: 3, liveBytes: 90 })
      })

      storeTest('batch() takes its ops when called: reusing the array or the addresses afterwards changes nothing', [], async ({ store }) => {
        // A caller may clear and refill its op list (or reuse an address object) as soon as batch()
        // returns, before the batch resolves: what was validated and acknowledged is what is stored.
        const address = { volume: 1, index: 1, gen: 0 }
        const ops: BlockOp[] = [put(address, bytesOf(100, 1)), put(addr(1, 2), bytesOf(50, 2))]
        const first = store.batch(ops, { sync: true })
        ops.length = 0
        ops.push({ type: 'put', address: addr(1, 3), data: new Uint8Array(0) }, del(addr(1, 2)))
        address.index = 9
        const second = store.batch([put(addr(1, 4), bytesOf(10, 4))])
        await Promise.all([first, second])
        assertBytes(await store.get(addr(1, 1)), bytesOf(100, 1), 'the first put of the batch as called')
        assertBytes(await store.get(addr(1, 2)), bytesOf(50, 2), 'the second put of the batch as called')
        assert.equal(await store.get(addr(1, 3)), undefined, 'an op pushed after the call (and never validated)')
        assert.equal(await store.get(addr(1, 9)), undefined, 'the address as changed after the call')
        assert.deepEqual(sortedKeys(await collect(store.addresses())), ['1/1/0', '1/2/0', '1/4/0'])
        await assertStats(store, { blocks: 3, liveBytes: 160 })
      })

      storeTest('empty batches resolve and deleting a missing address changes nothing', [], async ({ store }) => {
        await store.batch([])
        await store.batch([], { sync: true })
        await store.batch([del(addr(9, 9)), del(addr(9, 9))])
        await assertStats(store, { blocks: 0, liveBytes: 0 })
        assert.deepEqual(await collect(store.addresses()), [])
      })

      storeTest('batches resolve in call order, empty ones included', [], async ({ store }) => {
        const order: string[] = []
        const calls = [
          store.batch([put(addr(1, 1), bytesOf(4096, 1))]).then(() => order.push('put 1')),
          store.batch([]).then(() => order.push('empty')),
          store.batch([put(addr(1, 2), bytesOf(4096, 2))]).then(() => order.push('put 2')),
          store.batch([], { sync: true }).then(() => order.push('empty sync')),
          store.sync().then(() => order.push('sync'))
        ]
        await Promise.all(calls)
        assert.deepEqual(order, ['put 1', 'empty', 'put 2', 'empty sync', 'sync'])
      })

      storeTest('sync() and batch({ sync: true }) resolve with the data visible', [], async ({ store }) => {
        await store.sync()
        await store.batch([put(addr(1, 1), bytesOf(64, 1))], { sync: true })
        assertBytes(await store.get(addr(1, 1)), bytesOf(64, 1))
        await store.batch([put(addr(1, 2), bytesOf(64, 2))])
        await store.sync()
        assertBytes(await store.get(addr(1, 2)), bytesOf(64, 2))
      })

      storeTest('stats().syncs counts syncs to stable storage, and only stores that can sync have any', [], async ({ store }) => {
        const before = (await store.stats()).syncs
        assert.ok(Number.isSafeInteger(before) && before >= 0, `syncs must be a non-negative integer, got ${before}`)
        await store.batch([put(addr(1, 1), bytesOf(64, 1))], { sync: true })
        const after = (await store.stats()).syncs
        if (store.supports.durableSync) assert.ok(after > before, `a synced batch must sync (syncs ${before} -> ${after})`)
        else assert.equal(after, 0, 'a store without durableSync reports no syncs')
      })
    })

    describe('listing, volumes and stats', () => {
      storeTest('addresses() lists exactly what is stored, in all and per volume', [], async ({ store }) => {
        assert.deepEqual(await collect(store.addresses()), [])
        const stored = [addr(0, 0), addr(0, 1, 3), addr(1, 0), addr(1, 0, 1), addr(16, 5), addr(0xffffffff, 7, 7)]
        await store.batch([...stored.map((a, i) => put(a, bytesOf(16, i))), put(addr(1, 9), bytesOf(4, 1)), del(addr(1, 9))])
        assert.deepEqual(sortedKeys(await collect(store.addresses())), sortedKeys(stored))
        for (const volume of [0, 1, 2, 16, 0xffffffff]) {
          assert.deepEqual(sortedKeys(await collect(store.addresses({ volume }))), sortedKeys(stored.filter((a) => a.volume === volume)), `volume ${volume}`)
        }
      })

      storeTest('deleteVolume() removes exactly one volume\'s blocks', [], async ({ store }) => {
        const volumes = [0, 1, 2, 16, 0x100, 0xffffffff]
        const stored = volumes.flatMap((volume) => [addr(volume, 0), addr(volume, 1), addr(volume, 1, 2), addr(volume, 1000)])
        await store.batch(stored.map((a) => put(a, bytesOf(100, a.volume))))
        await store.deleteVolume(1)
        await store.deleteVolume(1)
        await store.deleteVolume(12345)
        let remaining = stored.filter((a) => a.volume !== 1)
        assert.deepEqual(sortedKeys(await collect(store.addresses())), sortedKeys(remaining))
        assert.deepEqual(await collect(store.addresses({ volume: 1 })), [])
        for (const a of stored) assert.equal((await store.get(a)) === undefined, a.volume === 1, show(a))
        await assertStats(store, { blocks: remaining.length, liveBytes: remaining.length * 100 })
        await store.deleteVolume(0xffffffff)
        remaining = remaining.filter((a) => a.volume !== 0xffffffff)
        assert.deepEqual(sortedKeys(await collect(store.addresses())), sortedKeys(remaining))
        await store.batch([put(addr(1, 0), bytesOf(10, 1))])
        assertBytes(await store.get(addr(1, 0)), bytesOf(10, 1), 'a deleted volume can be written again')
      })

      storeTest('deleteVolume() running with writes to other volumes leaves them intact', [], async ({ store }) => {
        await store.batch(Array.from({ length: 50 }, (_, i) => put(addr(3, i), bytesOf(64, i))))
        await Promise.all([
          store.deleteVolume(3),
          ...Array.from({ length: 20 }, (_, i) => store.batch([put(addr(i % 2 === 0 ? 2 : 4, i), bytesOf(64, i))]))
        ])
        assert.deepEqual(await collect(store.addresses({ volume: 3 })), [])
        assert.equal((await collect(store.addresses())).length, 20)
        await assertStats(store, { blocks: 20, liveBytes: 20 * 64 })
      })

      storeTest('stats() counts live blocks and bytes exactly', [], async ({ store }) => {
        await assertStats(store, { blocks: 0, liveBytes: 0 })
        await store.batch([put(addr(1, 1), bytesOf(4096, 1)), put(addr(1, 2), bytesOf(100, 2)), put(addr(2, 1), bytesOf(1, 3))])
        await assertStats(store, { blocks: 3, liveBytes: 4197 })
        await store.batch([put(addr(1, 1), bytesOf(1000, 4))])
        await assertStats(store, { blocks: 3, liveBytes: 1101 })
        await store.batch([del(addr(1, 2)), del(addr(1, 2)), del(addr(7, 7))])
        await assertStats(store, { blocks: 2, liveBytes: 1001 })
        await store.deleteVolume(2)
        await assertStats(store, { blocks: 1, liveBytes: 1000 })
      })
    })

    describe('concurrency', () => {
      storeTest('200 concurrent batches from many tasks apply in call order', [], async ({ store }) => {
        const model = new BlockStoreModel()
        const random = mulberry32(200)
        const keys = Array.from({ length: 32 }, (_, i) => addr(i % 2, (i >> 1) % 8, i >> 4))
        let sequence = 0
        const pending: Array<Promise<void>> = []
        await Promise.all(Array.from({ length: 10 }, async () => {
          for (let round = 0; round < 20; round++) {
            const ops = randomOps(random, keys, 1 + Math.floor(random() * 5), () => ++sequence)
            model.apply(ops) // in the same tick as batch(), so the model sees the call order
            const written = store.batch(ops, { sync: random() < 0.1 })
            pending.push(written)
            if (random() < 0.3) await written
            else if (random() < 0.5) await nextMacrotask()
          }
        }))
        await Promise.all(pending)
        assert.equal(pending.length, 200)
        await model.check(store, 'after 200 concurrent batches')
      })

      storeTest('concurrent reads during writes see whole values, never going back', [], async ({ store }) => {
        const versions = 40
        const sizeOf = (version: number): number => 16384 + version * 1024
        let writing = true
        const writer = (async () => {
          for (let version = 1; version <= versions; version++) {
            await store.batch([put(addr(1, 1), new Uint8Array(sizeOf(version)).fill(version)), put(addr(1, 2 + (version % 3)), bytesOf(4096, version))])
          }
          writing = false
        })()
        const readers = Array.from({ length: 4 }, async (_, reader) => {
          let last = 0
          let reads = 0
          while (writing || reads === 0) {
            // Yield to the event loop now and then: a store may answer reads of values still being
            // written from memory, in microtasks only, and a loop of those would starve its writer.
            if (reads % 4 === 3) await nextMacrotask()
            const value = await store.get(addr(1, 1))
            reads++
            if (value === undefined) {
              assert.equal(last, 0, `reader ${reader} saw the block vanish after version ${last}`)
              continue
            }
            const version = value[0] as number
            assert.ok(version >= last, `reader ${reader} went back from version ${last} to ${version}`)
            assert.equal(value.byteLength, sizeOf(version), `reader ${reader}: torn size at version ${version}`)
            assert.ok(value.every((byte) => byte === version), `reader ${reader}: torn bytes at version ${version}`)
            last = version
          }
        })
        await Promise.all([writer, ...readers])
        assertBytes(await store.get(addr(1, 1)), new Uint8Array(sizeOf(versions)).fill(versions))
      })
    })

    describe('durability', () => {
      storeTest('everything written survives close() and reopen, deletes included', ['persistent'], async ({ store, reopen }) => {
        const model = new BlockStoreModel()
        const random = mulberry32(7)
        const keys = Array.from({ length: 60 }, (_, i) => addr(i % 3, i, i % 2))
        let sequence = 0
        for (let i = 0; i < 30; i++) {
          const ops = randomOps(random, keys, 1 + Math.floor(random() * 8), () => ++sequence)
          model.apply(ops)
          await store.batch(ops)
        }
        await store.batch([put(addr(9, 0), bytesOf(MAX_BLOCK_VALUE_BYTES, 1)), put(addr(9, 1), bytesOf(4, 2)), del(addr(9, 1))])
        model.apply([put(addr(9, 0), bytesOf(MAX_BLOCK_VALUE_BYTES, 1)), put(addr(9, 1), bytesOf(4, 2)), del(addr(9, 1))])
        await store.deleteVolume(2)
        model.deleteVolume(2)
        const reopened = await reopen(store)
        await model.check(reopened, 'after reopen')
        const again = await reopen(reopened)
        await model.check(again, 'after a second reopen')
      })

      storeTest('concurrent synced batches and sync() calls all resolve and survive reopen', ['persistent', 'durableSync'], async ({ store, reopen }) => {
        const writes: Array<Promise<void>> = []
        for (let i = 0; i < 64; i++) {
          writes.push(store.batch([put(addr(1, i), bytesOf(4096, i))], { sync: i % 2 === 0 }))
          if (i % 8 === 0) writes.push(store.sync())
        }
        await Promise.all(writes)
        await store.sync()
        const reopened = await reopen(store)
        for (let i = 0; i < 64; i++) assertBytes(await reopened.get(addr(1, i)), bytesOf(4096, i), `block ${i}`)
        await assertStats(reopened, { blocks: 64, liveBytes: 64 * 4096 })
      })

      storeTest('reclaims the space of overwritten and deleted blocks', ['reclaimsSpace'], async ({ store, reopen }) => {
        // 64 MiB written over 1 MiB of live data, then all of it deleted: at most a quarter may stay.
        const rounds = 64
        const written = rounds * 16 * 65536
        for (let round = 0; round < rounds; round++) {
          await store.batch(Array.from({ length: 16 }, (_, i) => put(addr(1, i), bytesOf(65536, round * 16 + i))))
        }
        await store.deleteVolume(1)
        // Compaction may run in the background, or only when the store opens.
        const limit = written / 4
        let current = store
        const reclaimed = async (): Promise<boolean> => (await current.stats()).storedBytes <= limit
        let done = await eventually(reclaimed, 5000)
        if (!done && current.supports.persistent) {
          current = await reopen(current)
          done = await eventually(reclaimed, 5000)
        }
        assert.ok(done, `storedBytes ${(await current.stats()).storedBytes} still above ${limit} after writing ${written} bytes and deleting them`)
      })
    })

    describe('workload', () => {
      storeTest('5,000 random ops match a model, before and after reopen', [], async ({ store, reopen }) => {
        const seed = 5000
        const random = mulberry32(seed)
        const model = new BlockStoreModel()
        const keys = [0, 7, 0xffffffff].flatMap((volume) => Array.from({ length: 120 }, (_, i) => addr(volume, i % 40, Math.floor(i / 40))))
        let ops = 0
        let sequence = 0
        let inFlight: Array<Promise<void>> = []
        while (ops < 5000) {
          const roll = random()
          if (roll < 0.005) {
            await Promise.all(inFlight)
            inFlight = []
            const volume = [0, 7, 0xffffffff][Math.floor(random() * 3)] as number
            await store.deleteVolume(volume)
            model.deleteVolume(volume)
            continue
          }
          const batch = randomOps(random, keys, 1 + Math.floor(random() * 16), () => ++sequence)
          ops += batch.length
          model.apply(batch)
          inFlight.push(store.batch(batch, { sync: roll > 0.98 }))
          if (roll > 0.99) inFlight.push(store.sync())
          if (inFlight.length >= 8) {
            await Promise.all(inFlight)
            inFlight = []
          }
        }
        await Promise.all(inFlight)
        await model.check(store, `seed ${seed}`)
        if (!store.supports.persistent) return
        await model.check(await reopen(store), `seed ${seed}, after reopen`)
      })
    })
  })
}

// ---- helpers ---------------------------------------------------------------------------------------

const BAD_ADDRESSES: ReadonlyArray<[string, unknown]> = [
  ['null', null], ['undefined', undefined], ['a number', 5], ['a string', '1/2/3'], ['{}', {}],
  ['no volume', { index: 0, gen: 0 }], ['no index', { volume: 0, gen: 0 }], ['no gen', { volume: 0, index: 0 }],
  ['negative volume', { volume: -1, index: 0, gen: 0 }], ['negative index', { volume: 0, index: -1, gen: 0 }], ['negative gen', { volume: 0, index: 0, gen: -1 }],
  ['fractional volume', { volume: 1.5, index: 0, gen: 0 }], ['fractional index', { volume: 0, index: 0.5, gen: 0 }], ['fractional gen', { volume: 0, index: 0, gen: 2.25 }],
  ['NaN index', { volume: 0, index: Number.NaN, gen: 0 }], ['Infinity gen', { volume: 0, index: 0, gen: Infinity }],
  ['volume 2^32', { volume: 2 ** 32, index: 0, gen: 0 }], ['index 2^53', { volume: 0, index: 2 ** 53, gen: 0 }],
  ['string index', { volume: 0, index: '1', gen: 0 }], ['bigint gen', { volume: 0, index: 0, gen: 1n }]
]

function capabilities (store: BlockStore, narrowed: Partial<BlockStoreSupports> | undefined): Record<Capability, boolean> {
  const result: Record<Capability, boolean> = { ...store.supports, getMany: typeof store.getMany === 'function' }
  for (const capability of CAPABILITIES) if (narrowed?.[capability] === false) result[capability] = false
  return result
}


function show (address: BlockAddress): string {
  return `${address.volume}/${address.index}/${address.gen}`
}

function sortedKeys (addresses: readonly BlockAddress[]): string[] {
  return addresses.map(show).sort()
}



/** Random puts (sizes mostly small, sometimes 64 KiB) and deletes over `keys`. */
function randomOps (random: () => number, keys: readonly BlockAddress[], count: number, nextSeed: () => number): BlockOp[] {
  const ops: BlockOp[] = []
  for (let i = 0; i < count; i++) {
    const address = keys[Math.floor(random() * keys.length)] as BlockAddress
    if (random() < 0.3) {
      ops.push(del(address))
    } else {
      const roll = random()
      const size = roll < 0.02 ? 65536 : roll < 0.5 ? 4096 : 1 + Math.floor(random() * 8192)
      ops.push(put(address, bytesOf(size, nextSeed())))
    }
  }
  return ops
}


async function rejectsWith (call: () => Promise<unknown>, code: GalleonErrorCode, what: string): Promise<void> {
  await assert.rejects(call, (err: unknown) => {
    assert.equal((err as { code?: unknown } | null)?.code, code, `${what}: expected a rejection with code ${code}, got ${String(err)}`)
    return true
  }, `${what}: expected a rejection with code ${code}`)
}


async function assertStats (store: BlockStore, expected: { blocks: number, liveBytes: number }): Promise<void> {
  const stats = await store.stats()
  assert.deepEqual({ blocks: stats.blocks, liveBytes: stats.liveBytes }, expected)
  assert.ok(Number.isSafeInteger(stats.storedBytes) && stats.storedBytes >= 0, `storedBytes must be a non-negative integer, got ${stats.storedBytes}`)
}

/** Polls `condition` until it holds or a deadline passes (no fixed sleeps for synchronisation). */
async function eventually (condition: () => Promise<boolean>, deadlineMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + deadlineMs
  while (true) {
    if (await condition()) return true
    if (Date.now() > deadline) return false
    await sleep(50)
  }
}

/**
 * A reference model of a block store (ops applied in call order, plus every address ever touched): apply the same ops to it and to a store, then `check` that the
 * store returns exactly the model's values, lists exactly its addresses and counts its blocks and bytes.
 */
export class BlockStoreModel {
  readonly values = new Map<string, { address: BlockAddress, data: Uint8Array }>()
  readonly touched = new Map<string, BlockAddress>()

  apply (ops: readonly BlockOp[]): void {
    for (const op of ops) {
      const key = show(op.address)
      this.touched.set(key, op.address)
      if (op.type === 'put') this.values.set(key, { address: op.address, data: op.data })
      else this.values.delete(key)
    }
  }

  deleteVolume (volume: number): void {
    for (const [key, { address }] of this.values) if (address.volume === volume) this.values.delete(key)
  }

  async check (store: BlockStore, what: string): Promise<void> {
    for (const [key, address] of this.touched) {
      const expected = this.values.get(key)
      const actual = await store.get(address)
      if (expected === undefined) assert.equal(actual, undefined, `${what}: ${key} should be absent`)
      else assertBytes(actual, expected.data, `${what}: ${key}`)
    }
    const listed = sortedKeys(await collect(store.addresses()))
    assert.deepEqual(listed, [...this.values.keys()].sort(), `${what}: addresses()`)
    let liveBytes = 0
    for (const { data } of this.values.values()) liveBytes += data.byteLength
    await assertStats(store, { blocks: this.values.size, liveBytes })
  }
}
