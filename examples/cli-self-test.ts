// `galleonfs --test-replication`: a self-check of replication through the daemon's API.

import { call, CliError, type Globals } from './cli-client.js'

/**
 * `galleonfs --test-replication`: a short self-check of replication against the running cluster the
 * daemon at `daemonAddress` belongs to. It creates a scratch volume with a copy on up to three
 * nodes that can hold one (healthy, and speaking an inter-node protocol version the daemon's node
 * speaks; the others are named, with why), waits until they are in sync, writes with every concern
 * the cluster can meet, checks the data and the copies' lag, takes a snapshot through the primary
 * and checks that every copy acknowledged it (the API reads snapshots through the primary, so their
 * bytes on a copy are not read here), and deletes the volume. Prints each step; exit code 0 when
 * all pass, 1 otherwise, saying which step failed and what it found.
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
  interface Status { primary?: string, epoch?: number, nodes: string[], inSync: string[], links: Array<{ node: string, state: string, lagChanges: number, lastError?: string }> }
  interface Member { id: string, zone: string, healthy: boolean, protocol?: { version: number, oldest: number } }
  const getStatus = async (): Promise<Status> => await call(globals, 'GET', `${path}/replication`) as Status
  try {
    const cluster = await call(globals, 'GET', '/v1/cluster') as { clustering: boolean, nodeId?: string, members: Member[] }
    const healthy = cluster.members.filter((m) => m.healthy)
    // A copy goes only to a node that shares an inter-node protocol version with this daemon's
    // node (see placeVolume): a node of another release is named, not asked for a copy.
    const self = cluster.members.find((m) => m.id === cluster.nodeId)
    const range = (m: Member): { version: number, oldest: number } => m.protocol ?? { version: 1, oldest: 1 }
    const rangeText = (m: Member): string => range(m).oldest === range(m).version ? String(range(m).version) : `${range(m).oldest}-${range(m).version}`
    const speaks = (m: Member): boolean => self === undefined || Math.max(range(m).oldest, range(self).oldest) <= Math.min(range(m).version, range(self).version)
    const eligible = healthy.filter(speaks)
    for (const m of healthy.filter((n) => !speaks(n))) {
      const older = self !== undefined && range(m).version < range(self).oldest ? m.id : self?.id ?? 'this node'
      out(`# node ${m.id} is healthy but can hold no copy: it speaks inter-node protocol ${rangeText(m)} and ${self?.id ?? 'this node'} ${self === undefined ? '?' : rangeText(self)}, none in common (upgrade ${older})`)
    }
    const left = healthy.length > eligible.length ? `; ${healthy.length - eligible.length} more healthy but speaking another inter-node protocol` : ''
    check(cluster.clustering && eligible.length >= 2, `the daemon is in a cluster with at least 2 healthy nodes that can hold copies (${eligible.length}: ${eligible.map((m) => m.id).join(', ')}${left})`, cluster.clustering ? 'start more nodes' : 'the daemon is not in a cluster: start it with --etcd-endpoints, or `galleonfs cluster join`')
    const replicas = Math.min(3, eligible.length)
    await call(globals, 'POST', '/v1/volumes', { name, sizeBytes: 1 << 20, replicas })
    created = true
    let status = await getStatus()
    if (status.nodes.length < replicas) {
      // Placement gave fewer copies than there were nodes for: waiting would not bring them.
      const now = await call(globals, 'GET', '/v1/cluster') as { members: Member[] }
      const missing = eligible.filter((m) => !status.nodes.includes(m.id)).map((m) => `${m.id} (${now.members.find((n) => n.id === m.id)?.healthy === true ? 'healthy now' : 'not healthy now'})`)
      check(false, `the cluster placed ${status.nodes.length} of the ${replicas} copies asked for, on ${status.nodes.join(', ')}`, `no copy on ${missing.join(', ')}, healthy when the check began: a node that stopped, lost its lease or left meanwhile gets no copy; run it again once \`galleonfs cluster status\` shows the nodes healthy`)
    }
    for (let i = 0; i < 300 && status.inSync.length < replicas; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      status = await getStatus()
    }
    const behind = status.links.filter((l) => !status.inSync.includes(l.node)).map((l) => `${l.node}: ${l.state}${l.lastError === undefined ? '' : `, ${l.lastError}`}`)
    check(status.inSync.length === replicas, `a ${replicas}-copy volume is in sync on ${status.nodes.join(', ')} (primary ${status.primary ?? '?'}, epoch ${status.epoch ?? '?'})`, `after 30 s in sync: ${status.inSync.join(', ')}; not in sync: ${behind.join('; ') || 'none'}`)
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
    // The snapshot is a change in each copy's stream: a copy that acknowledged every change has it.
    status = await getStatus()
    for (let i = 0; i < 100 && status.links.some((l) => l.lagChanges > 0); i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      status = await getStatus()
    }
    check(snapshots.some((s) => s.name === 'self-test') && status.links.length === replicas - 1 && status.links.every((l) => l.lagChanges === 0), `a snapshot taken through the primary reached every copy (acknowledged by ${status.links.map((l) => `${l.node}: lag ${l.lagChanges}`).join(', ')})`, snapshots.some((s) => s.name === 'self-test') ? 'not every copy acknowledged it within 10 s' : 'the primary does not list it')
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
