// Failover and repair, run by the cluster leader: promotes an in-sync copy of a volume whose
// primary is gone, gives up copies on nodes unhealthy too long, and places copies a set lacks.

import { placeVolume } from '../cluster/placement.js'
import { incompatibility } from '../cluster/protocol.js'
import { RECORD_PREFIX, copiesPerNode, givingUp, parseRecord } from './records.js'
import type { ManagerCore } from './common.js'
import { takingNoCopies } from './replica-sets.js'

/** The cluster leader's passes over every replica-set record (a pass does nothing on other nodes). */
export class FailoverLeader {
  readonly #core: ManagerCore
  #leaderBusy = false
  readonly #replacementDelayMs: number
  /** Since when (performance.now() on this leader: a duration, whatever the wall clock does) each node holding copies has been seen unhealthy. */
  readonly #unhealthySince = new Map<string, number>()

  constructor (core: ManagerCore, replacementDelayMs: number) {
    this.#core = core
    this.#replacementDelayMs = replacementDelayMs
  }

  /** On the cluster leader: promotes an in-sync copy of volumes whose primary is gone, adds copies to short replica sets. */
  async pass (): Promise<void> {
    if (this.#core.cluster.leadership === undefined) this.#unhealthySince.clear()
    if (this.#leaderBusy || this.#core.closed || this.#core.cluster.leadership === undefined) return
    this.#leaderBusy = true
    try {
      const members = await this.#core.coordinator.members()
      const healthy = new Set(members.filter((m) => m.healthy).map((m) => m.id))
      // Read once a pass, when a record needs it: nodes that closed cleanly (listed healthy until
      // their lease lapses) are neither promoted nor given new copies; leaving ones get no copies.
      let excludedNow: Promise<Set<string>> | undefined
      const excluded = async (): Promise<Set<string>> => await (excludedNow ??= takingNoCopies(this.#core))
      let closedNow: Promise<Set<string>> | undefined
      const closed = async (): Promise<Set<string>> => await (closedNow ??= this.#core.cluster.closedMembers())
      const now = performance.now()
      for (const node of [...this.#unhealthySince.keys()]) if (healthy.has(node)) this.#unhealthySince.delete(node)
      const entries = await this.#core.coordinator.list(RECORD_PREFIX)
      // Copies per node, kept up to date as this pass places copies: spread sends them to the least loaded.
      const load = copiesPerNode(entries)
      for (const entry of entries) {
        if (this.#core.closed || this.#core.cluster.leadership === undefined) return
        const record = parseRecord(entry.value)
        if (record === undefined) continue
        const volumeId = record.spec.id
        if (!healthy.has(record.primary)) {
          // A volume that wants one copy and has two is moving between nodes: the copy being
          // filled may lack the primary's latest WriteDurable writes, so it is never promoted;
          // the volume waits for its primary's node, as a 1-copy volume does.
          if (record.spec.replicas <= 1) continue
          // A copy on a node this one can talk to first: one it cannot could stream to none of them.
          // Not one that closed: it would serve nothing until it starts again (as a copy then).
          const gone = await closed()
          const promotable = record.inSync.filter((n) => n !== record.primary && healthy.has(n) && !gone.has(n))
          const speaks = (n: string): boolean => { const m = members.find((member) => member.id === n); return m !== undefined && incompatibility(m) === undefined }
          const candidate = promotable.find(speaks) ?? promotable[0]
          if (candidate === undefined) continue
          const written = await this.#core.coordinator.put(entry.key, JSON.stringify({ ...record, primary: candidate, epoch: record.epoch + 1, inSync: [candidate], handoff: undefined }), { expectRevision: entry.revision })
          if (written !== undefined) {
            this.#core.host.emit('replication:failover', { volumeId, from: record.primary, to: candidate, epoch: record.epoch + 1 })
          }
          continue
        }
        // A copy whose node stayed unhealthy past the replacement delay is given up (never the
        // primary's, and never the last in-sync one): the branch below places a new copy.
        const dead = record.nodes.filter((n) => n !== record.primary && !healthy.has(n) && now - this.#firstSeenUnhealthy(n, now) >= this.#replacementDelayMs)
        if (dead.length > 0) {
          // Each given-up node is listed until it has deleted its copy (see droppedNodes).
          const written = await this.#core.coordinator.put(entry.key, JSON.stringify({ ...record, nodes: record.nodes.filter((n) => !dead.includes(n)), inSync: record.inSync.filter((n) => !dead.includes(n)), ...givingUp(record, dead) }), { expectRevision: entry.revision })
          if (written !== undefined) this.#core.host.emit('replication:replica-removed', { volumeId, nodes: dead, reason: `unhealthy for more than ${Math.round(this.#replacementDelayMs / 1000)} s` })
          continue
        }
        if (record.nodes.length < record.spec.replicas) {
          const notHere = await excluded()
          const eligible = members.filter((m) => m.healthy && !notHere.has(m.id))
          let chosen: readonly string[] = []
          try {
            chosen = placeVolume(eligible, { ...(record.placement ?? {}), replicas: record.spec.replicas, current: record.nodes, preferredPrimary: record.primary, load }).nodes
          } catch (err) {
            if ((err as { code?: string })?.code !== 'NO_SPACE') throw err
          }
          const added = chosen.filter((n) => !record.nodes.includes(n)).slice(0, record.spec.replicas - record.nodes.length)
          if (added.length === 0) continue
          const written = await this.#core.coordinator.put(entry.key, JSON.stringify({ ...record, nodes: [...record.nodes, ...added] }), { expectRevision: entry.revision })
          if (written !== undefined) {
            for (const node of added) load[node] = (load[node] ?? 0) + 1
            this.#core.host.emit('replication:replica-added', { volumeId, nodes: added })
          }
        }
      }
    } catch (err) {
      this.#core.host.emit('replication:error', { volumeId: '', nodeId: this.#core.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `failover pass: ${(err as Error)?.message ?? String(err)}` })
    } finally {
      this.#leaderBusy = false
    }
  }

  /** When this leader first saw `node` unhealthy (now, if it had not). */
  #firstSeenUnhealthy (node: string, now: number): number {
    const since = this.#unhealthySince.get(node)
    if (since !== undefined) return since
    this.#unhealthySince.set(node, now)
    return now
  }
}
