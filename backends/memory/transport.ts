// In-process transport for tests: a MemoryNetwork connects MemoryTransports (one per node, addressed
// by node id) and injects faults (drop, delay, partition, reorder, kill), deterministically per seed.

import { seededRandom } from '../../src/seeded-random.js'
import { AbstractTransport, errorFromWire, markNotSent, type AbstractTransportOptions, type EncodedMessage, type HandlerOutcome, type RequestCancellation } from '../../src/abstract-transport.js'
import type { TransportMessage } from '../../src/drivers.js'
import { GalleonError, copyBytes, describe } from '../../src/errors.js'

/** One message crossing the network, as fault predicates see it. */
export interface MemoryMessageInfo {
  readonly from: string
  readonly to: string
  /** A request, or the reply (or error) going back. */
  readonly type: 'request' | 'reply'
  /** The request's kind (also for its reply). */
  readonly kind: string
  /** Sequence number of the message on this network, from 1. */
  readonly seq: number
}

/** Options of {@link MemoryNetwork}. */
export interface MemoryNetworkOptions {
  /** Seed of the PRNG behind drop probabilities, jitter and reordering (default 1). */
  readonly seed?: number
}

/** Counters of a MemoryNetwork. */
export interface MemoryNetworkStats {
  /** Messages handed to the network (requests and replies). */
  readonly sent: number
  readonly delivered: number
  /** Messages lost to drop rules, partitions or killed nodes. */
  readonly lost: number
}

/** A request travelling through the network, failed at most once. */
interface Exchange {
  readonly from: string
  readonly to: string
  settled: boolean
  /** Handed to the receiving side (its handler runs, or nothing listens there). */
  delivered: boolean
  readonly resolve: (reply: TransportMessage) => void
  /** Fails the request with `err` (the handler's error) or BACKEND_UNAVAILABLE for a reason text. */
  readonly fail: (err: GalleonError | string) => void
}

/**
 * An in-process network. Create one per test, then one transport per node with `transport(nodeId)`;
 * a transport listens at its node id. Faults apply to every message from the moment they are set:
 *
 * ```ts
 * const net = new MemoryNetwork({ seed: 7 })
 * const a = net.transport('a'); const b = net.transport('b')
 * await b.listen(async (from, req) => ({ kind: 'ok', header: {} }))
 * net.partition(['a'], ['b'])   // a <-> b fails with BACKEND_UNAVAILABLE
 * net.heal()
 * ```
 *
 * A lost message fails its request at once with BACKEND_UNAVAILABLE naming the peer and the reason
 * (as a TCP connection reset would), unless a drop rule is `silent`, in which case the request waits
 * for its timeout. A lost reply means the handler ran: delivery is at most once. Like a TCP sender,
 * the sender of a lost request cannot tell whether it arrived: its error says it may have been sent.
 * Only a request that certainly went nowhere has an error marked as never sent (isNotSent): no node
 * listens at the address (a refused connection), the sender was killed before it sent, or the request was given up
 * on (timeout, abort, close) while delayed or held for reordering, before it arrived.
 */
export class MemoryNetwork {
  readonly #random: () => number
  readonly #listeners = new Map<string, MemoryTransport>()
  readonly #killed = new Set<string>()
  /** Exchanges a node is serving, failed when it closes or is killed. */
  readonly #serving = new Map<string, Set<Exchange>>()
  /** Exchanges a node sent, failed when it is killed. */
  readonly #sending = new Map<string, Set<Exchange>>()
  #drop: ((message: MemoryMessageInfo) => boolean) | undefined
  #dropSilently = false
  #delayMs = 0
  #jitterMs = 0
  #partitions: Array<[Set<string>, Set<string>]> = []
  #reorderWindow = 0
  #reorderBuffer: Array<() => void> = []
  #reorderFlush: NodeJS.Immediate | undefined
  #seq = 0
  #sent = 0
  #delivered = 0
  #lost = 0

  constructor (options: MemoryNetworkOptions = {}) {
    const seed = options.seed ?? 1
    if (typeof seed !== 'number' || !Number.isInteger(seed)) throw new GalleonError('INVALID_ARGUMENT', `seed must be an integer, got ${describe(seed)}`)
    this.#random = seededRandom(seed)
  }

  /** A transport for `nodeId` on this network. */
  transport (nodeId: string, options: Omit<MemoryTransportOptions, 'network' | 'nodeId'> = {}): MemoryTransport {
    return new MemoryTransport({ ...options, network: this, nodeId })
  }

  /**
   * Drops messages: each with `rule` probability (0..1), or those for which `rule` returns true.
   * `drop(0)` stops dropping. Silent drops leave the request waiting for its timeout.
   */
  drop (rule: number | ((message: MemoryMessageInfo) => boolean), options: { silent?: boolean } = {}): void {
    if (typeof rule === 'number') {
      if (!(rule >= 0 && rule <= 1)) throw new GalleonError('INVALID_ARGUMENT', `drop probability must be between 0 and 1, got ${describe(rule)}`)
      this.#drop = rule === 0 ? undefined : () => this.#random() < rule
    } else if (typeof rule === 'function') {
      this.#drop = rule
    } else {
      throw new GalleonError('INVALID_ARGUMENT', `drop needs a probability or a predicate, got ${describe(rule)}`)
    }
    this.#dropSilently = options.silent === true
  }

  /** Delays every message by `ms` plus a random 0..`jitterMs` (jitter reorders messages too). `delay(0)` stops. */
  delay (ms: number, options: { jitterMs?: number } = {}): void {
    const jitterMs = options.jitterMs ?? 0
    for (const [what, value] of [['delay', ms], ['jitterMs', jitterMs]] as const) {
      if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) throw new GalleonError('INVALID_ARGUMENT', `${what} must be a non-negative number of milliseconds, got ${describe(value)}`)
    }
    this.#delayMs = ms
    this.#jitterMs = jitterMs
  }

  /** Cuts every link between a node of `nodesA` and a node of `nodesB` (both ways) until `heal()`. */
  partition (nodesA: readonly string[], nodesB: readonly string[]): void {
    if (!Array.isArray(nodesA) || !Array.isArray(nodesB)) throw new GalleonError('INVALID_ARGUMENT', 'partition needs two arrays of node ids')
    this.#partitions.push([new Set(nodesA), new Set(nodesB)])
  }

  /** Removes every partition. */
  heal (): void {
    this.#partitions = []
  }

  /**
   * Holds messages until `window` are waiting (or the current event-loop turn ends), then delivers
   * them in a shuffled order. `reorder(0)` stops.
   */
  reorder (window: number): void {
    if (!Number.isSafeInteger(window) || window < 0) throw new GalleonError('INVALID_ARGUMENT', `reorder window must be a non-negative integer, got ${describe(window)}`)
    this.#reorderWindow = window
    if (window <= 1) this.#flushReordered()
  }

  /**
   * Kills a node as a crash would: it stops answering, requests it was serving or sending fail with
   * BACKEND_UNAVAILABLE, and messages to or from it are lost until `revive(nodeId)`.
   */
  kill (nodeId: string): void {
    this.#killed.add(nodeId)
    this.#failAll(this.#serving.get(nodeId), `node ${nodeId} was killed while serving the request`)
    this.#failAll(this.#sending.get(nodeId), `node ${nodeId} (the sender) was killed`)
  }

  /** Brings a killed node back (its transport answers again). */
  revive (nodeId: string): void {
    this.#killed.delete(nodeId)
  }

  /** Removes every fault (drops, delay, partitions, reordering, kills). */
  reset (): void {
    this.#drop = undefined
    this.#delayMs = 0
    this.#jitterMs = 0
    this.heal()
    this.reorder(0)
    this.#killed.clear()
  }

  get stats (): MemoryNetworkStats {
    return { sent: this.#sent, delivered: this.#delivered, lost: this.#lost }
  }

  /** @internal Registers a listening transport at its node id. */
  register (transport: MemoryTransport): string {
    const current = this.#listeners.get(transport.nodeId)
    if (current !== undefined && current !== transport) {
      throw new GalleonError('BUSY', `node id ${transport.nodeId} is already listening on this memory network; close that transport first`)
    }
    this.#listeners.set(transport.nodeId, transport)
    return transport.nodeId
  }

  /** @internal Unregisters a closing transport; requests it was serving fail. */
  unregister (transport: MemoryTransport): void {
    if (this.#listeners.get(transport.nodeId) !== transport) return
    this.#listeners.delete(transport.nodeId)
    this.#failAll(this.#serving.get(transport.nodeId), `node ${transport.nodeId} closed while serving the request`)
  }

  /** @internal Carries a request from `sender` to `to` and its outcome back. */
  async exchange (sender: MemoryTransport, to: string, message: EncodedMessage, cancellation: RequestCancellation): Promise<TransportMessage> {
    const from = sender.nodeId
    if (this.#killed.has(from)) throw markNotSent(unavailable(`node ${from} is killed and cannot send to ${to}`))
    // Copied now: the sender may reuse its buffer, and nodes share no memory.
    const request: TransportMessage = { kind: message.kind, header: JSON.parse(message.headerJson), payload: copyBytes(message.payload) }
    return await new Promise<TransportMessage>((resolve, reject) => {
      const exchange: Exchange = {
        from,
        to,
        settled: false,
        delivered: false,
        resolve: (reply) => { if (finish()) resolve(reply) },
        fail: (err) => { if (finish()) reject(typeof err === 'string' ? unavailable(err) : err) }
      }
      const finish = (): boolean => {
        if (exchange.settled) return false
        exchange.settled = true
        cancellation.onCancel = undefined
        untrack(this.#serving, to, exchange)
        untrack(this.#sending, from, exchange)
        return true
      }
      // Given up on before it arrived (delayed or held for reordering): it never will.
      cancellation.onCancel = (reason) => {
        const neverArrived = !exchange.delivered
        if (finish()) reject(reason)
        return neverArrived
      }
      track(this.#sending, from, exchange)
      this.#transmit(exchange, 'request', request.kind, () => { this.#deliverRequest(exchange, request) })
    })
  }

  #deliverRequest (exchange: Exchange, request: TransportMessage): void {
    exchange.delivered = true
    const target = this.#listeners.get(exchange.to)
    if (target === undefined) {
      // As a refused TCP connection: the request went nowhere.
      exchange.fail(markNotSent(unavailable(`no node is listening at ${exchange.to} on this memory network`)))
      return
    }
    track(this.#serving, exchange.to, exchange)
    void target.serveFromNetwork(exchange.from, request).then((outcome) => {
      if (exchange.settled) return // the server closed or was killed, or the sender gave up
      untrack(this.#serving, exchange.to, exchange)
      const reply = copyOutcome(outcome)
      this.#transmit({ from: exchange.to, to: exchange.from, exchange }, 'reply', request.kind, () => {
        if (reply instanceof GalleonError) exchange.fail(reply)
        else exchange.resolve(reply)
      })
    })
  }

  /** Applies the faults to one message, then delivers it (or loses it and fails the exchange). */
  #transmit (route: Exchange | { from: string, to: string, exchange: Exchange }, type: 'request' | 'reply', kind: string, deliver: () => void): void {
    const exchange = 'exchange' in route ? route.exchange : route
    const { from, to } = route
    const info: MemoryMessageInfo = { from, to, type, kind, seq: ++this.#seq }
    this.#sent++
    const lose = (reason: string, silent = false): void => {
      this.#lost++
      if (!silent) exchange.fail(reason)
    }
    const what = type === 'request' ? `request ${JSON.stringify(kind)} from ${from} to ${to}` : `reply to ${JSON.stringify(kind)} from ${from} to ${to}`
    if (this.#killed.has(to)) return lose(`${what} lost: node ${to} is killed (not answering)`)
    if (this.#isPartitioned(from, to)) return lose(`${what} lost: ${from} and ${to} are partitioned`)
    if (this.#drop?.(info) === true) return lose(`${what} dropped by fault injection`, this.#dropSilently)
    const arrive = (): void => {
      if (exchange.settled) return
      if (this.#killed.has(to)) return lose(`${what} lost: node ${to} is killed (not answering)`)
      this.#delivered++
      deliver()
    }
    const delayMs = this.#delayMs + (this.#jitterMs > 0 ? this.#random() * this.#jitterMs : 0)
    const enqueue = (): void => {
      if (this.#reorderWindow <= 1) return arrive()
      this.#reorderBuffer.push(arrive)
      if (this.#reorderBuffer.length >= this.#reorderWindow) this.#flushReordered()
      else this.#reorderFlush ??= setImmediate(() => { this.#flushReordered() })
    }
    if (delayMs > 0) setTimeout(enqueue, delayMs)
    else queueMicrotask(enqueue)
  }

  #flushReordered (): void {
    if (this.#reorderFlush !== undefined) clearImmediate(this.#reorderFlush)
    this.#reorderFlush = undefined
    const batch = this.#reorderBuffer
    this.#reorderBuffer = []
    for (let i = batch.length - 1; i > 0; i--) { // Fisher-Yates with the seeded PRNG
      const j = Math.floor(this.#random() * (i + 1))
      const swap = batch[i] as () => void
      batch[i] = batch[j] as () => void
      batch[j] = swap
    }
    for (const arrive of batch) arrive()
  }

  #isPartitioned (a: string, b: string): boolean {
    return this.#partitions.some(([left, right]) => (left.has(a) && right.has(b)) || (left.has(b) && right.has(a)))
  }

  #failAll (exchanges: Set<Exchange> | undefined, reason: string): void {
    if (exchanges === undefined) return
    for (const exchange of [...exchanges]) exchange.fail(reason)
  }
}

/** Options of {@link MemoryTransport}. */
export interface MemoryTransportOptions extends AbstractTransportOptions {
  readonly network: MemoryNetwork
}

/** A node's transport on a {@link MemoryNetwork}; it listens at its node id. */
export class MemoryTransport extends AbstractTransport {
  readonly name = 'memory'
  readonly network: MemoryNetwork

  constructor (options: MemoryTransportOptions) {
    super(options)
    if (!(options.network instanceof MemoryNetwork)) throw new GalleonError('INVALID_ARGUMENT', `a MemoryTransport needs a MemoryNetwork (options.network), got ${describe(options.network)}`)
    this.network = options.network
  }

  /** @internal Serves a request the network delivered. */
  async serveFromNetwork (from: string, request: TransportMessage): Promise<HandlerOutcome> {
    return await this.serve(from, request)
  }

  protected async _listen (): Promise<string> {
    return this.network.register(this)
  }

  protected async _request (address: string, message: EncodedMessage, cancellation: RequestCancellation): Promise<TransportMessage> {
    return await this.network.exchange(this, address, message, cancellation)
  }

  protected async _close (): Promise<void> {
    this.network.unregister(this)
  }
}

/** Backend descriptor: name, availability, and a factory. */
export const memoryTransportBackend = {
  name: 'memory',
  isAvailable: async (): Promise<boolean> => true,
  create: (options: MemoryTransportOptions): MemoryTransport => new MemoryTransport(options)
}

/** The reply as the receiving node gets it: its own copies, or the handler's error. */
function copyOutcome (outcome: HandlerOutcome): TransportMessage | GalleonError {
  if (!outcome.ok) return errorFromWire(outcome.code, outcome.message)
  return { kind: outcome.reply.kind, header: JSON.parse(outcome.reply.headerJson), payload: copyBytes(outcome.reply.payload) }
}

function track (map: Map<string, Set<Exchange>>, node: string, exchange: Exchange): void {
  let set = map.get(node)
  if (set === undefined) {
    set = new Set()
    map.set(node, set)
  }
  set.add(exchange)
}

/** Forgets `exchange`, and the node's entry once it has none left (ids come and go). */
function untrack (map: Map<string, Set<Exchange>>, node: string, exchange: Exchange): void {
  const set = map.get(node)
  if (set === undefined) return
  set.delete(exchange)
  if (set.size === 0) map.delete(node)
}

function unavailable (reason: string): GalleonError {
  return new GalleonError('BACKEND_UNAVAILABLE', reason)
}

