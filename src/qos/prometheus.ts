// Prometheus families of the QoS stage: throttling, queues, burst credits, guarantees and latency targets per volume.

import type { QoSMetrics } from './scheduler.js'

type Family = [name: string, type: 'gauge' | 'counter', help: string, value: (m: QoSMetrics) => number | undefined]

const FAMILIES: readonly Family[] = [
  ['galleonfs_qos_throttled_seconds_total', 'counter', 'Seconds operations waited for the volume\'s own QoS limits.', (m) => m.throttledSeconds],
  ['galleonfs_qos_throttled_operations_total', 'counter', 'Operations that waited for the volume\'s own QoS limits.', (m) => m.throttledOps],
  ['galleonfs_qos_limit_queue', 'gauge', 'Operations waiting for the volume\'s QoS limits now.', (m) => m.throttledQueue],
  ['galleonfs_qos_dispatch_queue', 'gauge', 'Operations of the volume waiting for the node\'s QoS dispatcher now.', (m) => m.dispatchQueue],
  ['galleonfs_qos_burst_credits_operations', 'gauge', 'Burst credits of the IOPS limit held now, in operations.', (m) => m.burstCredits?.iops],
  // In bytes, the base unit (a name ending in _megabytes is one Prometheus' linter refuses).
  ['galleonfs_qos_burst_credits_bytes', 'gauge', 'Burst credits of the throughput limit held now, in bytes.', (m) => m.burstCredits?.throughputMB === undefined ? undefined : Math.round(m.burstCredits.throughputMB * 1e6)],
  ['galleonfs_qos_guarantee_iops', 'gauge', 'The IOPS floor of the volume\'s QoS policy.', (m) => m.guarantee?.iops],
  ['galleonfs_qos_achieved_iops', 'gauge', 'IOPS the dispatcher served the guaranteed volume over the last interval it judged: a second while operations queue, else the time since metrics were last read.', (m) => m.guarantee?.achievedIops],
  ['galleonfs_qos_guarantee_met', 'gauge', '1 when the last interval judged met the volume\'s QoS floor (or it did not need it), 0 when not.', (m) => m.guarantee === undefined ? undefined : m.guarantee.met ? 1 : 0],
  ['galleonfs_qos_guarantee_missed_seconds_total', 'counter', 'Seconds the volume had work queued and got less than its QoS floor.', (m) => m.guarantee?.missedSeconds],
  ['galleonfs_qos_latency_target_seconds', 'gauge', 'The latency target of the volume\'s QoS policy.', (m) => m.latencyTargetMs === undefined ? undefined : m.latencyTargetMs / 1000],
  ['galleonfs_qos_latency_p99_seconds', 'gauge', '99th-percentile latency over the metrics window as callers see it, QoS waits included (volumes with a latency target).', (m) => m.latencyP99Ms === undefined ? undefined : m.latencyP99Ms / 1000],
  ['galleonfs_qos_latency_target_met', 'gauge', '1 when the window\'s 99th-percentile latency is within the volume\'s target, 0 when not.', (m) => m.latencyTargetMet === undefined ? undefined : m.latencyTargetMet ? 1 : 0]
]

/** The QoS families for volumes with a policy, in the text exposition format. */
export function renderQoSMetrics (volumes: ReadonlyArray<{ id: string, name: string, namespace?: string, qos: QoSMetrics }>): string {
  const withPolicy = volumes.filter((v) => v.qos.policy !== undefined)
  const lines: string[] = []
  for (const [name, type, help, value] of FAMILIES) {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const volume of withPolicy) {
      const v = value(volume.qos)
      if (v !== undefined) lines.push(`${name}{volume_id="${label(volume.id)}",volume_name="${label(volume.name)}"${volume.namespace === undefined ? '' : `,namespace="${label(volume.namespace)}"`}} ${Number.isFinite(v) ? v : 0}`)
    }
  }
  return lines.join('\n') + '\n'
}

function label (value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}
