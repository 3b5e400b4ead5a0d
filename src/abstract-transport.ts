// Base class for Transport backends: validates arguments, owns the lifecycle, request timeouts,
// aborts and per-peer backpressure, and runs the handler, so a backend only moves bytes.

import type { Transport, TransportHandler, TransportMessage, TransportRequestOptions } from './drivers.js'
import { GalleonError, describe, type GalleonErrorCode } from './errors.js'

/** How long `request` waits for a reply unless told otherwise. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000
/** Largest message (JSON header plus payload) a transport sends or accepts by default. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
/** Bytes of requests that may be in flight to one peer before `request` waits, by default. */
export const DEFAULT_MAX_IN_FLIGHT_BYTES = 16 * 1024 * 1024

const EMPTY = new Uint8Array(0)

/** A validated message with its header already serialized (what backends carry). */
export interface EncodedMessage {
  readonly kind: string
  /** `JSON.stringify(header)`. */
  readonly headerJson: string
  /** Never undefined: an absent payload is an empty array. */
  readonly payload: Uint8Array
  /** Size of the message for limits and backpressure: UTF-8 bytes of kind and header plus payload bytes. */
  readonly bytes: number
}

/** What serving one request produced: a reply or an error to carry back by code and message. */
export type HandlerOutcome =
  | { readonly ok: true, readonly reply: EncodedMessage }
  | { readonly ok: false, readonly code: string, readonly message: string }

/** Options every transport accepts. */
export interface AbstractTransportOptions {
  /** This node's id (non-empty, at most 256 characters). */
  readonly nodeId: string
  /** Largest message sent or accepted, header plus payload (default 64 MiB). */
  readonly maxMessageBytes?: number
  /** Request bytes in flight to one peer before `request` waits (default 16 MiB). */
  readonly maxInFlightBytes?: number
  /** Default of `TransportRequestOptions.timeoutMs` (default 10 s). */
  readonly requestTimeoutMs?: number
}

/** Counters of a transport, for backpressure checks and metrics. */
export interface TransportStats {
  /** Requests sent and not yet settled, including those waiting for in-flight budget. */
  readonly inFlightRequests: number
  /** Bytes of requests admitted to the wire and not yet answered, over all peers. */
  readonly inFlightBytes: number
  /** Requests answered successfully / failed (any reason) since creation. */
  readonly completed: number
  readonly failed: number
}

/**
 * Base class of `Transport` implementations. Public methods check arguments and state, make
 * `close()` idempotent, bound every request by a timeout and its AbortSignal, and hold requests
 * back while a peer has `maxInFlightBytes` outstanding. Subclasses implement `_listen`, `_request`
 * and `_close`, and hand incoming requests to `serve()`.
 */
export abstract class AbstractTransport implements Transport {
  abstract readonly name: string
  readonly nodeId: string
  readonly maxMessageBytes: number
  readonly maxInFlightBytes: number
  readonly requestTimeoutMs: number
  #state: 'idle' | 'listening' | 'closed' = 'idle'
  #listening: Promise<string> | undefined
  #closing: Promise<void> | undefined
  #handler: TransportHandler | undefined
  #pending = new Set<(err: GalleonError) => void>()
  #budgets = new Map<string, ByteBudget>()
  #completed = 0
  #failed = 0

  constructor (options: AbstractTransportOptions) {
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `transport options must be an object, got ${describe(options)}`)
    assertNodeId(options.nodeId)
    this.nodeId = options.nodeId
    this.maxMessageBytes = positiveInt(options.maxMessageBytes, DEFAULT_MAX_MESSAGE_BYTES, 'maxMessageBytes')
    this.maxInFlightBytes = positiveInt(options.maxInFlightBytes, DEFAULT_MAX_IN_FLIGHT_BYTES, 'maxInFlightBytes')
    this.requestTimeoutMs = positiveInt(options.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS, 'requestTimeoutMs')
  }

  /** True once close() was called. */
  get closed (): boolean { return this.#state === 'closed' }

  /** Bytes of requests in flight over all peers (see `maxInFlightBytes`). */
  get inFlightBytes (): number {
    let bytes = 0
    for (const budget of this.#budgets.values()) bytes += budget.used
    return bytes
  }

  stats (): TransportStats {
    return { inFlightRequests: this.#pending.size, inFlightBytes: this.inFlightBytes, completed: this.#completed, failed: this.#failed }
  }

  async listen (handler: TransportHandler): Promise<string> {
    if (typeof handler !== 'function') throw new GalleonError('INVALID_ARGUMENT', `listen needs a handler function, got ${describe(handler)}`)
    this.#assertOpen()
    if (this.#listening !== undefined) throw new GalleonError('BUSY', `the ${this.name} transport of node ${this.nodeId} is already listening; create another transport to listen twice`)
    this.#handler = handler
    this.#listening = this._listen()
    try {
      const address = await this.#listening
      if (this.#state === 'idle') this.#state = 'listening'
      return address
    } catch (err) {
      this.#listening = undefined
      this.#handler = undefined
      throw err instanceof GalleonError ? err : new GalleonError('BACKEND_UNAVAILABLE', `the ${this.name} transport of node ${this.nodeId} could not listen: ${errorText(err)}`, { cause: err })
    }
  }

  async request (address: string, message: TransportMessage, options: TransportRequestOptions = {}): Promise<TransportMessage> {
    if (typeof address !== 'string' || address.length === 0) throw new GalleonError('INVALID_ARGUMENT', `request needs a peer address (non-empty string), got ${describe(address)}`)
    const encoded = encodeMessage(message, 'request', this.maxMessageBytes)
    if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `request options must be an object, got ${describe(options)}`)
    const timeoutMs = positiveInt(options.timeoutMs, this.requestTimeoutMs, 'timeoutMs')
    const signal = options.signal
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new GalleonError('INVALID_ARGUMENT', `signal must be an AbortSignal, got ${describe(signal)}`)
    this.#assertOpen()
    if (signal?.aborted === true) throw cancelled(address, signal)

    const controller = new AbortController()
    let budget = this.#budgets.get(address)
    if (budget === undefined) {
      budget = new ByteBudget(this.maxInFlightBytes)
      this.#budgets.set(address, budget)
    }
    const peerBudget = budget
    let admitted = false
    return await new Promise<TransportMessage>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      const onAbort = (): void => { settle(cancelled(address, signal as AbortSignal)) }
      const settle = (err: GalleonError | undefined, reply?: TransportMessage): void => {
        if (!this.#pending.delete(settle)) return
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (admitted) peerBudget.release(encoded.bytes)
        if (peerBudget.idle) this.#budgets.delete(address)
        if (err === undefined) {
          this.#completed++
          resolve(reply as TransportMessage)
        } else {
          this.#failed++
          controller.abort(err) // lets the backend forget the request
          reject(err)
        }
      }
      this.#pending.add(settle)
      timer = setTimeout(() => {
        settle(new GalleonError('BACKEND_UNAVAILABLE', `no reply from ${address} within ${timeoutMs} ms (the peer is down, overloaded or cut off); the request may or may not have been applied`))
      }, timeoutMs)
      signal?.addEventListener('abort', onAbort, { once: true })
      void (async () => {
        await peerBudget.acquire(encoded.bytes, controller.signal)
        admitted = true
        return await this._request(address, encoded, controller.signal)
      })().then((reply) => { settle(undefined, reply) }, (err: unknown) => {
        settle(err instanceof GalleonError ? err : new GalleonError('BACKEND_UNAVAILABLE', `request to ${address} failed: ${errorText(err)}`, { cause: err }))
      })
    })
  }

  async close (): Promise<void> {
    if (this.#closing !== undefined) return await this.#closing
    this.#state = 'closed'
    const closing = new GalleonError('BACKEND_UNAVAILABLE', `the ${this.name} transport of node ${this.nodeId} was closed while the request was in flight`)
    for (const settle of [...this.#pending]) settle(closing)
    this.#closing = (async () => {
      await this.#listening?.catch(() => {})
      await this._close()
    })()
    return await this.#closing
  }

  /**
   * Runs the handler for a request from the authenticated peer `from` and captures the outcome:
   * a GalleonError keeps its code and message, any other exception becomes IO_ERROR, and an
   * invalid or oversized reply becomes IO_ERROR naming the problem. Never rejects.
   */
  protected async serve (from: string, request: TransportMessage): Promise<HandlerOutcome> {
    const handler = this.#handler
    if (handler === undefined || this.#state === 'closed') return { ok: false, code: 'BACKEND_UNAVAILABLE', message: `node ${this.nodeId} is not serving requests` }
    let reply: TransportMessage
    try {
      reply = await handler(from, request)
    } catch (err) {
      if (err instanceof GalleonError) return { ok: false, code: err.code, message: err.message }
      return { ok: false, code: 'IO_ERROR', message: `node ${this.nodeId} failed to handle ${JSON.stringify(request.kind)}: ${errorText(err)}` }
    }
    try {
      return { ok: true, reply: encodeMessage(reply, 'reply', this.maxMessageBytes) }
    } catch (err) {
      return { ok: false, code: 'IO_ERROR', message: `node ${this.nodeId} answered ${JSON.stringify(request.kind)} with an invalid reply: ${errorText(err)}` }
    }
  }

  /** Starts accepting requests (handing them to `serve`); resolves to the address peers use. */
  protected abstract _listen (): Promise<string>
  /**
   * Delivers one request and resolves to its reply. `signal` aborts when the request is settled
   * otherwise (timeout, caller's abort, close): forget it then. Reject with BACKEND_UNAVAILABLE
   * when the peer cannot be reached, or with the error the peer's handler reported.
   */
  protected abstract _request (address: string, message: EncodedMessage, signal: AbortSignal): Promise<TransportMessage>
  /** Stops listening and closes every connection; called once. */
  protected abstract _close (): Promise<void>

  #assertOpen (): void {
    if (this.#state === 'closed') throw new GalleonError('NOT_OPEN', `the ${this.name} transport of node ${this.nodeId} is closed; create a new one`)
  }
}

/** Checks a message and serializes its header; throws INVALID_ARGUMENT naming what is wrong. */
export function encodeMessage (message: TransportMessage, what: 'request' | 'reply', maxMessageBytes: number): EncodedMessage {
  const fail = (text: string): never => {
    throw new GalleonError('INVALID_ARGUMENT', `${what} ${text}`)
  }
  if (message === null || typeof message !== 'object') return fail(`must be an object { kind, header, payload? }, got ${describe(message)}`)
  const { kind, header, payload } = message
  if (typeof kind !== 'string' || kind.length === 0) return fail(`kind must be a non-empty string, got ${describe(kind)}`)
  if (header === null || typeof header !== 'object' || Array.isArray(header) || header instanceof Uint8Array) return fail(`header must be a plain object, got ${describe(header)}`)
  if (payload !== undefined && !(payload instanceof Uint8Array)) return fail(`payload must be a Uint8Array or Buffer, got ${describe(payload)}`)
  let headerJson: string
  try {
    headerJson = JSON.stringify(header)
  } catch (err) {
    return fail(`header must be JSON-serializable: ${errorText(err)}`)
  }
  const bytes = Buffer.byteLength(kind) + Buffer.byteLength(headerJson) + (payload?.byteLength ?? 0)
  if (bytes > maxMessageBytes) return fail(`of ${bytes} bytes (header and payload) exceeds the transport's maximum of ${maxMessageBytes} bytes; split it`)
  return { kind, headerJson, payload: payload ?? EMPTY, bytes }
}

/** The error a peer reported by code and message, rebuilt as a GalleonError. */
export function errorFromWire (code: unknown, message: unknown): GalleonError {
  const text = typeof message === 'string' ? message : 'the peer reported an error without a message'
  if (typeof code === 'string' && /^[A-Z][A-Z_]{0,63}$/.test(code)) return new GalleonError(code as GalleonErrorCode, text)
  return new GalleonError('IO_ERROR', text)
}

/** Throws INVALID_ARGUMENT unless `nodeId` is a usable node id. */
export function assertNodeId (nodeId: unknown): asserts nodeId is string {
  if (typeof nodeId !== 'string' || nodeId.length === 0 || nodeId.length > 256) {
    throw new GalleonError('INVALID_ARGUMENT', `nodeId must be a non-empty string of at most 256 characters, got ${describe(nodeId)}`)
  }
}

/** The message of any thrown value. */
export function errorText (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function cancelled (address: string, signal: AbortSignal): GalleonError {
  return new GalleonError('CANCELLED', `the request to ${address} was aborted by its signal; it may or may not have been applied`, { cause: signal.reason })
}

function positiveInt (value: unknown, fallback: number, what: string): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be a positive integer, got ${describe(value)}`)
  }
  return value
}

/**
 * A FIFO byte semaphore: `acquire` waits while admitting the bytes would exceed the limit. A message
 * larger than the whole limit is admitted alone, so it cannot wait forever.
 */
class ByteBudget {
  used = 0
  readonly #limit: number
  #waiters: Array<{ bytes: number, wake: () => void }> = []

  constructor (limit: number) {
    this.#limit = limit
  }

  get idle (): boolean { return this.used === 0 && this.#waiters.length === 0 }

  async acquire (bytes: number, signal: AbortSignal): Promise<void> {
    if (this.#waiters.length === 0 && this.#fits(bytes)) {
      this.used += bytes
      return
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        bytes,
        wake: () => {
          signal.removeEventListener('abort', onAbort)
          this.used += bytes
          resolve()
        }
      }
      const onAbort = (): void => {
        const at = this.#waiters.indexOf(waiter)
        if (at >= 0) this.#waiters.splice(at, 1)
        this.#wakeWaiters() // the next one may fit now
        reject(signal.reason)
      }
      this.#waiters.push(waiter)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  release (bytes: number): void {
    this.used -= bytes
    this.#wakeWaiters()
  }

  #fits (bytes: number): boolean {
    return this.used === 0 || this.used + bytes <= this.#limit
  }

  #wakeWaiters (): void {
    while (this.#waiters.length > 0 && this.#fits((this.#waiters[0] as { bytes: number }).bytes)) {
      (this.#waiters.shift() as { wake: () => void }).wake()
    }
  }
}
