// QoS policies of the facade's volumes: the policy in force (the volume's own or its storage
// class's), handing it to the I/O path's scheduler, and setting or clearing a volume's own.

import { GalleonError } from '../errors.js'
import { isEmptyPolicy, qosFromParameters, type QoSPolicy, type QoSPolicySource } from '../qos/policy.js'
import { VolumeState } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { withoutQoS } from './records.js'
import type { VolumeRef } from './refs.js'

/** The QoS policy in force for a volume and where it comes from. */
export function effectiveQoS (host: FacadeHost, record: VolumeRecord): { policy?: QoSPolicy, source: QoSPolicySource } {
  if (record.qos !== undefined) return { policy: structuredClone(record.qos), source: 'volume' }
  const storageClass = host.catalog.storageClass(record.storageClass)
  const fromClass = storageClass === undefined ? undefined : qosFromParameters(storageClass.parameters)
  return fromClass === undefined ? { source: 'none' } : { policy: fromClass, source: 'storage-class' }
}

/** Hands a volume's policy in force to the I/O path; returns it. */
export function applyQoS (host: FacadeHost, record: VolumeRecord): { policy?: QoSPolicy, source: QoSPolicySource } {
  const effective = effectiveQoS(host, record)
  host.qos.setPolicy(record.id, record.name, isEmptyPolicy(effective.policy) ? undefined : effective.policy, effective.source)
  return effective
}

/** The work of GalleonFS.setQoSPolicy (in the admin queue, once the caller is checked); `undefined` removes the volume's own policy. */
export async function setVolumeQoS (host: FacadeHost, vol: VolumeRef, parsed: QoSPolicy | undefined): Promise<{ policy?: QoSPolicy, source: QoSPolicySource }> {
  const record = host.catalog.resolve(vol)
  if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
  if (record.replication !== undefined) {
    // Recorded in the cluster's record of the volume, which every node holding a copy applies.
    const replication = host.replication
    if (replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${record.name} is replicated, but this instance is not in a cluster now; join it to change the volume's QoS policy`)
    await replication.update(record.id, (r) => ({ ...r, spec: { ...withoutQoS(r.spec), ...(parsed === undefined ? {} : { qos: parsed }) } }))
  }
  const updated = await host.catalog.updateVolume(record.id, { qos: parsed })
  const effective = applyQoS(host, updated)
  host.emit('qos:policy-changed', { volumeId: record.id, volumeName: record.name, ...effective })
  return effective
}
