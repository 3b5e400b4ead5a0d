// The layout checks of passUtimensMtime (backends/fuse): fuse-native 2.2.6 passes a utimens
// request's atime twice, and the mount takes the real mtime from fuse-native's per-thread request
// record only when that record is the one it knows (Linux, 360 bytes, its operation utimens, its
// atime the one passed) and the two times passed are equal. Anything else must leave fuse-native's
// arguments as they are. Driven here with records built by hand, against the real binding's
// operation number; the mount-level behaviour (touch -d, cp -p) is in test/h79-fuse-times.test.ts.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { dirname } from 'node:path'
import { passUtimensMtime } from '../backends/fuse/index.js'

/** fuse-native's binding (needs libfuse 2: Debian package libfuse2), or why it cannot be loaded. */
function binding (): { op_utimens: number } | string {
  try {
    const require = createRequire(import.meta.url)
    const main = require.resolve('fuse-native')
    return createRequire(main)('node-gyp-build')(dirname(main)) as { op_utimens: number }
  } catch (err) {
    return `fuse-native's binding does not load (libfuse2 missing?): ${(err as Error).message}`
  }
}

const loaded = binding()
const skip = typeof loaded === 'string' ? loaded : process.platform !== 'linux' ? 'the record is only read on Linux' : false

/** Times as fuse-native passes them: low and high 32-bit halves of milliseconds. */
const ATIME = { lo: 0x89abcdef, hi: 0x193 }
const MTIME = { lo: 0x12345678, hi: 0x18f }

interface RecordShape { size?: number, op?: number, atime?: { lo: number, hi: number }, mtime?: { lo: number, hi: number } }

function record (op: number, shape: RecordShape = {}): Uint8Array {
  const bytes = new Uint8Array(shape.size ?? 360)
  const view = new DataView(bytes.buffer)
  const put = (offset: number, value: number): void => { if (offset + 4 <= bytes.byteLength) view.setUint32(offset, value, true) }
  put(8, shape.op ?? op)
  const atime = shape.atime ?? ATIME
  const mtime = shape.mtime ?? MTIME
  put(104, atime.lo); put(108, atime.hi)
  put(112, mtime.lo); put(116, mtime.hi)
  return bytes
}

/** Wraps a recording handler at the utimens slot, calls the wrapper, returns the arguments the handler got. */
function call (op: number, rec: unknown, passed: { atime: { lo: number, hi: number }, mtime: { lo: number, hi: number } } = { atime: ATIME, mtime: ATIME }): unknown[] {
  const seen: unknown[][] = []
  const handlers: unknown[] = []
  handlers[op] = function (_record: unknown, ...args: unknown[]) { seen.push(args) }
  const fuse = { _handlers: handlers }
  passUtimensMtime(fuse)
  ;(handlers[op] as (...args: unknown[]) => unknown)(rec, op, '/data', passed.atime.lo, passed.atime.hi, passed.mtime.lo, passed.mtime.hi)
  assert.equal(seen.length, 1, 'the mount\'s own handler is called once')
  return seen[0] as unknown[]
}

describe('FUSE utimens: the mtime read from fuse-native\'s request record', { skip }, () => {
  const op = (loaded as { op_utimens: number }).op_utimens

  it('the known record with the atime passed twice: the mtime comes from the record', () => {
    assert.deepEqual(call(op, record(op)), [op, '/data', ATIME.lo, ATIME.hi, MTIME.lo, MTIME.hi])
  })

  it('a record of another size (another layout: 32-bit, another fuse-native) is not read', () => {
    for (const size of [352, 359, 361, 368]) {
      assert.deepEqual(call(op, record(op, { size })), [op, '/data', ATIME.lo, ATIME.hi, ATIME.lo, ATIME.hi], `size ${size}`)
    }
  })

  it('a record whose operation is not utimens is not read', () => {
    assert.deepEqual(call(op, record(op, { op: op + 1 })), [op, '/data', ATIME.lo, ATIME.hi, ATIME.lo, ATIME.hi])
  })

  it('a record whose atime is not the one passed is not read (either half)', () => {
    assert.deepEqual(call(op, record(op, { atime: { lo: ATIME.lo + 1, hi: ATIME.hi } })), [op, '/data', ATIME.lo, ATIME.hi, ATIME.lo, ATIME.hi])
    assert.deepEqual(call(op, record(op, { atime: { lo: ATIME.lo, hi: ATIME.hi + 1 } })), [op, '/data', ATIME.lo, ATIME.hi, ATIME.lo, ATIME.hi])
  })

  it('two different times passed (a fuse-native that passes both) are left as passed', () => {
    const passed = { atime: ATIME, mtime: { lo: 7, hi: 0 } }
    assert.deepEqual(call(op, record(op), passed), [op, '/data', ATIME.lo, ATIME.hi, 7, 0])
  })

  it('a record that is not bytes is not read', () => {
    assert.deepEqual(call(op, new ArrayBuffer(360)), [op, '/data', ATIME.lo, ATIME.hi, ATIME.lo, ATIME.hi])
    assert.deepEqual(call(op, undefined), [op, '/data', ATIME.lo, ATIME.hi, ATIME.lo, ATIME.hi])
  })

  it('a record that is a view into a larger buffer is read at its own offset', () => {
    const whole = new Uint8Array(1024)
    whole.set(record(op), 200)
    assert.deepEqual(call(op, whole.subarray(200, 560)), [op, '/data', ATIME.lo, ATIME.hi, MTIME.lo, MTIME.hi])
  })
})
