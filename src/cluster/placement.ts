// Where a volume's copies go: a pure function of the cluster's members and the volume's needs, so
// the cluster leader, a test and an operator asking "why there?" all get the same answer.
//
// Strategies:
//   spread    as many zones as possible, then the nodes holding the fewest volumes
//   balanced  the nodes with the most free capacity
//   affinity / anti-affinity are constraints on node labels that apply with either strategy:
//             `affinity` labels a node must have, `antiAffinity` labels it must not have.
//   nodes     a storage pool's nodes: only these may be chosen (with either strategy).
// The first node chosen is the primary: the preferred node (the one creating the volume) when it is
// eligible, else the best by the strategy. Fewer eligible nodes than replicas: the volume is placed
// on those it has and marked degraded, with the reason.

import { GalleonError, describe } from '../errors.js'
import type { ClusterMember } from '../drivers.js'
import { incompatibility } from './protocol.js'

export type PlacementStrategy = 'spread' | 'balanced'

export const PLACEMENT_STRATEGIES: readonly PlacementStrategy[] = ['spread', 'balanced']

/** What a volume needs from the nodes holding it. */
export interface PlacementRequest {
  /** Copies wanted, the primary included. */
  readonly replicas: number
  readonly strategy?: PlacementStrategy
  /** Bytes each copy needs (thin volumes: what they are expected to fill; 0 to ignore capacity). */
  readonly requiredBytes?: number
  /** Only these zones (a storage class's allowed topologies); default any. */
  readonly zones?: readonly string[]
  /** Only these node ids (a storage pool's nodes); default any. */
  readonly nodes?: readonly string[]
  /** Labels a node must carry, all of them. */
  readonly affinity?: Readonly<Record<string, string>>
  /** Labels a node must not carry, any of them. */
  readonly antiAffinity?: Readonly<Record<string, string>>
  /** The primary, if it is eligible (usually the node the volume is created on). */
  readonly preferredPrimary?: string
  /** Nodes that already hold a copy (adding replicas): kept, and counted towards `replicas`. */
  readonly current?: readonly string[]
  /** Volumes each node holds now (spread); missing nodes count 0. */
  readonly load?: Readonly<Record<string, number>>
}

export interface Placement {
  /** Node ids, the primary first. */
  readonly nodes: readonly string[]
  readonly primary: string
  /** Fewer copies than asked for. */
  readonly degraded: boolean
  /** Why, when degraded (which constraint left too few nodes). */
  readonly reason?: string
  /** Zones of the chosen nodes, in order. */
  readonly zones: readonly string[]
}

function checkRequest (members: readonly ClusterMember[], request: PlacementRequest): void {
  // members come from the coordinator, or from a caller of this exported function (clusterStatus().members).
  if (!Array.isArray(members) || !members.every((m: unknown) => m !== null && typeof m === 'object' && typeof (m as { id?: unknown }).id === 'string')) {
    throw new GalleonError('INVALID_ARGUMENT', `placement needs the cluster's members, a list such as clusterStatus().members, got ${describe(members)}`)
  }
  if (request === null || typeof request !== 'object') throw new GalleonError('INVALID_ARGUMENT', `a placement request is an object such as { replicas: 3 }, got ${describe(request)}`)
  if (!Number.isSafeInteger(request.replicas) || request.replicas < 1) throw new GalleonError('INVALID_ARGUMENT', `replicas must be a whole number of at least 1, got ${describe(request.replicas)}`)
  if (request.strategy !== undefined && !PLACEMENT_STRATEGIES.includes(request.strategy)) throw new GalleonError('INVALID_ARGUMENT', `placement strategy must be one of ${PLACEMENT_STRATEGIES.join(', ')}, got ${describe(request.strategy)}`)
  if (request.requiredBytes !== undefined && (typeof request.requiredBytes !== 'number' || !Number.isFinite(request.requiredBytes) || request.requiredBytes < 0)) {
    throw new GalleonError('INVALID_ARGUMENT', `requiredBytes must be a number of bytes, got ${describe(request.requiredBytes)}`)
  }
  for (const key of ['affinity', 'antiAffinity'] as const) {
    const labels = request[key]
    if (labels !== undefined && (labels === null || typeof labels !== 'object' || Array.isArray(labels) || !Object.values(labels).every((v) => typeof v === 'string'))) {
      throw new GalleonError('INVALID_ARGUMENT', `${key} must be an object of label values such as { disk: 'ssd' }, got ${describe(labels)}`)
    }
  }
  if (request.zones !== undefined && (!Array.isArray(request.zones) || !request.zones.every((z) => typeof z === 'string'))) {
    throw new GalleonError('INVALID_ARGUMENT', `zones must be a list of zone names, got ${describe(request.zones)}`)
  }
  for (const key of ['nodes', 'current'] as const) {
    const ids = request[key]
    if (ids !== undefined && (!Array.isArray(ids) || !ids.every((n) => typeof n === 'string'))) {
      throw new GalleonError('INVALID_ARGUMENT', `${key} must be a list of node ids, got ${describe(ids)}`)
    }
  }
  if (request.preferredPrimary !== undefined && typeof request.preferredPrimary !== 'string') throw new GalleonError('INVALID_ARGUMENT', `preferredPrimary must be a node id, got ${describe(request.preferredPrimary)}`)
  const load = request.load
  if (load !== undefined && (load === null || typeof load !== 'object' || Array.isArray(load) || !Object.values(load).every((n) => typeof n === 'number' && Number.isFinite(n) && n >= 0))) {
    // A NaN count would make the ordering inconsistent, so the nodes chosen would depend on the sort.
    throw new GalleonError('INVALID_ARGUMENT', `load must be an object of volume counts per node such as { n1: 3 }, got ${describe(load)}`)
  }
}

/** Chooses the nodes of a volume (see the top of this file). */
export function placeVolume (members: readonly ClusterMember[], request: PlacementRequest): Placement {
  checkRequest(members, request)
  const strategy = request.strategy ?? 'spread'
  const required = request.requiredBytes ?? 0
  const current = new Set(request.current ?? [])
  // Each constraint in turn, remembering which one left too few nodes.
  let eligible = members.filter((m) => m.healthy)
  const reasons: string[] = []
  const narrow = (keep: (m: ClusterMember) => boolean, what: string): void => {
    const before = eligible.length
    eligible = eligible.filter((m) => current.has(m.id) || keep(m))
    if (eligible.length < before && eligible.length < request.replicas) reasons.push(what)
  }
  if (eligible.length < request.replicas) reasons.push(`${eligible.length} healthy node(s)`)
  // Nodes this release cannot talk to (see protocol.ts) get no new copies.
  narrow((m) => incompatibility(m) === undefined, 'nodes speaking this node\'s inter-node protocol')
  if (request.nodes !== undefined && request.nodes.length > 0) narrow((m) => (request.nodes as readonly string[]).includes(m.id), `pool nodes ${request.nodes.join(', ')}`)
  if (request.zones !== undefined && request.zones.length > 0) narrow((m) => (request.zones as readonly string[]).includes(m.zone), `zones ${request.zones.join(', ')}`)
  const affinity = Object.entries(request.affinity ?? {})
  if (affinity.length > 0) narrow((m) => affinity.every(([k, v]) => m.labels[k] === v), `affinity ${affinity.map(([k, v]) => `${k}=${v}`).join(',')}`)
  const anti = Object.entries(request.antiAffinity ?? {})
  if (anti.length > 0) narrow((m) => !anti.some(([k, v]) => m.labels[k] === v), `anti-affinity ${anti.map(([k, v]) => `${k}=${v}`).join(',')}`)
  if (required > 0) narrow((m) => m.freeBytes >= required, `${required} free bytes`)
  if (eligible.length === 0) {
    throw new GalleonError('NO_SPACE', `no node can hold this volume (${reasons.length > 0 ? reasons.join('; ') : 'no healthy nodes'}); add nodes or relax the storage class's constraints`)
  }

  const load = request.load ?? {}
  const byStrategy = (a: ClusterMember, b: ClusterMember): number => {
    // Ties broken by id in code-unit order: the same answer on every node, whatever its locale.
    const byId = a.id < b.id ? -1 : a.id > b.id ? 1 : 0
    if (strategy === 'balanced') return (b.freeBytes - a.freeBytes) || byId
    return ((load[a.id] ?? 0) - (load[b.id] ?? 0)) || (b.freeBytes - a.freeBytes) || byId
  }
  // Nodes holding copies stay (the preferred one first), as many as are wanted.
  const chosen: ClusterMember[] = eligible.filter((m) => current.has(m.id)).sort((a, b) => (b.id === request.preferredPrimary ? 1 : 0) - (a.id === request.preferredPrimary ? 1 : 0) || byStrategy(a, b)).slice(0, request.replicas)
  const pool = eligible.filter((m) => !current.has(m.id)).sort(byStrategy)
  // The preferred primary first, when it is eligible; the strategy places the rest around it.
  const preferredAt = pool.findIndex((m) => m.id === request.preferredPrimary)
  if (preferredAt >= 0 && chosen.length < request.replicas) chosen.unshift(...pool.splice(preferredAt, 1))
  while (chosen.length < request.replicas && pool.length > 0) {
    let at = 0
    if (strategy === 'spread') {
      // A zone not used yet, if there is one; the pool is already in preference order.
      const used = new Set(chosen.map((m) => m.zone))
      const fresh = pool.findIndex((m) => !used.has(m.zone))
      if (fresh >= 0) at = fresh
    }
    chosen.push(pool.splice(at, 1)[0] as ClusterMember)
  }
  const preferred = chosen.findIndex((m) => m.id === request.preferredPrimary)
  if (preferred > 0) chosen.unshift(...chosen.splice(preferred, 1))
  const degraded = chosen.length < request.replicas
  return {
    nodes: chosen.map((m) => m.id),
    primary: (chosen[0] as ClusterMember).id,
    degraded,
    ...(degraded ? { reason: `${chosen.length} of ${request.replicas} copies placed: ${reasons.join('; ') || 'too few eligible nodes'}` } : {}),
    zones: chosen.map((m) => m.zone)
  }
}
