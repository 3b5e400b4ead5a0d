// Caps the connections a listener has accepted that have not finished their handshake yet (the
// tcp transport's and the NBD server's): in all, and from one remote address, so that a stranger
// cannot hold thousands of sockets until each times out, nor take every slot from one address.

import type { Socket } from 'node:net'
import { GalleonError, describe } from './errors.js'

/** A connection's place among the pending ones; `release()` (idempotent) gives it back. */
export interface PendingSlot {
  release: () => void
}

/**
 * The pending connections of one listener. `admit()` takes a slot for a new socket or refuses it
 * when `max` are pending, or `maxPerAddress` from its address (an IPv6 /64 counts as one address:
 * whoever has one has all of it). A slot is given back when the connection finishes its handshake
 * (`release()`) or closes, whichever comes first; connections past their handshake are not counted.
 */
export class PendingConnections {
  readonly max: number
  readonly maxPerAddress: number
  /** Connections refused since creation. */
  refused = 0
  #count = 0
  #perAddress = new Map<string, number>()

  constructor (max: number, maxPerAddress: number) {
    this.max = max
    this.maxPerAddress = maxPerAddress
  }

  /** Connections holding a slot now. */
  get count (): number { return this.#count }

  /**
   * A slot for `socket`; or, when a cap is reached, which one (counted in `refused`): close the
   * connection then.
   */
  admit (socket: Socket): PendingSlot | 'total' | 'per-address' {
    const group = addressGroup(socket.remoteAddress)
    const fromGroup = this.#perAddress.get(group) ?? 0
    const full = this.#count >= this.max ? 'total' : fromGroup >= this.maxPerAddress ? 'per-address' : undefined
    if (full !== undefined) {
      this.refused++
      return full
    }
    this.#count++
    this.#perAddress.set(group, fromGroup + 1)
    let held = true
    const slot: PendingSlot = {
      release: () => {
        if (!held) return
        held = false
        this.#count--
        const left = (this.#perAddress.get(group) ?? 1) - 1
        if (left === 0) this.#perAddress.delete(group)
        else this.#perAddress.set(group, left)
      }
    }
    socket.once('close', slot.release)
    return slot
  }
}

/**
 * A cap option: a positive whole number, or `fallback` when absent. Throws INVALID_ARGUMENT naming
 * the option otherwise.
 */
export function pendingLimitOption (name: string, value: unknown, fallback: number): number {
  const limit = value ?? fallback
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1) {
    throw new GalleonError('INVALID_ARGUMENT', `${name} must be a whole number of connections of at least 1 (default ${fallback}), got ${describe(value)}`)
  }
  return limit
}

/**
 * What the per-address cap counts a remote address as: an IPv4 address (also written as an
 * IPv4-mapped IPv6 one) itself, an IPv6 address its /64.
 */
export function addressGroup (address: string | undefined): string {
  if (address === undefined || address === '') return 'unknown'
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  if (mapped !== null) return mapped[1] as string
  if (!address.includes(':')) return address
  const plain = address.split('%')[0] as string // a zone id (fe80::1%eth0) is not part of the address
  const double = plain.indexOf('::')
  const head = double < 0 ? plain : plain.slice(0, double)
  const tail = double < 0 ? '' : plain.slice(double + 2)
  const headGroups = head === '' ? [] : head.split(':')
  const tailGroups = tail === '' ? [] : tail.split(':')
  // An embedded IPv4 address (only ever at the end) stands for two groups.
  const width = (groups: string[]): number => groups.reduce((n, group) => n + (group.includes('.') ? 2 : 1), 0)
  const zeros = double < 0 ? 0 : Math.max(0, 8 - width(headGroups) - width(tailGroups))
  const groups = [...headGroups, ...Array<string>(zeros).fill('0'), ...tailGroups]
  return `${groups.slice(0, 4).map((group) => group.includes('.') ? group : (Number.parseInt(group, 16) || 0).toString(16)).join(':')}::/64`
}
