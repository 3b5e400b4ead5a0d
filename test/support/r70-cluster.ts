// Review r70: GalleonFS nodes in child processes (test/support/r70-node-child.ts) over TCP with a
// real etcd, which a test kills with SIGKILL, stops with SIGSTOP and restarts on the same disk;
// and a model of a volume's blocks (live and in each snapshot) to check every copy against.

import { after, before } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../../src/index.js'
import { childExit } from './child-script.js'
import { spawnNodeChild } from './node-child-calls.js'
import { startEtcd, type EtcdServer } from './etcd.js'
import { BS, mismatches } from './r70-blocks.js'
import { until } from './wait.js'

const CHILD = fileURLToPath(new URL('./r70-node-child.ts', import.meta.url))

/** A node in a child process; `call` runs a GalleonFS method (or a child helper) there. */
export interface ChildNode {
  readonly id: string
  readonly dir: string
  readonly child: ChildProcess
  call: <T = unknown>(op: string, ...args: unknown[]) => Promise<T>
}

/** What replicationStatus says (the fields the tests read). */
export interface Status {
  role: string
  primary?: string
  epoch?: number
  nodes: string[]
  inSync: string[]
  links: Array<{ node: string, state: string, resyncs: number, resync?: { mode: string, blocksDone: number, blocksTotal: number } }>
}

/** A volume's blocks as the test wrote them: the version of each block, live and in each snapshot. */
export class Model {
  live: number[]
  readonly snapshots = new Map<string, number[]>()
  #version = 0
  constructor (readonly blocks: number) { this.live = new Array<number>(blocks).fill(0) }
  /** The next version, for a write of blocks first .. first+count-1 (applied by `wrote`). */
  next (): number { return ++this.#version }
  wrote (first: number, count: number, version: number): void { for (let i = first; i < first + count; i++) this.live[i] = version }
  snapshot (name: string): void { this.snapshots.set(name, [...this.live]) }
  revert (name: string): void { this.live = [...(this.snapshots.get(name) as number[])] }
  /** Every version written so far (to name what a wrong block holds). */
  versions (): number[] { return Array.from({ length: this.#version }, (_, i) => i + 1) }
  clone (): Model {
    const copy = new Model(this.blocks)
    copy.live = [...this.live]
    for (const [name, view] of this.snapshots) copy.snapshots.set(name, [...view])
    copy.#version = this.#version
    return copy
  }
}

/**
 * Nodes for one test file: one etcd (its client URL from `endpoint()`), temp directories, every
 * child killed and removed after. `script`: the child to run (another with r70-node-child.ts's
 * arguments and call protocol).
 */
export function childCluster (script = CHILD): {
  start: (id: string, prefix: string, dir?: string) => Promise<ChildNode>
  kill: (node: ChildNode, signal?: NodeJS.Signals) => Promise<void>
  endpoint: () => string
} {
  let root: string | undefined
  let etcd: EtcdServer | undefined
  const children = new Set<ChildProcess>()
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'galleon-r70-'))
    etcd = await startEtcd()
  })
  after(async () => {
    for (const child of children) {
      child.kill('SIGCONT')
      child.kill('SIGKILL')
    }
    await Promise.all([...children].map(async (child) => await childExit(child)))
    await etcd?.stop()
    if (root !== undefined) await rm(root, { recursive: true, force: true })
  })
  const start = async (id: string, prefix: string, dir?: string): Promise<ChildNode> => {
    const storage = dir ?? join(root as string, `${prefix}-${id}`)
    const { child, call } = await spawnNodeChild(script, [id, storage, (etcd as EtcdServer).endpoint, `/${prefix}`, 'r70-cluster-secret'], id, {
      onSpawn: (spawned) => {
        children.add(spawned)
        spawned.once('exit', () => { children.delete(spawned) })
      }
    })
    return { id, dir: storage, child, call }
  }
  const kill = async (node: ChildNode, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    const exited = childExit(node.child)
    node.child.kill(signal)
    await exited
  }
  return { start, kill, endpoint: () => (etcd as EtcdServer).endpoint }
}

/** Waits until every node sees `count` healthy members. */
export async function allMembers (nodes: ChildNode[], count: number): Promise<void> {
  await until(`every node sees ${count} healthy members`, async () => (await Promise.all(nodes.map(async (n) => await n.call<number>('healthyMembers')))).every((c) => c === count), 60_000, 50)
}

/** Waits until `node` is the volume's primary with `inSync` (sorted) in sync and every link streaming. */
export async function inSync (node: ChildNode, volume: string, expected: string[]): Promise<Status> {
  let last: Status | undefined
  try {
    await until(`${node.id} is the primary of ${volume} with ${expected.join(', ')} in sync (their links streaming)`, async () => {
      last = await node.call<Status>('replicationStatus', volume).catch(() => undefined)
      return last?.role === 'primary' && [...last.inSync].sort().join() === [...expected].sort().join() && last.links.filter((l) => expected.includes(l.node)).every((l) => l.state === 'streaming')
    }, 90_000, 50)
  } catch (err) {
    throw new Error(`${(err as Error).message}; last status ${JSON.stringify(last)}`)
  }
  return last as Status
}

/** Checks the volume as `node` serves it (live and every snapshot) against `model`. */
export async function checkServed (node: ChildNode, volume: string, model: Model, context: string): Promise<void> {
  assert.deepEqual(await node.call<string[]>('snapshotNames', volume), [...model.snapshots.keys()].sort(), `${context}: the snapshots ${node.id} lists`)
  const views: Array<[string, string | { volume: string, snapshot: string }, number[]]> = [['live', volume, model.live], ...[...model.snapshots].map(([name, versions]) => [name, { volume, snapshot: name }, versions] as [string, { volume: string, snapshot: string }, number[]])]
  for (const [name, view, versions] of views) {
    const found = await node.call<{ count: number, first: unknown[] }>('checkView', view, versions, model.versions())
    assert.equal(found.count, 0, `${context}: ${name} served by ${node.id} differs from the model in ${found.count} blocks, e.g. ${JSON.stringify(found.first)}`)
  }
}

/** Checks each node's own copy, its storage opened alone in this process (the nodes are stopped). */
export async function checkCopiesAlone (dirs: Array<[string, string]>, volume: string, model: Model, context: string): Promise<void> {
  for (const [id, dir] of dirs) {
    const g = await GalleonFS.open({ storagePath: dir })
    try {
      assert.deepEqual((await g.listSnapshots(volume)).map((s) => s.name).sort(), [...model.snapshots.keys()].sort(), `${context}: the snapshots of the copy on ${id}`)
      const views: Array<[string, string | { volume: string, snapshot: string }, number[]]> = [['live', volume, model.live], ...[...model.snapshots].map(([name, versions]) => [name, { volume, snapshot: name }, versions] as [string, { volume: string, snapshot: string }, number[]])]
      for (const [name, view, versions] of views) {
        const found = mismatches(await g.read(view, 0, model.blocks * BS), versions, model.versions())
        assert.equal(found.count, 0, `${context}: ${name} of the copy on ${id} differs from the model in ${found.count} blocks, e.g. ${JSON.stringify(found.first)}`)
      }
    } finally {
      await g.close()
    }
  }
}
