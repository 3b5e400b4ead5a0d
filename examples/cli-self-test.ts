// `galleonfs --test-replication`: a self-check of replication through the daemon's API.

import { call, CliError, type Globals } from './cli-client.js'

/**
 * `galleonfs --test-replication`: a short self-check of replication against the running cluster the
 * daemon at `daemonAddress` belongs to. It creates a scratch volume with a copy on up to three
 * nodes, waits until they are in sync, writes with every concern the cluster can meet, checks the
 * data and the copies' lag, replicates a snapshot, and deletes the volume. Prints each step; exit
 * code 0 when all pass, 1 otherwise.
 */
export async function runReplicationSelfTest (options: { daemonAddress: string, daemonCaFile?: string, token?: string }): Promise<number> {
  const globals: Globals = { daemonAddress: options.daemonAddress, ...(options.daemonCaFile === undefined ? {} : { daemonCaFile: options.daemonCaFile }), ...(options.token === undefined ? {} : { token: options.token }) }
  const out = (line: string): void => { process.stdout.write(line + '\n') }
  const name = `replication-self-test-${Date.now().toString(36)}`
  const path = `/v1/volumes/${encodeURIComponent(name)}`
  let created = false
  let step = 0
  const check = (ok: boolean, what: string, why = ''): void => {
    step++
    if (!ok) throw new CliError(`step ${step} failed: ${what}${why === '' ? '' : ` (${why})`}`)
    out(`ok ${step} - ${what}`)
  }
  interface Status { primary?: string, epoch?: number, nodes: string[], inSync: string[], links: Array<{ node: string, lagChanges: number }> }
  try {
    const cluster = await call(globals, 'GET', '/v1/cluster') as { clustering: boolean, members: Array<{ id: string, zone: string, healthy: boolean }> }
    const healthy = cluster.members.filter((m) => m.healthy)
    check(cluster.clustering && healthy.length >= 2, `the daemon is in a cluster with at least 2 healthy nodes (${healthy.length}: ${healthy.map((m) => m.id).join(', ')})`, cluster.clustering ? 'start more nodes' : 'the daemon is not in a cluster: start it with --etcd-endpoints, or `galleonfs cluster join`')
    const replicas = Math.min(3, healthy.length)
    await call(globals, 'POST', '/v1/volumes', { name, sizeBytes: 1 << 20, replicas })
    created = true
    let status = await call(globals, 'GET', `${path}/replication`) as Status
    for (let i = 0; i < 300 && status.inSync.length < replicas; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      status = await call(globals, 'GET', `${path}/replication`) as Status
    }
    check(status.inSync.length === replicas, `a ${replicas}-copy volume is in sync on ${status.nodes.join(', ')} (primary ${status.primary ?? '?'}, epoch ${status.epoch ?? '?'})`, `in sync: ${status.inSync.join(', ')}`)
    const zones = new Set(cluster.members.filter((m) => status.nodes.includes(m.id)).map((m) => m.zone))
    const concerns = ['WriteAcknowledged', 'WriteDurable', 'WriteReplicated', ...(zones.size >= 2 ? ['WriteDistributed'] : [])]
    const blocks = concerns.map((_, i) => Buffer.alloc(4096, 0x41 + i))
    for (const [i, concern] of concerns.entries()) await call(globals, 'POST', `${path}/write`, { offset: i * 4096, data: blocks[i]?.toString('base64'), concern })
    const read = Buffer.from((await call(globals, 'POST', `${path}/read`, { offset: 0, length: concerns.length * 4096 }) as { data: string }).data, 'base64')
    check(read.equals(Buffer.concat(blocks)), `writes with ${concerns.join(', ')} read back${zones.size < 2 ? ' (WriteDistributed skipped: the copies are in one zone)' : ''}`)
    await call(globals, 'POST', `${path}/flush`)
    status = await call(globals, 'GET', `${path}/replication`) as Status
    for (let i = 0; i < 100 && status.links.some((l) => l.lagChanges > 0); i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      status = await call(globals, 'GET', `${path}/replication`) as Status
    }
    check(status.links.length === replicas - 1 && status.links.every((l) => l.lagChanges === 0), `every copy has every change (lag ${status.links.map((l) => `${l.node}: ${l.lagChanges}`).join(', ')})`)
    await call(globals, 'POST', `${path}/snapshots`, { name: 'self-test' })
    const snapshots = await call(globals, 'GET', `${path}/snapshots`) as Array<{ name: string }>
    check(snapshots.some((s) => s.name === 'self-test'), 'a snapshot is taken through the primary')
  } catch (err) {
    process.stderr.write(`galleonfs: replication self-test: ${(err as Error).message}\n`)
    if (created) await call(globals, 'DELETE', `${path}?force=true`).catch(() => undefined)
    return 1
  }
  await call(globals, 'DELETE', `${path}?force=true`)
  out(`ok ${step + 1} - the scratch volume ${name} is deleted`)
  out('replication self-test passed')
  return 0
}
