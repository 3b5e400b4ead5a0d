// The CLI's commands for what volumes are provisioned by and against: storage classes, QoS
// policies and storage pools.

import { Command, InvalidArgumentError } from 'commander'
import { formatSize } from '../src/size.js'
import { call, UsageError, type Globals } from './cli-client.js'
import { columns, commaList, definitionIn, keyValues, policyFromFile, policyFromFlags, print, readDefinitionFile, sizeOption } from './cli-format.js'

/** A pool's overcommit ratio: a number of at least 1. */
function overcommit (v: string): number {
  const n = Number(v)
  if (v.trim() === '' || !Number.isFinite(n) || n < 1) throw new InvalidArgumentError('a number of at least 1')
  return n
}

/** Adds `storage-class`, `qos` and `pool` to the command tree; `globals` reads the global options. */
export function addResourceCommands (program: Command, globals: () => Globals): void {
  const storageClass = program.command('storage-class').description('storage classes')
  storageClass.command('create').argument('<file>', 'a JSON or YAML definition').description('create a storage class from a file').action(async (file: string) => {
    const definition = await readDefinitionFile(file)
    const created = await call(globals(), 'POST', '/v1/storage-classes', definitionIn(file, definition, 'a storage class (name, parameters, ...)')) as { name: string }
    print(globals(), created, () => `created storage class ${created.name}\n`)
  })
  storageClass.command('delete').argument('<name>').description('delete a storage class of your own that no volume uses').action(async (name: string) => {
    await call(globals(), 'DELETE', `/v1/storage-classes/${encodeURIComponent(name)}`)
    print(globals(), { deleted: name }, () => `deleted storage class ${name}\n`)
  })
  storageClass.command('list').description('list storage classes').action(async () => {
    const list = await call(globals(), 'GET', '/v1/storage-classes') as Array<{ name: string, reclaimPolicy: string, parameters: Record<string, string>, builtIn: boolean }>
    print(globals(), list, () => columns(['NAME', 'RECLAIM', 'ENCRYPTION', 'BUILT-IN'], list.map((c) => [c.name, c.reclaimPolicy, c.parameters.encryption ?? 'false', String(c.builtIn)])))
  })

  const qos = program.command('qos').description('QoS policies of volumes: limits, guarantees, bursting')
  const positive = (v: string): number => {
    const n = Number(v)
    if (v.trim() === '' || !Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('a number above 0')
    return n
  }
  // A burst's peak is a multiple of the limit from 1 to 100 (below 1 it would be a lower ceiling).
  const multiple = (v: string): number => {
    const n = Number(v)
    if (v.trim() === '' || !Number.isFinite(n) || n < 1 || n > 100) throw new InvalidArgumentError('a number from 1 to 100')
    return n
  }
  qos.command('set').argument('<volume>').description('set a volume\'s own QoS policy (replaces the whole policy; its storage class\'s applies again after `qos clear`)')
    .option('-f, --file <file>', 'the policy as a JSON or YAML file (limits, guarantees, burstable, weight)')
    .option('--limit-iops <n>', 'IOPS ceiling, reads and writes together', positive)
    .option('--limit-read-iops <n>', 'read IOPS ceiling', positive)
    .option('--limit-write-iops <n>', 'write IOPS ceiling', positive)
    .option('--limit-mbps <n>', 'throughput ceiling in MB/s', positive)
    .option('--limit-read-mbps <n>', 'read throughput ceiling in MB/s', positive)
    .option('--limit-write-mbps <n>', 'write throughput ceiling in MB/s', positive)
    .option('--latency-ms <n>', 'latency target in milliseconds', positive)
    .option('--guarantee-iops <n>', 'IOPS floor under contention', positive)
    .option('--guarantee-mbps <n>', 'throughput floor in MB/s under contention', positive)
    .option('--burst-seconds <n>', 'how long full burst credits last at the full multiplier', positive)
    .option('--burst-iops-multiplier <n>', 'peak IOPS as a multiple of the limit (1 to 100)', multiple)
    .option('--burst-mbps-multiplier <n>', 'peak throughput as a multiple of the limit (1 to 100)', multiple)
    .option('--weight <n>', 'share of spare I/O relative to other volumes (default 1)', positive)
    .action(async (ref: string, options: Record<string, number | string | undefined>) => {
      const policy = options.file === undefined ? policyFromFlags(options) : await policyFromFile(String(options.file), options)
      const result = await call(globals(), 'PUT', `/v1/volumes/${encodeURIComponent(ref)}/qos`, policy) as { policy?: unknown, source: string }
      print(globals(), result, () => `QoS policy of ${ref} set: ${JSON.stringify(result.policy)}\n`)
    })
  qos.command('get').argument('<volume>').description('show the QoS policy in force for a volume and how it is doing').action(async (ref: string) => {
    interface QoSView { policy?: unknown, source: string, metrics?: { throttledSeconds: number, throttledOps: number, throttledQueue: number, dispatchQueue: number, burstCredits?: { iops?: number, throughputMB?: number }, guarantee?: { achievedIops: number, met: boolean }, latencyTargetMet?: boolean } }
    const view = await call(globals(), 'GET', `/v1/volumes/${encodeURIComponent(ref)}/qos`) as QoSView
    print(globals(), view, () => {
      if (view.policy === undefined) return `volume ${ref} has no QoS policy (neither its own nor from its storage class)\n`
      const m = view.metrics
      const rows: string[][] = [['policy', JSON.stringify(view.policy)], ['from', view.source]]
      if (m !== undefined) {
        rows.push(['throttled', `${m.throttledOps} operations, ${m.throttledSeconds.toFixed(3)} s in all; ${m.throttledQueue} waiting now`], ['dispatcher queue', String(m.dispatchQueue)])
        if (m.burstCredits !== undefined) rows.push(['burst credits', JSON.stringify(m.burstCredits)])
        if (m.guarantee !== undefined) rows.push(['guarantee', `${m.guarantee.met ? 'met' : 'MISSED'} (last second ${m.guarantee.achievedIops.toFixed(0)} IOPS)`])
        if (m.latencyTargetMet !== undefined) rows.push(['latency target', m.latencyTargetMet ? 'met' : 'MISSED'])
      }
      return columns(['FIELD', 'VALUE'], rows)
    })
  })
  qos.command('clear').argument('<volume>').description('remove a volume\'s own QoS policy (its storage class\'s applies again)').action(async (ref: string) => {
    const result = await call(globals(), 'DELETE', `/v1/volumes/${encodeURIComponent(ref)}/qos`) as { policy?: unknown, source: string }
    print(globals(), result, () => `QoS policy of ${ref} cleared; in force now: ${result.policy === undefined ? 'none' : `${JSON.stringify(result.policy)} (from its ${result.source})`}\n`)
  })

  const pool = program.command('pool').description('storage pools: capacities that volumes are provisioned against')
  interface PoolView { name: string, capacityBytes: number, overcommitRatio: number, limitBytes: number, provisionedBytes: number, allocatedBytes: number, freeBytes: number, volumes: number, nodes: string[], nodeSelector: { labels: Record<string, string>, zones: string[] }, description: string }
  const poolRow = (p: PoolView): string[] => [p.name, formatSize(p.capacityBytes), String(p.overcommitRatio), formatSize(p.provisionedBytes), formatSize(p.allocatedBytes), formatSize(p.freeBytes), String(p.volumes), p.nodes.length === 0 ? '*' : p.nodes.join(',')]
  const poolHeaders = ['NAME', 'CAPACITY', 'OVERCOMMIT', 'PROVISIONED', 'ALLOCATED', 'FREE', 'VOLUMES', 'NODES']
  pool.command('list').description('list storage pools with their capacity and use').action(async () => {
    const pools = await call(globals(), 'GET', '/v1/pools') as PoolView[]
    print(globals(), pools, () => columns(poolHeaders, pools.map(poolRow)))
  })
  pool.command('get').argument('<name>').description('show a storage pool').action(async (name: string) => {
    const found = await call(globals(), 'GET', `/v1/pools/${encodeURIComponent(name)}`) as PoolView
    print(globals(), found, () => columns(['FIELD', 'VALUE'], Object.entries(found).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : String(v)])))
  })
  pool.command('create').argument('<name>').description('create a storage pool')
    .requiredOption('-s, --capacity <size>', 'capacity with suffix K/M/G/T/P', sizeOption)
    .option('--overcommit <ratio>', 'how far provisioned sizes may exceed the capacity (thin provisioning; default 1)', overcommit)
    .option('--nodes <ids>', 'comma-separated cluster node ids the pool\'s volumes may be placed on')
    .option('--node-labels <labels>', 'comma-separated key=value labels a node needs')
    .option('--zones <zones>', 'comma-separated zones a node must be in')
    .option('--description <text>', 'free text')
    .option('--labels <labels>', 'comma-separated key=value labels of the pool')
    .action(async (name: string, options: { capacity: number, overcommit?: number, nodes?: string, nodeLabels?: string, zones?: string, description?: string, labels?: string }) => {
      const selector = {
        ...(options.nodeLabels === undefined ? {} : { labels: keyValues(options.nodeLabels, '--node-labels') }),
        ...(options.zones === undefined ? {} : { zones: commaList(options.zones) })
      }
      const created = await call(globals(), 'POST', '/v1/pools', {
        name,
        capacityBytes: options.capacity,
        ...(options.overcommit === undefined ? {} : { overcommitRatio: options.overcommit }),
        ...(options.nodes === undefined ? {} : { nodes: commaList(options.nodes) }),
        ...(Object.keys(selector).length === 0 ? {} : { nodeSelector: selector }),
        ...(options.description === undefined ? {} : { description: options.description }),
        ...(options.labels === undefined ? {} : { labels: keyValues(options.labels, '--labels') })
      }) as PoolView
      print(globals(), created, () => `created storage pool ${created.name}: ${formatSize(created.capacityBytes)}${created.overcommitRatio === 1 ? '' : ` (up to ${formatSize(created.limitBytes)} provisioned)`}\n`)
    })
  pool.command('update').argument('<name>').description('resize a storage pool or change its description (not below what its volumes provision)')
    .option('-s, --capacity <size>', 'new capacity with suffix K/M/G/T/P', sizeOption)
    .option('--overcommit <ratio>', 'new overcommit ratio (at least 1)', overcommit)
    .option('--description <text>', 'new description')
    .action(async (name: string, options: { capacity?: number, overcommit?: number, description?: string }) => {
      const changes = {
        ...(options.capacity === undefined ? {} : { capacityBytes: options.capacity }),
        ...(options.overcommit === undefined ? {} : { overcommitRatio: options.overcommit }),
        ...(options.description === undefined ? {} : { description: options.description })
      }
      if (Object.keys(changes).length === 0) throw new UsageError('pool update needs --capacity, --overcommit or --description')
      const updated = await call(globals(), 'PATCH', `/v1/pools/${encodeURIComponent(name)}`, changes) as PoolView
      print(globals(), updated, () => `storage pool ${updated.name}: ${formatSize(updated.capacityBytes)}, up to ${formatSize(updated.limitBytes)} provisioned, ${formatSize(updated.freeBytes)} free\n`)
    })
  pool.command('delete').argument('<name>').description('delete a storage pool no volume or storage class uses').action(async (name: string) => {
    await call(globals(), 'DELETE', `/v1/pools/${encodeURIComponent(name)}`)
    print(globals(), { deleted: name }, () => `deleted storage pool ${name}\n`)
  })
}
