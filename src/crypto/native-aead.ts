// The optional native AES-256-GCM addon (native/aead): OpenSSL's EVP interface, called once per run
// of blocks instead of once per block. node:crypto spends most of its 5-7 µs per 4 KiB block on
// setting up a cipher object; the addon sets the key up once per call and takes about 1 µs a block,
// with the same bytes out (tests compare all implementations).
//
// It is built at install time (`npm install` runs scripts/build-native.mjs, which needs a C compiler,
// Python and Node's headers, as node-gyp does) and used when present. Without it, or with
// GALLEONFS_NATIVE_AEAD=0, encryption runs on node:crypto (and large requests on worker threads).
// A build that loads but does not produce the reference output of a known seal is not used.

import { createCipheriv } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { PerKey } from './per-key.js'

/** A key set up once in the addon (an opaque handle; freed when garbage-collected). */
export interface NativeKey { readonly __nativeKey: never }

/** The addon's functions (see native/aead/aead.c for the contracts); a key is its bytes or a handle. */
export interface NativeAeadAddon {
  /** The interface version (ADDON_VERSION): a build of another one is not used. */
  version: number
  keyHandle: (key: Uint8Array) => NativeKey
  seal: (key: Uint8Array | NativeKey, nonce: Uint8Array, aad: Uint8Array, plain: Uint8Array, out: Uint8Array) => void
  open: (key: Uint8Array | NativeKey, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array, out: Uint8Array) => boolean
  sealRefs: (key: Uint8Array | NativeKey, nonces: Uint8Array, aads: Uint8Array, aadLength: number, blockLength: number, buffers: Uint8Array[], refs: Float64Array) => void
  openRefs: (key: Uint8Array | NativeKey, nonces: Uint8Array, aads: Uint8Array, aadLength: number, blockLength: number, buffers: Uint8Array[], refs: Float64Array, status: Uint8Array) => number
  /** openRefs on a libuv pool thread; the arrays must stay untouched until `done`. */
  openRefsAsync: (key: Uint8Array, nonces: Uint8Array, aads: Uint8Array, aadLength: number, blockLength: number, buffers: Uint8Array[], refs: Float64Array, status: Uint8Array, done: (err: Error | null, failures?: number) => void) => void
  /** Calls `fn` with every signal blocked in this thread (threads it creates inherit that); see aead.c. */
  callWithSignalsBlocked: <T> (fn: () => T) => T
  /** Sets FD_CLOEXEC on a descriptor; returns whether it was set already (see src/close-on-exec.ts). */
  setCloseOnExec: (fd: number) => boolean
}

/**
 * Whether a run of blocks may be split between the calling thread and a pool thread: more than one
 * core, and GALLEONFS_CIPHER_THREADS not 0 (which keeps all encryption on the calling thread).
 */
export const PARALLEL_OPEN = availableParallelism() > 1 && process.env.GALLEONFS_CIPHER_THREADS !== '0'

// A handle per key array (see PerKey): setting a key up costs about 3 µs, more than sealing a
// 4 KiB block with it. Per addon instance (there is one per process).
const handles = new WeakMap<NativeAeadAddon, PerKey<NativeKey>>()

/** The addon's handle for `key` (32 bytes), made on first use. */
export function keyHandle (addon: NativeAeadAddon, key: Uint8Array): NativeKey {
  let perKey = handles.get(addon)
  if (perKey === undefined) handles.set(addon, perKey = new PerKey((bytes) => addon.keyHandle(bytes)))
  return perKey.get(key)
}

/** Where the build puts the addon, relative to the package root. */
export const NATIVE_AEAD_PATH = join('native', 'aead', 'build', 'Release', 'galleonfs_aead.node')

let state: { addon: NativeAeadAddon | undefined, reason: string } | undefined

/** The package root: the nearest directory above this module that holds native/aead. */
function packageRoot (): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let up = 0; up < 5; up++) {
    if (existsSync(join(dir, 'native', 'aead', 'binding.gyp'))) return dir
    const parent = dirname(dir)
    if (parent === dir) break
    dir = parent
  }
  return undefined
}

function load (): { addon: NativeAeadAddon | undefined, reason: string } {
  const setting = process.env.GALLEONFS_NATIVE_AEAD
  if (setting === '0' || setting === 'false' || setting === 'off') return { addon: undefined, reason: `turned off by GALLEONFS_NATIVE_AEAD=${setting}` }
  const root = packageRoot()
  const file = root === undefined ? undefined : join(root, NATIVE_AEAD_PATH)
  if (file === undefined || !existsSync(file)) {
    return { addon: undefined, reason: 'not built (npm install builds it when a C compiler and Python are available; or run npm run build:native)' }
  }
  let addon: NativeAeadAddon
  try {
    addon = createRequire(import.meta.url)(file) as NativeAeadAddon
  } catch (err) {
    return { addon: undefined, reason: `${file} failed to load (${(err as Error).message}); rebuild it with npm run build:native` }
  }
  if (!selfTest(addon)) return { addon: undefined, reason: `${file} is of another version or does not produce standard AES-256-GCM output; it is not used. Rebuild it with npm run build:native` }
  return { addon, reason: 'loaded' }
}

/** The interface version this code speaks (ADDON_VERSION in native/aead/aead.c). */
export const ADDON_VERSION = 4

/**
 * Checks the interface version and the functions, then seals and opens a fixed block with the
 * addon (by key and by handle, alone and in a batch) and with node:crypto: the bytes must agree.
 */
function selfTest (addon: NativeAeadAddon): boolean {
  try {
    if (addon.version !== ADDON_VERSION) return false
    for (const name of ['keyHandle', 'seal', 'open', 'sealRefs', 'openRefs', 'openRefsAsync', 'callWithSignalsBlocked', 'setCloseOnExec'] as const) if (typeof addon[name] !== 'function') return false
    const key = Uint8Array.from({ length: 32 }, (_, i) => i * 7 + 1)
    const nonce = Uint8Array.from({ length: 12 }, (_, i) => 255 - i)
    const aad = Uint8Array.from({ length: 28 }, (_, i) => i)
    const plain = Uint8Array.from({ length: 4096 }, (_, i) => (i * 31) & 0xff)
    const reference = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 })
    reference.setAAD(aad)
    const expected = Buffer.concat([reference.update(plain), reference.final(), reference.getAuthTag()])
    const sealed = new Uint8Array(plain.byteLength + 16)
    addon.seal(key, nonce, aad, plain, sealed)
    if (!expected.equals(sealed)) return false
    const opened = new Uint8Array(plain.byteLength)
    if (!addon.open(key, nonce, aad, sealed, opened) || !Buffer.from(opened).equals(plain)) return false
    const batch = new Uint8Array(plain.byteLength + 16)
    addon.sealRefs(addon.keyHandle(key), nonce, aad, aad.byteLength, plain.byteLength, [plain, batch], Float64Array.of(0, 0, 1, 0))
    if (!expected.equals(batch)) return false
    sealed[100] = (sealed[100] as number) ^ 1
    return !addon.open(key, nonce, aad, sealed, opened) && opened.every((byte) => byte === 0)
  } catch {
    return false
  }
}

/** The addon, or undefined when it is not available (see nativeAeadStatus for why). */
export function nativeAead (): NativeAeadAddon | undefined {
  state ??= load()
  return state.addon
}

/** Whether the native addon is in use, and if not, why. */
export function nativeAeadStatus (): { available: boolean, reason: string } {
  state ??= load()
  return { available: state.addon !== undefined, reason: state.reason }
}

/** Collects the buffers and references of one addon batch call (at most 64 distinct buffers). */
export class RefBatch {
  readonly buffers: Uint8Array[] = []
  readonly #index = new Map<ArrayBufferLike, number>()
  // The last two buffers looked up (inputs and outputs tend to come from one buffer each).
  #lastA: ArrayBufferLike | undefined
  #lastB: ArrayBufferLike | undefined
  #lastAIndex = 0
  #lastBIndex = 0

  /** Room for a block whose input and output are `a` and `b`. */
  fits (a: Uint8Array, b: Uint8Array): boolean {
    if (this.buffers.length <= 62) return true
    const missing = (this.#index.has(a.buffer) ? 0 : 1) + (this.#index.has(b.buffer) || a.buffer === b.buffer ? 0 : 1)
    return this.buffers.length + missing <= 64
  }

  /** Writes the reference (buffer index, byte offset) of `view` at refs[at], refs[at + 1]. */
  ref (view: Uint8Array, refs: Float64Array, at: number): void {
    this.refAt(view, 0, refs, at)
  }

  /** Writes the reference of view[offset..] at refs[at], refs[at + 1] (no view made for it). */
  refAt (view: Uint8Array, offset: number, refs: Float64Array, at: number): void {
    const buffer = view.buffer
    let index: number | undefined
    if (buffer === this.#lastA) index = this.#lastAIndex
    else if (buffer === this.#lastB) index = this.#lastBIndex
    else {
      index = this.#index.get(buffer)
      this.#lastB = this.#lastA
      this.#lastBIndex = this.#lastAIndex
      this.#lastA = buffer
    }
    if (index === undefined) {
      index = this.buffers.length
      this.buffers.push(new Uint8Array(buffer))
      this.#index.set(buffer, index)
    }
    if (buffer === this.#lastA) this.#lastAIndex = index
    refs[at] = index
    refs[at + 1] = view.byteOffset + offset
  }
}

/** One block to seal: ciphertext || tag goes to `out` (plaintext length + 16 bytes). */
interface SealRef { readonly nonce: Uint8Array, readonly aad: Uint8Array, readonly plain: Uint8Array, readonly out: Uint8Array }

/**
 * Runs `call` over jobs[from, to) in as few addon calls as the 64-buffer limit allows, with the
 * packed nonces and aads and the references of each run.
 */
function inRuns<T extends { nonce: Uint8Array, aad: Uint8Array }> (jobs: readonly T[], aadLength: number, input: (job: T, i: number) => Uint8Array, output: (job: T, i: number) => Uint8Array,
  call: (nonces: Uint8Array, aads: Uint8Array, batch: RefBatch, refs: Float64Array, first: number, count: number) => void): void {
  let first = 0
  while (first < jobs.length) {
    const batch = new RefBatch()
    const refs = new Float64Array((jobs.length - first) * 4)
    let count = 0
    for (let i = first; i < jobs.length; i++) {
      const job = jobs[i] as T
      const a = input(job, i)
      const b = output(job, i)
      if (!batch.fits(a, b)) break
      batch.ref(a, refs, count * 4)
      batch.ref(b, refs, count * 4 + 2)
      count++
    }
    const nonces = new Uint8Array(count * 12)
    const aads = new Uint8Array(count * aadLength)
    for (let i = 0; i < count; i++) {
      const job = jobs[first + i] as T
      nonces.set(job.nonce, i * 12)
      aads.set(job.aad, i * aadLength)
    }
    call(nonces, aads, batch, count * 4 === refs.length ? refs : refs.subarray(0, count * 4), first, count)
    first += count
  }
}

/** Whether the jobs have one plaintext length, 12-byte nonces and one aad length (what a batch call takes). */
function uniform (jobs: ReadonlyArray<{ nonce: Uint8Array, aad: Uint8Array }>, length: (i: number) => number): boolean {
  const first = jobs[0]
  if (first === undefined) return false
  const size = length(0)
  for (let i = 0; i < jobs.length; i++) {
    const job = jobs[i] as { nonce: Uint8Array, aad: Uint8Array }
    if (job.nonce.byteLength !== 12 || job.aad.byteLength !== first.aad.byteLength || length(i) !== size) return false
  }
  return size > 0
}

/**
 * Seals every job under `key` with the addon, in batch calls. Returns false (nothing sealed) when
 * the jobs do not have the uniform shape a batch takes; the caller then seals them one by one.
 */
export function sealBatch (addon: NativeAeadAddon, key: Uint8Array, jobs: readonly SealRef[]): boolean {
  if (!uniform(jobs, (i) => (jobs[i] as SealRef).plain.byteLength) || jobs.some((job) => job.out.byteLength !== job.plain.byteLength + 16)) return false
  const size = (jobs[0] as SealRef).plain.byteLength
  const aadLength = (jobs[0] as SealRef).aad.byteLength
  const handle = keyHandle(addon, key)
  inRuns(jobs, aadLength, (job) => job.plain, (job) => job.out, (nonces, aads, batch, refs) => {
    addon.sealRefs(handle, nonces, aads, aadLength, size, batch.buffers, refs)
  })
  return true
}
