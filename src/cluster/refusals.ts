// Refusals of cluster requests that were not run (the receiver was starting, the sender's address
// for it was stale, it is no member): their messages, and how a sender tells one (refusedBeforeRunning).

import { GalleonError } from '../errors.js'
import { notServingMessage } from '../abstract-transport.js'

/** What a node id looks like (ClusterOptions.nodeId): refusals name node ids of this form. */
export const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

/** The refusal of a message that came before the node's services registered their handlers (see ClusterManager.serving). */
export function startingMessage (nodeId: string, kind: string): string {
  return `node ${nodeId} is starting and does not serve ${kind} messages yet; retry in a moment`
}

/** How the refusal of a message meant for node `meant` that reached another node (the sender's address for it is stale) ends. */
export function staleAddressEnd (meant: string): string {
  return `: its address for ${meant} is stale (that node moved, or this one took over its address); it retries once the membership shows the new address`
}

/** The refusal of a request to a node the membership does not list (it is not sent). */
export function notMemberMessage (nodeId: string): string {
  return `node ${nodeId} is not a member of the cluster`
}

/**
 * Whether `err`, the failure of a `kind` request sent to node `nodeId` through
 * ClusterManager.request, is a refusal that says the request was not run: the node was starting
 * (its services had not registered their handlers yet), its transport had no handler or was
 * closed, the message reached another node at a stale address, or the node is no member (nothing
 * was sent). A lost connection or a lapsed answer is not one: the request may have run.
 *
 * Errors cross a transport as a code and a message only (HandlerOutcome), so these refusals are
 * known by their whole messages, built by the functions above (and the transport's
 * notServingMessage) and unchanged from earlier releases, whose nodes' refusals are thus known
 * too. They must name `nodeId` (and `kind`), so that an error a handler passed on from a request
 * of its own to another node is not taken for one.
 */
export function refusedBeforeRunning (err: unknown, nodeId: string, kind: string): boolean {
  if (!(err instanceof GalleonError) || err.code !== 'BACKEND_UNAVAILABLE') return false
  const message = err.message
  if (message === startingMessage(nodeId, kind) || message === notServingMessage(nodeId) || message === notMemberMessage(nodeId)) return true
  // "node <sender> sent a <kind> message for node <nodeId> to node <receiver>: its address for <nodeId> is stale ..."
  if (!message.startsWith('node ') || !message.endsWith(staleAddressEnd(nodeId))) return false
  const middle = message.slice('node '.length, message.length - staleAddressEnd(nodeId).length)
  const sent = ` sent a ${kind} message for node ${nodeId} to node `
  const at = middle.indexOf(sent)
  return at > 0 && !/\s/.test(middle.slice(0, at)) && NODE_ID.test(middle.slice(at + sent.length))
}
