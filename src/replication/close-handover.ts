// A clean close hands the primary roles this node holds to in-sync copies first (as a rolling
// restart wants: Ceph's noout, Longhorn's drain), so that the volumes are served on at once by
// another node instead of waiting for this node's lease to lapse and the leader to fail them over.

import { incompatibility } from '../cluster/protocol.js'
import { errorCode } from '../errors.js'
import { errorText, type ManagerCore } from './common.js'
import { leavingNodes } from './replica-sets.js'

/**
 * How long after a hand-over starts the copies that have every change are enough (see
 * Primary.handOver): an in-sync copy normally has them within milliseconds; one that has not by
 * then is on its way out of the in-sync list (its node went away) and is resynced instead.
 */
const SETTLE_MS = 1000

/**
 * Hands each primary role this node holds to an in-sync copy that can serve it (its node healthy,
 * not closed, not leaving, speaking this node's protocol), once that copy has every change made
 * here, acknowledged or not: no write is lost, and the copies that have them all stay in sync. A
 * volume with no such copy keeps its primary record (it is served again when this node comes back,
 * or failed over once its lease lapses). Within one lease time in all: past that, failover would
 * have been no slower. Failures are reported (`replication:error`), never thrown: the close goes on.
 */
export async function handOverAtClose (core: ManagerCore): Promise<void> {
  const self = core.nodeId
  const deadline = performance.now() + core.cluster.leaseTtlMs
  let closed: ReadonlySet<string>
  let leaving: ReadonlySet<string>
  try {
    [closed, leaving] = await Promise.all([core.cluster.closedMembers(), leavingNodes(core.coordinator)])
  } catch (err) {
    core.host.emit('replication:error', { volumeId: '', nodeId: self, code: errorCode(err), message: `closing: the primary roles of this node were not handed over (the coordinator did not answer: ${errorText(err)}); its volumes fail over once its lease lapses` })
    return
  }
  const eligible = (node: string): boolean => {
    const member = core.cluster.members.find((m) => m.id === node)
    return node !== self && member?.healthy === true && !closed.has(node) && !leaving.has(node) && incompatibility(member) === undefined
  }
  for (const set of [...core.sets.values()]) {
    const primary = set.primary
    const record = primary?.setRecord
    // A 1-copy volume with a second copy is moving, whose new copy may lack writes (as failover.ts).
    if (primary === undefined || record === undefined || primary.stopped || primary.frozen || set.fenced || record.spec.replicas <= 1) continue
    if (!record.inSync.some(eligible)) continue
    if (performance.now() >= deadline) {
      core.host.emit('replication:error', { volumeId: set.volumeId, nodeId: self, code: 'BUSY', message: `closing: no time was left to hand the primary role of volume ${record.spec.name} over; it fails over once this node's lease lapses` })
      continue
    }
    try {
      await primary.handOver({ eligible, settleAt: Math.min(deadline, performance.now() + SETTLE_MS), deadline })
    } catch (err) {
      core.host.emit('replication:error', { volumeId: set.volumeId, nodeId: self, code: errorCode(err), message: `closing: the primary role of volume ${record.spec.name} was not handed over (${errorText(err)}); it fails over once this node's lease lapses` })
    }
  }
}
