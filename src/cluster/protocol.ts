// The version of the inter-node protocol: the cluster messages nodes send each other (replication's
// repl:* stream, resyncs and forwarded I/O, placement, cluster status) and what their headers and
// payloads mean. The transport's own version (its frames and handshake) is separate and below it.
//
// A node publishes the range it speaks in its member record ({ version, oldest }: it speaks every
// version from `oldest` to `version`), and stamps every request with the version it is written in:
// the highest both ends speak. A node refuses to join a cluster whose healthy members it cannot talk
// to, placement leaves such nodes out, and a request in a version the receiver does not speak is
// refused before any handler sees it, with an error naming both ranges. A record or a request
// without a version comes from a release before versioning, which spoke version 1.

import { GalleonError, describe } from '../errors.js'
import type { ClusterNode } from '../drivers.js'

/** The inter-node protocol version of this release. */
export const PROTOCOL_VERSION = 1
/** The oldest inter-node protocol version this release still speaks. */
export const OLDEST_PROTOCOL_VERSION = 1
/** What a release before versioning spoke (its records and requests carry no version). */
const UNVERSIONED = 1

/** Versions a node speaks: every one from `oldest` to `version`. */
export interface ProtocolRange {
  readonly version: number
  readonly oldest: number
}

/** This release's range. */
export const THIS_PROTOCOL: ProtocolRange = Object.freeze({ version: PROTOCOL_VERSION, oldest: OLDEST_PROTOCOL_VERSION })

/** Header field of a cluster request: the protocol version it is written in. */
export const PROTOCOL_FIELD = 'protocol'

/** The range a member record says its node speaks (version 1 for a record without one). */
export function protocolOf (node: Pick<ClusterNode, 'protocol'>): ProtocolRange {
  return node.protocol ?? { version: UNVERSIONED, oldest: UNVERSIONED }
}

/** The version to write a request to `node` in: the highest both speak, or undefined if none. */
export function versionFor (node: Pick<ClusterNode, 'protocol'>, mine: ProtocolRange = THIS_PROTOCOL): number | undefined {
  const theirs = protocolOf(node)
  const version = Math.min(mine.version, theirs.version)
  return version >= Math.max(mine.oldest, theirs.oldest) ? version : undefined
}

function rangeText (range: ProtocolRange): string {
  return range.oldest === range.version ? `version ${range.version}` : `versions ${range.oldest} to ${range.version}`
}

/** Why this node cannot talk to `node` (undefined when it can). */
export function incompatibility (node: Pick<ClusterNode, 'id' | 'protocol'>, mine: ProtocolRange = THIS_PROTOCOL): string | undefined {
  if (versionFor(node, mine) !== undefined) return undefined
  const theirs = protocolOf(node)
  const older = theirs.version < mine.oldest ? `node ${node.id}` : 'this node'
  return `node ${node.id} speaks inter-node protocol ${rangeText(theirs)} and this node ${rangeText(mine)}, which have none in common; upgrade ${older}`
}

/**
 * The version a received request is written in, checked against what this node speaks: a
 * GalleonError (IO_ERROR, as the transport's own version check) when it is not one of them.
 */
export function checkRequestVersion (from: string, kind: string, header: Readonly<Record<string, unknown>>, mine: ProtocolRange = THIS_PROTOCOL): number {
  const stamped = header[PROTOCOL_FIELD] === undefined ? UNVERSIONED : header[PROTOCOL_FIELD]
  if (typeof stamped !== 'number' || !Number.isSafeInteger(stamped) || stamped < 1) {
    throw new GalleonError('IO_ERROR', `node ${from} sent a ${kind} message with a malformed inter-node protocol version (${describe(stamped)}); is it a GalleonFS node?`)
  }
  if (stamped < mine.oldest || stamped > mine.version) {
    const older = stamped < mine.oldest ? `node ${from}` : 'this node'
    throw new GalleonError('IO_ERROR', `node ${from} sent a ${kind} message in inter-node protocol version ${stamped}, and this node speaks ${rangeText(mine)}; upgrade ${older}`)
  }
  return stamped
}

/** Checks the `protocol` field of a member record given to join() (INVALID_ARGUMENT). */
export function assertProtocolRange (protocol: unknown, what: string): void {
  if (protocol === undefined) return
  const { version, oldest } = (protocol ?? {}) as Record<string, unknown>
  if (protocol === null || typeof protocol !== 'object' || !Number.isSafeInteger(version) || !Number.isSafeInteger(oldest) || (oldest as number) < 1 || (version as number) < (oldest as number)) {
    throw new GalleonError('INVALID_ARGUMENT', `${what} must be { version, oldest } with whole numbers 1 <= oldest <= version (the inter-node protocol versions the node speaks), got ${describe(protocol)}`)
  }
}
