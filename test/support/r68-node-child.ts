// Child of test/crash/replicated-change-crash.test.ts: one GalleonFS node in its own process, over
// the TCP transport, coordinated by a real etcd (as h70-node-child.ts, whose call protocol it
// shares). Besides GalleonFS methods it answers `digest` (sha256 of a volume's whole content) and
// `armKill`: the process kills itself with SIGKILL, synchronously inside the event listener, at
// a named point of a migration (see KILL_POINTS), so the point is hit exactly. Migration and
// replication events go to the parent as { event, payload }.
// argv: node id, storage path, etcd endpoint, etcd prefix, cluster secret.

import { createHash } from 'node:crypto'
import { EtcdCoordinator } from '../../backends/etcd/index.js'
import { TcpTransport } from '../../backends/tcp/index.js'
import { GalleonFS } from '../../src/index.js'
import { NOT_OWN, serveParentCalls } from './node-child-calls.js'

/** A migration progress event, as far as the kill points look at it. */
interface Progress { phase: string, blocksDone: number, blocksTotal: number }

/**
 * Where armKill can kill this node; `blocks`: the volume's blocks. A class change of a 2-copy
 * volume reports blocksTotal = 2 × blocks; a copy's own conversion (a local migration) about
 * `blocks`, and it alone reports the switch-over.
 */
export const KILL_POINTS = {
  /** The class change started here has written the cluster's record (its first progress). */
  recorded: (event: string, p: Progress, blocks: number) => event === 'volume:migration-progress' && p.phase === 'copy' && p.blocksTotal >= 2 * blocks,
  /** This node's copy converts: a local migration midway through its copy. */
  copying: (event: string, p: Progress, blocks: number) => event === 'volume:migration-progress' && p.phase === 'copy' && p.blocksDone > 0 && p.blocksDone < p.blocksTotal && p.blocksTotal < 2 * blocks,
  /** This node's copy converts: its local migration switches over (writes paused). */
  switchover: (event: string, p: Progress) => event === 'volume:migration-progress' && p.phase === 'switchover',
  /** Another node took the primary role of the volume from this one (a move hands it over). */
  demoted: (event: string) => event === 'replication:demoted',
  /** This node took the primary role up (a move's target). */
  promoted: (event: string) => event === 'replication:primary'
} as const

export type KillPoint = keyof typeof KILL_POINTS

async function main (): Promise<void> {
  const [nodeId, storagePath, endpoint, prefix, secret] = process.argv.slice(2) as [string, string, string, string, string]
  const coordinator = await EtcdCoordinator.connect({ endpoints: [endpoint], prefix, requestTimeoutMs: 1000 })
  const transport = new TcpTransport({ nodeId, clusterSecret: secret })
  const g = await GalleonFS.open({ storagePath, cluster: { nodeId, transport, coordinator, leaseTtlMs: 2000 } })
  let armed: { point: KillPoint, blocks: number } | undefined
  for (const event of ['volume:migration-progress', 'volume:migrated', 'replication:error', 'replication:primary', 'replication:demoted'] as const) {
    g.on(event, (...args: unknown[]) => {
      const payload = args[0]
      if (armed !== undefined && KILL_POINTS[armed.point](event, payload as Progress, armed.blocks)) {
        process.kill(process.pid, 'SIGKILL')
      }
      process.send?.({ event, payload })
    })
  }
  serveParentCalls(g, async (op, args) => {
    if (op === 'armKill') { armed = { point: args[0] as KillPoint, blocks: args[1] as number }; return null }
    if (op === 'digest') {
      const volume = await g.getVolume(args[0] as string)
      return createHash('sha256').update(await g.read(volume.name, 0, volume.sizeBytes)).digest('hex')
    }
    return NOT_OWN
  })
}

await main()
