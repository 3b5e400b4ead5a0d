// Parallel AES-256-GCM for large I/O: a multi-block write or read seals or opens its blocks partly
// on the calling thread and partly on worker threads (node:crypto in each), so a 1 MiB request is
// not limited to one core's AES speed. Nonces, keys and authenticated data are chosen on the calling
// thread (see volume-cipher.ts); workers only run the cipher. Small requests never come here: a
// round trip to a worker costs more than sealing a few blocks.
//
// The pool is shared by every instance in the process, started on first use, and its workers do not
// keep the process alive while idle. If a worker fails, the pool stops being used and everything is
// done on the calling thread.

import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import { GalleonError } from '../errors.js'
import { TAG_BYTES, type AeadCipher } from './cipher.js'
import { nativeAead, sealBatch } from './native-aead.js'

/** Blocks below which a batch is done on the calling thread alone. */
export const PARALLEL_MIN_BLOCKS = 32
/** Blocks from which the native addon seals or opens them in one call rather than one call each. */
export const NATIVE_BATCH_MIN_BLOCKS = 2

/** One block to seal: ciphertext || tag goes to `out` (plaintext length + 16 bytes). */
export interface SealJob {
  readonly nonce: Uint8Array
  readonly aad: Uint8Array
  readonly plain: Uint8Array
  readonly out: Uint8Array
}

/** One block to open: `sealed` is ciphertext || tag. */
export interface OpenJob {
  readonly nonce: Uint8Array
  readonly aad: Uint8Array
  readonly sealed: Uint8Array
}

// The worker's program (CommonJS, evaluated): seal or open a run of same-sized blocks under one key.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { createCipheriv, createDecipheriv, createSecretKey } = require('node:crypto')
parentPort.on('message', (task) => {
  const { id, op, nonces, aads, data, count, size } = task
  try {
    const key = createSecretKey(task.key)
    if (op === 'seal') {
      const out = new Uint8Array(count * (size + 16))
      for (let i = 0; i < count; i++) {
        const cipher = createCipheriv('aes-256-gcm', key, nonces.subarray(i * 12, i * 12 + 12), { authTagLength: 16 })
        cipher.setAAD(aads.subarray(i * 28, i * 28 + 28))
        out.set(cipher.update(data.subarray(i * size, (i + 1) * size)), i * (size + 16))
        cipher.final()
        out.set(cipher.getAuthTag(), i * (size + 16) + size)
      }
      parentPort.postMessage({ id, out }, [out.buffer])
    } else {
      const out = new Uint8Array(count * size)
      const failed = []
      for (let i = 0; i < count; i++) {
        const at = i * (size + 16)
        try {
          const decipher = createDecipheriv('aes-256-gcm', key, nonces.subarray(i * 12, i * 12 + 12), { authTagLength: 16 })
          decipher.setAAD(aads.subarray(i * 28, i * 28 + 28))
          decipher.setAuthTag(data.subarray(at + size, at + size + 16))
          out.set(decipher.update(data.subarray(at, at + size)), i * size)
          decipher.final()
        } catch {
          failed.push(i)
        }
      }
      parentPort.postMessage({ id, out, failed }, [out.buffer])
    }
  } catch (err) {
    parentPort.postMessage({ id, error: String(err && err.message || err) })
  }
})
`

interface Pending {
  resolve: (message: { out: Uint8Array, failed?: number[] }) => void
  reject: (err: Error) => void
}

class PoolWorker {
  readonly worker: Worker
  readonly pending = new Map<number, Pending>()

  constructor (onFailure: (err: Error) => void) {
    this.worker = new Worker(WORKER_SOURCE, { eval: true })
    this.worker.unref()
    this.worker.on('message', (message: { id: number, out?: Uint8Array, failed?: number[], error?: string }) => {
      const waiting = this.pending.get(message.id)
      if (waiting === undefined) return
      this.pending.delete(message.id)
      if (this.pending.size === 0) this.worker.unref()
      if (message.error !== undefined || message.out === undefined) waiting.reject(new Error(message.error ?? 'no result'))
      else waiting.resolve({ out: message.out, failed: message.failed })
    })
    const fail = (err: Error): void => {
      for (const waiting of this.pending.values()) waiting.reject(err)
      this.pending.clear()
      onFailure(err)
    }
    this.worker.on('error', fail)
    this.worker.on('exit', (code) => { if (this.pending.size > 0) fail(new Error(`cipher worker exited with code ${code}`)) })
  }

  run (task: Record<string, unknown>, id: number, transfer: ArrayBuffer[]): Promise<{ out: Uint8Array, failed?: number[] }> {
    return new Promise((resolve, reject) => {
      if (this.pending.size === 0) this.worker.ref()
      this.pending.set(id, { resolve, reject })
      this.worker.postMessage({ ...task, id }, transfer)
    })
  }
}

/** Splits runs of blocks between the calling thread and the workers. */
class CipherPool {
  #workers: PoolWorker[] | undefined
  #broken = false
  #nextId = 1
  #nextWorker = 0

  /** Whether batches may go to workers (false after a worker failed, or with GALLEONFS_CIPHER_THREADS=0). */
  get usable (): boolean { return !this.#broken && workerCount() > 0 }

  #pool (): PoolWorker[] {
    if (this.#workers === undefined) {
      const count = workerCount()
      this.#workers = Array.from({ length: count }, () => new PoolWorker(() => { this.#broken = true }))
    }
    return this.#workers
  }

  /**
   * Seals `jobs` under `key`: a share on the calling thread with `sealHere`, the rest on workers.
   * All plaintexts are copied before this returns its promise (the caller may reuse them).
   */
  seal (key: Uint8Array, jobs: readonly SealJob[], sealHere: (job: SealJob) => void): Promise<void> {
    const { local, remote } = this.#split(jobs)
    const waits = remote.map((part) => {
      const size = (part[0] as SealJob).plain.byteLength
      const { nonces, aads } = packHeaders(part)
      const data = new Uint8Array(part.length * size)
      part.forEach((job, i) => data.set(job.plain, i * size))
      // `data` is handed over (transferred, not copied again): if the worker fails, the batch fails
      // (nothing was stored; the caller's write is refused) and the pool is not used again.
      return this.#send({ op: 'seal', key, nonces, aads, data, count: part.length, size }, [nonces.buffer, aads.buffer, data.buffer]).then(({ out }) => {
        part.forEach((job, i) => job.out.set(out.subarray(i * (size + TAG_BYTES), (i + 1) * (size + TAG_BYTES))))
      }, (err: Error) => {
        throw new GalleonError('IO_ERROR', `an encryption worker thread failed (${err.message}); nothing was written, retry the write (it is now encrypted on the calling thread)`, { cause: err })
      })
    })
    for (const job of local) sealHere(job)
    return Promise.all(waits).then(() => {})
  }

  /**
   * Opens `jobs` under `key`; a share on the calling thread with `openHere` (which returns undefined
   * for a block that fails authentication), the rest on workers. Results in job order.
   */
  async open (key: Uint8Array, jobs: readonly OpenJob[], openHere: (job: OpenJob) => Uint8Array | undefined): Promise<Array<Uint8Array | undefined>> {
    const { local, remote } = this.#split(jobs)
    const results: Array<Uint8Array | undefined> = new Array(jobs.length)
    let offset = local.length
    const waits = remote.map((part) => {
      const first = offset
      offset += part.length
      const size = (part[0] as OpenJob).sealed.byteLength - TAG_BYTES
      const { nonces, aads } = packHeaders(part)
      const data = new Uint8Array(part.length * (size + TAG_BYTES))
      part.forEach((job, i) => data.set(job.sealed, i * (size + TAG_BYTES)))
      return this.#send({ op: 'open', key, nonces, aads, data, count: part.length, size }, [nonces.buffer, aads.buffer, data.buffer]).then(({ out, failed }) => {
        const bad = new Set(failed ?? [])
        for (let i = 0; i < part.length; i++) results[first + i] = bad.has(i) ? undefined : out.subarray(i * size, (i + 1) * size)
      }, () => {
        // A worker failed: open here (the pool is not used again).
        part.forEach((job, i) => { results[first + i] = openHere(job) })
      })
    })
    local.forEach((job, i) => { results[i] = openHere(job) })
    await Promise.all(waits)
    return results
  }

  /** The first share stays here; the rest is cut into one run per worker. */
  #split<T> (jobs: readonly T[]): { local: readonly T[], remote: T[][] } {
    const workers = this.#pool()
    const shares = workers.length + 1
    const per = Math.ceil(jobs.length / shares)
    const remote: T[][] = []
    for (let at = per; at < jobs.length; at += per) remote.push(jobs.slice(at, at + per))
    return { local: jobs.slice(0, per), remote }
  }

  #send (task: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<{ out: Uint8Array, failed?: number[] }> {
    const workers = this.#pool()
    const worker = workers[this.#nextWorker++ % workers.length] as PoolWorker
    return worker.run(task, this.#nextId++, transfer)
  }
}

/** Workers to start: GALLEONFS_CIPHER_THREADS when set (0 turns the pool off), else one per spare core, at most 4. */
function workerCount (): number {
  const configured = process.env.GALLEONFS_CIPHER_THREADS
  if (configured !== undefined && configured !== '' && /^\d+$/.test(configured)) return Math.min(Number(configured), 16)
  return Math.max(1, Math.min(4, availableParallelism() - 1))
}

function packHeaders (jobs: ReadonlyArray<{ nonce: Uint8Array, aad: Uint8Array }>): { nonces: Uint8Array<ArrayBuffer>, aads: Uint8Array<ArrayBuffer> } {
  const nonces = new Uint8Array(jobs.length * 12)
  const aads = new Uint8Array(jobs.length * 28)
  jobs.forEach((job, i) => {
    nonces.set(job.nonce, i * 12)
    aads.set(job.aad, i * 28)
  })
  return { nonces, aads }
}

/** The process-wide pool. */
export const cipherPool = new CipherPool()

/**
 * Fewest blocks for which batching is worth it with `aead`: native batch calls from two blocks
 * (sealJobs; opens go through NativeOpenRun), node:crypto on worker threads from
 * PARALLEL_MIN_BLOCKS (sealJobs, cipherPool.open); undefined when neither applies (@noble/ciphers,
 * or node:crypto with the pool off).
 */
export function batchMinBlocks (aead: AeadCipher): number | undefined {
  if (aead.name === 'native' && nativeAead() !== undefined) return NATIVE_BATCH_MIN_BLOCKS
  if (aead.name === 'node' && cipherPool.usable) return PARALLEL_MIN_BLOCKS
  return undefined
}

/**
 * Seals `jobs` under `key` with `aead`: in native batch calls on this thread, or partly on worker
 * threads (node:crypto); `sealHere` seals one job on this thread. All plaintexts are consumed
 * before the promise is returned.
 */
export function sealJobs (aead: AeadCipher, key: Uint8Array, jobs: readonly SealJob[], sealHere: (job: SealJob) => void): Promise<void> {
  const addon = aead.name === 'native' ? nativeAead() : undefined
  if (addon !== undefined) {
    try {
      if (!sealBatch(addon, key, jobs)) for (const job of jobs) sealHere(job)
    } catch (err) {
      return Promise.reject(err)
    }
    return Promise.resolve()
  }
  return cipherPool.seal(key, jobs, sealHere)
}
