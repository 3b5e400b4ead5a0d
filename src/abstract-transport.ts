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
 * Handed to `_request` with each request. When the request is settled otherwise (timeout, the
 * caller's AbortSignal, close, or an error), the base class calls `onCancel` once, if the backend
 * set it, so that the backend can forget the request. `onCancel` returns true when the request
 * certainly never left this node (it still waited for a connection, or in a send queue, and is
 * taken back): the caller's error then says so (see isNotSent). Anything else (also no return
 * value) means it may have reached the peer.
 */
export interface RequestCancellation {
  onCancel: ((reason: GalleonError) => boolean | undefined | void) | undefined
}

/** Errors of requests that certainly never left this node (see markNotSent). */
const notSent = new WeakSet<GalleonError>()

/**
 * Marks `err` as the failure of a request that certainly never left this node, so its handler
 * cannot have run at the peer (nothing was connected, or it was still queued when the connection
 * or the request ended), and returns it. A Transport driver (a subclass's `_request`, or any
 * `Transport.request`) marks an error of its own for such requests: an error object shared with
 * requests that may have been sent must never be marked. Unmarked errors keep the safe default: the request may have
 * been sent (and run). Such errors arise on the sending node only: the mark never crosses the wire.
 */
export function markNotSent<E extends GalleonError> (err: E): E {
  notSent.add(err)
  return err
}

/** True when `err` is the failure of a request that certainly never left this node (see markNotSent). */
export function isNotSent (err: unknown): boolean {
  return err instanceof GalleonError && notSent.has(err)
}

/** `err` marked as never sent: itself when it is marked already, otherwise a marked copy (`err` may be shared). */
export function notSentCopy (err: GalleonError, message = err.message): GalleonError {
  if (isNotSent(err) && message === err.message) return err
  return markNotSent(new GalleonError(err.code, message, { cause: err.cause }))
}

/** How a request failed: an error, or one made once it is known whether the request never left this node. */
type Failure = GalleonError | ((neverSent: boolean) => GalleonError)

/** One request from `request()` until it settles (kept as one object: no closures or AbortController per request). */
class PendingRequest implements RequestCancellation {
  onCancel: ((reason: GalleonError) => void) | undefined = undefined
  admitted = false
  onAbort: (() => void) | undefined = undefined
  constructor (
    readonly address: string,
    readonly message: EncodedMessage,
    readonly budget: ByteBudget,
    /** performance.now() by which it times out. */
    readonly deadline: number,
    readonly timeoutMs: number,
    readonly signal: AbortSignal | undefined,
    readonly resolve: (reply: TransportMessage) => void,
    readonly reject: (err: GalleonError) => void
  ) {}
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
  #pending = new Set<PendingRequest>()
  #budgets = new Map<string, ByteBudget>()
  #completed = 0
  #failed = 0
  /**
   * One timer for every request's timeout: armed for the earliest deadline it knows of, it expires
   * what is due and re-arms for the rest. Referenced only while requests are pending.
   */
  #timer: NodeJS.Timeout | undefined
  #timerAt = Infinity
  #timerReferenced = false

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
    if (this.#state === 'closed') throw markNotSent(this.#notOpen())
    if (signal?.aborted === true) throw markNotSent(cancelled(address, signal, true))

    let budget = this.#budgets.get(address)
    if (budget === undefined) {
      budget = new ByteBudget(this.maxInFlightBytes)
      this.#budgets.set(address, budget)
    }
    const peerBudget = budget
    return await new Promise<TransportMessage>((resolve, reject) => {
      const request = new PendingRequest(address, encoded, peerBudget, performance.now() + timeoutMs, timeoutMs, signal, resolve, reject)
      this.#pending.add(request)
      this.#watchDeadline(request.deadline)
      if (signal !== undefined) {
        request.onAbort = () => { this.#settle(request, (neverSent) => cancelled(address, signal, neverSent)) }
        signal.addEventListener('abort', request.onAbort, { once: true })
      }
      if (peerBudget.acquire(request)) this.#start(request)
    })
  }

  /** Hands an admitted request to the backend. */
  #start (request: PendingRequest): void {
    request.admitted = true
    let delivery: Promise<TransportMessage>
    try {
      delivery = this._request(request.address, request.message, request)
    } catch (err) {
      delivery = Promise.reject(err)
    }
    delivery.then((reply) => { this.#settle(request, undefined, reply) }, (err: unknown) => {
      this.#settle(request, err instanceof GalleonError ? err : new GalleonError('BACKEND_UNAVAILABLE', `request to ${request.address} failed: ${errorText(err)}`, { cause: err }))
    })
  }

  #settle (request: PendingRequest, err: Failure | undefined, reply?: TransportMessage): void {
    if (!this.#pending.delete(request)) return
    if (request.onAbort !== undefined) request.signal?.removeEventListener('abort', request.onAbort)
    const budget = request.budget
    if (request.admitted) {
      budget.release(request.message.bytes)
    } else {
      budget.forget(request)
    }
    // Closing settles every request: one waiting for budget must not be sent on its way out.
    if (this.#state !== 'closed') for (const next of budget.admit()) this.#start(next)
    if (budget.idle && this.#budgets.get(request.address) === budget) this.#budgets.delete(request.address)
    if (this.#pending.size === 0 && this.#timerReferenced) {
      this.#timer?.unref()
      this.#timerReferenced = false
    }
    if (err === undefined) {
      this.#completed++
      request.resolve(reply as TransportMessage)
    } else {
      this.#failed++
      const onCancel = request.onCancel
      request.onCancel = undefined
      const asSent = typeof err === 'function' ? err(false) : err
      // Lets the backend forget the request; it says whether the request never left this node.
      // One still waiting for in-flight budget was never handed to the backend.
      const neverSent = (onCancel?.(asSent) as unknown) === true || !request.admitted
      request.reject(!neverSent ? asSent : typeof err === 'function' ? markNotSent(err(true)) : notSentCopy(asSent))
    }
  }

  /** Makes sure the timer fires by `deadline` (and keeps the process alive while requests are pending). */
  #watchDeadline (deadline: number): void {
    if (deadline < this.#timerAt) {
      if (this.#timer !== undefined) clearTimeout(this.#timer)
      this.#timerAt = deadline
      this.#timer = setTimeout(() => { this.#expire() }, Math.max(1, Math.ceil(deadline - performance.now())))
      this.#timerReferenced = true
    } else if (!this.#timerReferenced) {
      this.#timer?.ref()
      this.#timerReferenced = true
    }
  }

  #expire (): void {
    this.#timer = undefined
    this.#timerAt = Infinity
    this.#timerReferenced = false
    const now = performance.now()
    let next = Infinity
    for (const request of [...this.#pending]) {
      if (request.deadline <= now) {
        this.#settle(request, (neverSent) => new GalleonError('BACKEND_UNAVAILABLE', neverSent
          ? `no reply from ${request.address} within ${request.timeoutMs} ms: the request was never sent (it waited for a connection to the peer, behind ${this.maxInFlightBytes} bytes of unanswered requests to it, or in the connection's send queue: the peer is down, overloaded or cut off), so it was not applied`
          : `no reply from ${request.address} within ${request.timeoutMs} ms (the peer is down, overloaded or cut off); the request may or may not have been applied`))
      } else if (request.deadline < next) {
        next = request.deadline
      }
    }
    if (next !== Infinity) this.#watchDeadline(next)
  }

  async close (): Promise<void> {
    if (this.#closing !== undefined) return await this.#closing
    this.#state = 'closed'
    const closing = new GalleonError('BACKEND_UNAVAILABLE', `the ${this.name} transport of node ${this.nodeId} was closed while the request was in flight`)
    const closingUnsent = (neverSent: boolean): GalleonError => neverSent ? new GalleonError('BACKEND_UNAVAILABLE', `the ${this.name} transport of node ${this.nodeId} was closed before the request was sent; it was not applied`) : closing
    for (const request of [...this.#pending]) this.#settle(request, closingUnsent)
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    this.#timerAt = Infinity
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
    if (handler === undefined || this.#state === 'closed') return { ok: false, code: 'BACKEND_UNAVAILABLE', message: notServingMessage(this.nodeId) }
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
   * Delivers one request and resolves to its reply. If the request is settled otherwise (timeout,
   * caller's abort, close), `cancellation.onCancel` (when set) is called: forget the request then
   * (and return true if it never left this node). Reject with BACKEND_UNAVAILABLE when the peer
   * cannot be reached, or with the error the peer's handler reported. An error that proves this
   * request never left this node (nothing listens there, the connection could not be made, or it
   * ended with the request still queued) is marked with markNotSent, never an error object shared
   * with requests that may have been sent.
   */
  protected abstract _request (address: string, message: EncodedMessage, cancellation: RequestCancellation): Promise<TransportMessage>
  /** Stops listening and closes every connection; called once. */
  protected abstract _close (): Promise<void>

  #assertOpen (): void {
    if (this.#state === 'closed') throw this.#notOpen()
  }

  #notOpen (): GalleonError {
    return new GalleonError('NOT_OPEN', `the ${this.name} transport of node ${this.nodeId} is closed; create a new one`)
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

/**
 * The message of the refusal (BACKEND_UNAVAILABLE) of a request that reaches node `nodeId`'s
 * transport before it has a handler, or once it is closed: the request was not run there. Errors
 * cross a transport as a code and a message only, so a sender knows this refusal by its text (see
 * refusedBeforeRunning in cluster/manager.ts); it is the text of earlier releases too.
 */
export function notServingMessage (nodeId: string): string {
  return `node ${nodeId} is not serving requests`
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

function cancelled (address: string, signal: AbortSignal, neverSent: boolean): GalleonError {
  return new GalleonError('CANCELLED', neverSent
    ? `the request to ${address} was aborted by its signal before it was sent; it was not applied`
    : `the request to ${address} was aborted by its signal; it may or may not have been applied`, { cause: signal.reason })
}

function positiveInt (value: unknown, fallback: number, what: string): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be a positive integer, got ${describe(value)}`)
  }
  return value
}

/**
 * A FIFO byte semaphore over pending requests: `acquire` admits a request at once or queues it
 * while admitting its bytes would exceed the limit; `admit` hands out the queued requests that fit
 * now. A message larger than the whole limit is admitted alone, so it cannot wait forever.
 */
class ByteBudget {
  used = 0
  readonly #limit: number
  #waiters: PendingRequest[] = []

  constructor (limit: number) {
    this.#limit = limit
  }

  get idle (): boolean { return this.used === 0 && this.#waiters.length === 0 }

  /** True when `request` is admitted now; otherwise it waits for `admit()`. */
  acquire (request: PendingRequest): boolean {
    if (this.#waiters.length === 0 && this.#fits(request.message.bytes)) {
      this.used += request.message.bytes
      return true
    }
    this.#waiters.push(request)
    return false
  }

  /** Removes a waiting request that settled before it was admitted. */
  forget (request: PendingRequest): void {
    const at = this.#waiters.indexOf(request)
    if (at >= 0) this.#waiters.splice(at, 1)
  }

  release (bytes: number): void {
    this.used -= bytes
  }

  /** The waiting requests that fit now, in order, counted as admitted. */
  admit (): PendingRequest[] {
    if (this.#waiters.length === 0) return NONE
    const admitted: PendingRequest[] = []
    while (this.#waiters.length > 0 && this.#fits((this.#waiters[0] as PendingRequest).message.bytes)) {
      const request = this.#waiters.shift() as PendingRequest
      this.used += request.message.bytes
      admitted.push(request)
    }
    return admitted
  }

  #fits (bytes: number): boolean {
    return this.used === 0 || this.used + bytes <= this.#limit
  }
}

const NONE: PendingRequest[] = []
