// Nodes in child processes (r68-node-child.ts) for test/crash/replicated-change-crash.test.ts: a
// node is started on a storage path, called over IPC, its events kept, killed with SIGKILL and
// started again on the same path. Every child still running is killed by `stopAll`.

import type { ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { childExit } from './child-script.js'
import { spawnNodeChild } from './node-child-calls.js'
import type { KillPoint } from './r68-node-child.js'
import { until } from './wait.js'

const CHILD = fileURLToPath(new URL('./r68-node-child.ts', import.meta.url))

/** A node in a child process. */
export interface ProcNode {
  readonly id: string
  readonly child: ChildProcess
  /** Calls a GalleonFS method there (or digest, armKill); rejects with { code, message } as the node answered. */
  call: (op: string, ...args: unknown[]) => Promise<unknown>
  /** The events the node sent, oldest first: `${event} ${JSON payload}`. */
  readonly events: string[]
  /** Kills the node at `point` of a migration (see KILL_POINTS) of a volume of `blocks` blocks. */
  armKill: (point: KillPoint, blocks: number) => Promise<void>
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>
}

/** Starts and tracks node processes of one cluster (etcd at `endpoint`, keys under `prefix`), data under `root`. */
export function procCluster (root: string, endpoint: string, prefix: string): { start: (id: string) => Promise<ProcNode>, stopAll: () => Promise<void> } {
  const children = new Set<ChildProcess>()
  const start = async (id: string): Promise<ProcNode> => {
    const events: string[] = []
    let exited: Promise<void> = Promise.resolve()
    const { child, call } = await spawnNodeChild(CHILD, [id, join(root, id), endpoint, prefix, 'r68-cluster-secret'], id, {
      onSpawn: (spawned) => {
        children.add(spawned)
        exited = childExit(spawned).then(() => { children.delete(spawned) })
      },
      onEvent: (event, payload) => { events.push(`${event} ${JSON.stringify(payload)}`) }
    })
    return { id, child, call, events, exited, armKill: async (point, blocks) => { await call('armKill', point, blocks) } }
  }
  const stopAll = async (): Promise<void> => {
    const running = [...children]
    for (const child of running) child.kill('SIGKILL')
    await Promise.all(running.map(async (child) => await childExit(child)))
  }
  return { start, stopAll }
}

/** Waits until one of `nodes` is volume v's primary with at least `min` copies in sync (and, when `whole`, every one its record lists); returns it. */
export async function servedBy (nodes: ProcNode[], min: number, what: string, whole = true): Promise<ProcNode> {
  let primary: ProcNode | undefined
  await until(what, async () => {
    for (const node of nodes) {
      const status = await node.call('replicationStatus', 'v').catch(() => undefined) as { role?: string, inSync?: string[], nodes?: string[] } | undefined
      if (status?.role === 'primary' && (status.inSync?.length ?? 0) >= min && (!whole || status.inSync?.length === status.nodes?.length)) { primary = node; return true }
    }
    return false
  }, 90_000, 100)
  return primary as ProcNode
}
