// `galleonfs <command>`: the CLI, a thin client of the daemon's HTTP/JSON API. Exit codes: 0 done,
// 1 the operation failed (the daemon said no, or is not running), 2 the command line is wrong.

import { readFileSync } from 'node:fs'
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander'
import { formatSize } from '../src/size.js'
import type { ForgottenNode } from '../src/index.js'
import { ANSWER_TIMEOUT_SECONDS, MAX_WAIT_SECONDS, call, callLong, CliError, daemonEndpoint, NoAnswer, noAnswerInTime, UsageError, type Globals } from './cli-client.js'
import { ConfigError, parseAddress } from './daemon-config.js'
import { absolute, columns, print, sizeText, type VolumeView } from './cli-format.js'
import { addAuditCommands } from './cli-audit.js'
import { addBackupCommands } from './cli-backup.js'
import { addResourceCommands } from './cli-resources.js'

export { runReplicationSelfTest } from './cli-self-test.js'

/** This package's version (from its package.json, one or two levels up from the running file). */
const VERSION = (() => {
  for (const up of ['../package.json', '../../package.json']) {
    try {
      const found = JSON.parse(readFileSync(new URL(up, import.meta.url), 'utf8')) as { name?: string, version?: string }
      if (found.name === 'galleonfs' && typeof found.version === 'string') return found.version
    } catch {}
  }
  return 'unknown'
})()

/** Builds the command tree. */
export function buildCli (): Command {
  const program = new Command('galleonfs')
    .description('GalleonFS command-line client (start the daemon with `galleonfs -d`)')
    .addOption(new Option('--daemon-address <host:port>', 'address of the daemon\'s IPC API; https://host:port for a daemon serving HTTPS').env('GALLEONFS_DAEMON_ADDRESS').default('127.0.0.1:8090').argParser((v) => {
      // A malformed address is a command-line error (exit 2), found before anything is sent.
      let port: number
      try {
        port = daemonEndpoint(v).port
      } catch (err) {
        throw new InvalidArgumentError(err instanceof ConfigError ? 'host:port such as 127.0.0.1:8090, or https://host:port' : String(err))
      }
      // Port 0 is a daemon's "any free port", never one to connect to: its log's "ready" line names the port.
      if (port === 0) throw new InvalidArgumentError('port 0 is not a port the daemon answers on; give the port of its "ready" log line (ipcAddress)')
      return v
    }))
    .addOption(new Option('--daemon-ca-file <file>', 'PEM of the CA that signed the certificate of a daemon serving HTTPS').env('GALLEONFS_DAEMON_CA_FILE'))
    .option('--token <token>', 'API token (default: GALLEONFS_TOKEN, or the one the daemon left for this user)')
    .option('--json', 'print JSON')
    .option('--progress', 'show progress bars of long operations also when stderr is not a terminal')
    .option('--no-progress', 'no progress bars, also on a terminal')
    .option('--timeout <seconds>', `how long to wait for the daemon to begin answering (default ${ANSWER_TIMEOUT_SECONDS}; long operations begin their answer at once and then take as long as they need)`, (v) => {
      const n = Number(v)
      if (v.trim() === '' || !Number.isFinite(n) || n <= 0 || n > MAX_WAIT_SECONDS) throw new InvalidArgumentError(`a number of seconds above 0, at most ${MAX_WAIT_SECONDS}`)
      return n
    })
    .version(VERSION, '-V, --version')
    .showHelpAfterError()
    .exitOverride()
  const globals = (): Globals => program.opts<Globals>()
  // An empty name (a script's unset variable: `qos clear "$VOL"`) would make an empty path segment,
  // which names another thing: refused here, before any request.
  program.hook('preAction', (_program, command) => {
    command.registeredArguments.forEach((argument, i) => {
      const value = command.processedArgs[i] as unknown
      if (argument.required && (value === '' || (Array.isArray(value) && value.includes('')))) {
        throw new UsageError(`${command.parent?.name() ?? 'galleonfs'} ${command.name()}: the <${argument.name()}> argument is empty; give a name or id (is a shell variable unset?)`)
      }
    })
  })

  const volume = program.command('volume').description('manage volumes')
  volume.command('create').description('create a volume')
    .option('-n, --name <name>', 'volume name (generated when omitted)')
    .addOption(new Option('-t, --volume-type <type>', 'volume type').choices(['ephemeral', 'persistent', 'shared']).default('persistent'))
    .addOption(new Option('-s, --size <size>', 'size with suffix K/M/G/T/P').argParser(sizeText).default('1G', '1G'))
    .option('-c, --storage-class <class>', 'storage class', 'encrypted-storage')
    .option('-r, --replicas <count>', 'replicas (overrides the storage class)', (v) => {
      const n = Number(v)
      if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('a positive whole number')
      return n
    })
    .option('-p, --pool <pool>', 'storage pool (default: the storage class\'s, if it names one)')
    .action(async (options: { name?: string, volumeType: string, size: string, storageClass: string, replicas?: number, pool?: string }) => {
      const created = await call(globals(), 'POST', '/v1/volumes', { name: options.name, type: options.volumeType, sizeBytes: options.size, storageClass: options.storageClass, ...(options.replicas === undefined ? {} : { replicas: options.replicas }), ...(options.pool === undefined ? {} : { pool: options.pool }) }) as VolumeView
      print(globals(), created, () => `created volume ${created.name} (${created.id}), ${created.sizeBytes} bytes, class ${created.storageClass}${created.pool === undefined ? '' : `, pool ${created.pool}`}\n`)
    })
  volume.command('list').description('list volumes').action(async () => {
    const list = await call(globals(), 'GET', '/v1/volumes') as VolumeView[]
    print(globals(), list, () => columns(['NAME', 'ID', 'SIZE', 'CLASS', 'REPLICAS', 'STATE'], list.map((v) => [v.namespace === 'default' ? v.name : `${v.namespace}/${v.name}`, v.id, formatSize(v.sizeBytes), v.storageClass, String(v.replicas), v.state])))
  })
  volume.command('get').description('show a volume (by name or id)').argument('<volume>').action(async (ref: string) => {
    const found = await call(globals(), 'GET', `/v1/volumes/${encodeURIComponent(ref)}`) as VolumeView & { usage: { allocatedBytes: number } }
    print(globals(), found, () => columns(['FIELD', 'VALUE'], Object.entries({ ...found, usage: found.usage.allocatedBytes }).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : String(v)])))
  })
  volume.command('delete').description('delete a volume (by name or id)').argument('<volume>').option('-f, --force', 'also when its class retains volumes, it is mounted or has clones')
    .action(async (ref: string, options: { force?: boolean }) => {
      await callLong(globals(), `deleting ${ref}`, 'DELETE', `/v1/volumes/${encodeURIComponent(ref)}${options.force === true ? '?force=true' : ''}`)
      print(globals(), { deleted: ref }, () => `deleted volume ${ref}\n`)
    })

  volume.command('replication').description('show where a replicated volume\'s copies are, which are in sync, and their lag').argument('<volume>').action(async (ref: string) => {
    interface Link { node: string, state: string, lagChanges: number, lagBytes: number, lagSeconds?: number, shippedBytes: number, resync?: { mode: string, blocksDone: number, blocksTotal: number } }
    const status = await call(globals(), 'GET', `/v1/volumes/${encodeURIComponent(ref)}/replication`) as { role: string, primary?: string, epoch?: number, nodes: string[], inSync: string[], replicas: number, degraded: boolean, links: Link[] }
    print(globals(), status, () => {
      const head = `volume ${ref}: primary ${status.primary ?? 'unknown'} (epoch ${status.epoch ?? '-'}), ${status.inSync.length} of ${status.replicas} copies in sync${status.degraded ? ' (DEGRADED)' : ''}; this node is ${status.role}\n`
      const rows = status.nodes.map((node) => {
        const link = status.links.find((l) => l.node === node)
        return [node, node === status.primary ? 'primary' : 'replica', status.inSync.includes(node) ? 'yes' : 'NO', link?.state ?? '-', link === undefined ? '-' : `${link.lagChanges}${typeof link.lagSeconds === 'number' ? ` (${link.lagSeconds.toFixed(2)} s)` : ''}`, link === undefined ? '-' : formatSize(link.shippedBytes), link?.resync === undefined ? '' : `${link.resync.mode} ${link.resync.blocksDone}/${link.resync.blocksTotal}`]
      })
      return head + columns(['NODE', 'ROLE', 'IN SYNC', 'LINK', 'LAG (CHANGES, AGE)', 'SHIPPED', 'RESYNC'], rows)
    })
  })
  volume.command('expand').description('grow a volume online').argument('<volume>').argument('<size>', 'new size with suffix K/M/G/T/P', sizeText)
    .action(async (ref: string, size: string) => {
      const grown = await call(globals(), 'POST', `/v1/volumes/${encodeURIComponent(ref)}/expand`, { sizeBytes: size }) as VolumeView
      print(globals(), grown, () => `volume ${grown.name} is now ${grown.sizeBytes} bytes\n`)
    })
  volume.command('migrate').description('move a volume online to another storage class, pool or cluster node (it stays readable and writable)').argument('<volume>')
    .option('-c, --storage-class <class>', 'the storage class to move to (e.g. one that encrypts, or keeps more copies)')
    .option('-p, --pool <pool>', 'the storage pool to move to')
    .option('--node <node>', 'the cluster node to move this node\'s copy to')
    .action(async (ref: string, options: { storageClass?: string, pool?: string, node?: string }) => {
      if (options.storageClass === undefined && options.pool === undefined && options.node === undefined) throw new UsageError('volume migrate needs --storage-class, --pool or --node: where the volume goes')
      const moved = await callLong(globals(), `migrating ${ref}`, 'POST', `/v1/volumes/${encodeURIComponent(ref)}/migrate`, { storageClass: options.storageClass, pool: options.pool, node: options.node }) as VolumeView & { encrypted?: boolean, pool?: string }
      print(globals(), moved, () => `volume ${moved.name} migrated: ${options.node === undefined ? '' : `now on node ${options.node}, `}storage class ${moved.storageClass}${moved.pool === undefined ? '' : `, pool ${moved.pool}`}${moved.encrypted === true ? ', encrypted' : ''}
`)
    })
  volume.command('clone').description('clone a volume (or one of its snapshots)').argument('<volume>').argument('<new-name>').option('--snapshot <snapshot>', 'clone this snapshot instead of the live volume')
    .action(async (ref: string, name: string, options: { snapshot?: string }) => {
      const clone = await call(globals(), 'POST', `/v1/volumes/${encodeURIComponent(ref)}/clone`, { name, snapshot: options.snapshot }) as VolumeView
      print(globals(), clone, () => `cloned ${ref} as ${clone.name} (${clone.id})\n`)
    })
  volume.command('mount').description('mount a volume (the daemon needs --mount-point)').argument('<volume>').argument('[path]', 'mount point (default: <mount-point>/<volume>)').option('-o, --options <options>', 'mount options, comma-separated (ro, rw, sync, ...)')
    .action(async (ref: string, path: string | undefined, options: { options?: string }) => {
      // The daemon runs elsewhere in the file system: a relative mount point is the user's, from here.
      const mount = await call(globals(), 'POST', `/v1/volumes/${encodeURIComponent(ref)}/mount`, { path: path === '' ? undefined : absolute(path), options: options.options }) as { path: string, readOnly: boolean }
      print(globals(), mount, () => `mounted ${ref} at ${mount.path} (${mount.readOnly ? 'read-only' : 'read-write'}); its bytes are ${mount.path}/data\n`)
    })
  volume.command('unmount').description('unmount a volume (by name, id or mount point)').argument('<target>').option('-f, --force', 'also when files are open on it')
    .action(async (target: string, options: { force?: boolean }) => {
      // The target may be a mount id or a volume (the daemon checks those first) or a mount point,
      // which, relative, is the user's from here: sent resolved too.
      await call(globals(), 'POST', '/v1/unmount', { target, ...(target === '' ? {} : { path: absolute(target) }), force: options.force === true })
      print(globals(), { unmounted: target }, () => `unmounted ${target}\n`)
    })

  const mount = program.command('mount').description('the mounts made through the daemon (`volume mount` makes one, `volume unmount` ends it)')
  mount.command('list').description('list the mounts: volume, mount point, read-only or read-write, open files').action(async () => {
    interface MountView { id: string, path: string, volumeName: string, namespace: string, snapshotName?: string, readOnly: boolean, sync: boolean, driver: string, mountedAt: string, openFiles: number }
    const list = await call(globals(), 'GET', '/v1/mounts') as MountView[]
    const what = (m: MountView): string => `${m.namespace === 'default' ? m.volumeName : `${m.namespace}/${m.volumeName}`}${m.snapshotName === undefined ? '' : `@${m.snapshotName}`}`
    print(globals(), list, () => columns(['VOLUME', 'PATH', 'MODE', 'DRIVER', 'OPEN FILES', 'MOUNTED', 'ID'], list.map((m) => [what(m), m.path, `${m.readOnly ? 'ro' : 'rw'}${m.sync ? ',sync' : ''}`, m.driver, String(m.openFiles), m.mountedAt, m.id])))
  })

  const snapshot = program.command('snapshot').description('snapshots of volumes')
  snapshot.command('create').argument('<volume>').argument('<name>').description('take a snapshot').action(async (ref: string, name: string) => {
    const taken = await call(globals(), 'POST', `/v1/volumes/${encodeURIComponent(ref)}/snapshots`, { name }) as { id: string, name: string }
    print(globals(), taken, () => `snapshot ${taken.name} of ${ref} taken (${taken.id})\n`)
  })
  snapshot.command('list').argument('<volume>').description('list a volume\'s snapshots').action(async (ref: string) => {
    const list = await call(globals(), 'GET', `/v1/volumes/${encodeURIComponent(ref)}/snapshots`) as Array<{ name: string, id: string, sizeBytes: number, createdAt: string }>
    print(globals(), list, () => columns(['NAME', 'ID', 'SIZE', 'CREATED'], list.map((s) => [s.name, s.id, formatSize(s.sizeBytes), s.createdAt])))
  })
  snapshot.command('delete').argument('<volume>').argument('<snapshot>').option('-f, --force', 'also when clones read from it').description('delete a snapshot')
    .action(async (ref: string, name: string, options: { force?: boolean }) => {
      await callLong(globals(), `deleting snapshot ${name}`, 'DELETE', `/v1/volumes/${encodeURIComponent(ref)}/snapshots/${encodeURIComponent(name)}${options.force === true ? '?force=true' : ''}`)
      print(globals(), { deleted: name }, () => `deleted snapshot ${name} of ${ref}\n`)
    })
  snapshot.command('restore').argument('<volume>').argument('<snapshot>').description('revert a volume to a snapshot').action(async (ref: string, name: string) => {
    await callLong(globals(), `reverting ${ref}`, 'POST', `/v1/volumes/${encodeURIComponent(ref)}/snapshots/${encodeURIComponent(name)}/restore`)
    print(globals(), { restored: name }, () => `volume ${ref} reverted to snapshot ${name}\n`)
  })

  addBackupCommands(program, globals)

  const cluster = program.command('cluster').description('cluster membership')
  interface Member { id: string, address: string, zone: string, healthy: boolean, leader: boolean, volumes?: number, protocol?: { version: number, oldest: number } }
  interface Status { clustering: boolean, nodeId: string, leader?: string, leaderEpoch?: number, members: Member[] }
  const memberTable = (members: Member[]): string => columns(['NODE', 'ADDRESS', 'ZONE', 'HEALTHY', 'LEADER', 'VOLUMES', 'PROTOCOL'], members.map((n) => [n.id, n.address, n.zone, n.healthy ? 'yes' : 'NO', n.leader ? 'yes' : '', n.volumes === undefined ? '-' : String(n.volumes), n.protocol === undefined ? '1' : n.protocol.oldest === n.protocol.version ? String(n.protocol.version) : `${n.protocol.oldest}-${n.protocol.version}`]))
  cluster.command('status').description('nodes, health and leader').action(async () => {
    const status = await call(globals(), 'GET', '/v1/cluster') as Status
    print(globals(), status, () => `${status.clustering ? `cluster seen from node ${status.nodeId}; leader ${status.leader ?? '(none yet)'}${status.leaderEpoch === undefined ? '' : ` (epoch ${status.leaderEpoch})`}` : 'a single node, not in a cluster'}\n${memberTable(status.members)}`)
  })
  cluster.command('peers').description('the other nodes').action(async () => {
    const status = await call(globals(), 'GET', '/v1/cluster') as Status
    const peers = status.members.filter((n) => n.id !== status.nodeId)
    print(globals(), peers, () => peers.length === 0 ? (status.clustering ? 'no peers: this node is alone in its cluster\n' : 'no peers: this daemon runs as a single node\n') : memberTable(peers))
  })
  cluster.command('join').argument('<address>', 'bind address (host:port) of a node of the cluster', (v: string) => {
    // A malformed address is a command-line error (exit 2), found before anything is sent.
    try {
      parseAddress(v, 'address')
    } catch {
      throw new InvalidArgumentError('the bind address of a cluster node: host:port such as 10.0.1.10:8081')
    }
    return v
  }).description('join the cluster of the node at <address> (needs the cluster secret)').action(async (address: string) => {
    const status = await callLong(globals(), 'joining', 'POST', '/v1/cluster/join', { address }) as Status
    print(globals(), status, () => `joined the cluster as node ${status.nodeId}: ${status.members.length} member(s), leader ${status.leader ?? '(none yet)'}\n`)
  })
  cluster.command('leave').option('-f, --force', 'also when this node holds the only copy of volumes (they stay here, out of the cluster)').description('leave the cluster').action(async (options: { force?: boolean }) => {
    const status = await callLong(globals(), 'leaving', 'POST', '/v1/cluster/leave', { force: options.force === true }) as Status
    print(globals(), status, () => 'left the cluster; this daemon is a single node now\n')
  })

  cluster.command('forget').argument('<node>', 'id of a node that is gone for good (no longer a member)')
    .description('give up the copies of a node that will not come back (new ones are placed) and stop waiting for it')
    .action(async (node: string) => {
      const done = await call(globals(), 'POST', '/v1/cluster/forget', { node }) as ForgottenNode
      print(globals(), done, () => `forgot node ${done.nodeId}: ${done.copies.length} cop${done.copies.length === 1 ? 'y' : 'ies'} given up (new ones are placed), ${done.droppedLists.length} given-up cop${done.droppedLists.length === 1 ? 'y' : 'ies'} and ${done.deletionMarks.length} deletion${done.deletionMarks.length === 1 ? '' : 's'} no longer wait for it\n`)
    })

  const daemon = program.command('daemon').description('the running daemon')
  daemon.command('status').description('show the daemon\'s state')
    .option('--wait <seconds>', 'wait up to this long for the daemon to answer (for scripts that just started it)', (v) => {
      const n = Number(v)
      if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > MAX_WAIT_SECONDS) throw new InvalidArgumentError(`a number of seconds from 0 to ${MAX_WAIT_SECONDS}`)
      return n
    })
    .action(async (options: { wait?: number }) => {
      const until = Date.now() + (options.wait ?? 0) * 1000
      let status: Record<string, unknown>
      while (true) {
        try {
          // Each attempt waits for an answer no longer than the time left (at least a moment).
          const left = until - Date.now()
          status = await call(globals(), 'GET', '/v1/status', undefined, options.wait === undefined || options.wait === 0 ? {} : { timeoutMs: Math.max(left, 100) }) as Record<string, unknown>
          break
        } catch (err) {
          // "Nobody answers" is waited out, and so is a refused token read from the runtime file: a
          // daemon that just started listens a moment before it writes that file. So is a daemon
          // that answers it is starting (STARTING: it waits for its peers before its storage opens).
          // Other errors are final.
          const fromFile = globals().token === undefined && (process.env.GALLEONFS_TOKEN ?? '') === ''
          const waitable = (err instanceof NoAnswer && (err.kind === 'unreachable' || err.kind === 'closed')) || (err instanceof CliError && fromFile && err.message.includes('rejected the API token')) || (err instanceof CliError && err.message.startsWith('STARTING: '))
          // An attempt's own deadline is what was left of --wait (999 ms of a second when a
          // millisecond went by): the user is told of the wait they gave.
          if (err instanceof NoAnswer && err.kind === 'timeout' && options.wait !== undefined && options.wait > 0) throw noAnswerInTime(globals().daemonAddress, options.wait, '--wait')
          if (!waitable || Date.now() >= until) throw err
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      }
      print(globals(), status, () => columns(['FIELD', 'VALUE'], Object.entries(status).map(([k, v]) => [k, String(v)])))
    })
  daemon.command('config').description('show the daemon\'s configuration').action(async () => {
    print(globals(), await call(globals(), 'GET', '/v1/config'))
  })
  daemon.command('restart').description('restart the daemon (same arguments; mounts come back)').action(async () => {
    const before = await call(globals(), 'POST', '/v1/restart') as { pid: number }
    // Wait for the new process to answer (its token is new only if the storage's was lost).
    // A restart can turn HTTPS on or off: the new process then refuses this address's scheme,
    // which waiting does not change, and the last error says what to give instead.
    let last: Error | undefined
    // A minute in all: each status call waits at most for what is left of it.
    const until = Date.now() + 60_000
    while (Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 250))
      const timeoutMs = Math.max(100, Math.min(until - Date.now(), (globals().timeout ?? ANSWER_TIMEOUT_SECONDS) * 1000))
      const status = await call(globals(), 'GET', '/v1/status', undefined, { timeoutMs }).catch((err: Error) => { last = err; return undefined }) as { pid?: number } | undefined
      if (status?.pid !== undefined && status.pid !== before.pid) {
        print(globals(), status, () => `the daemon restarted (pid ${status.pid})\n`)
        return
      }
      if (last instanceof NoAnswer && last.kind === 'refused') throw new CliError(`the daemon at ${globals().daemonAddress} was restarted, but ${last.message}`)
    }
    throw new CliError(`the daemon at ${globals().daemonAddress} did not come back within a minute; see its log${last === undefined ? '' : ` (the last attempt: ${last.message})`}`)
  })
  daemon.command('reload').description('read the configuration file again and apply what can change while running (as SIGHUP does)').action(async () => {
    const report = await call(globals(), 'POST', '/v1/reload') as { applied: string[], needsRestart: string[] }
    print(globals(), report, () => `reloaded: ${report.applied.length === 0 ? 'nothing changed that applies live' : `applied ${report.applied.join(', ')}`}${report.needsRestart.length === 0 ? '' : `; changed but waiting for a restart: ${report.needsRestart.join(', ')}`}\n`)
  })
  daemon.command('stop').description('stop the daemon gracefully').action(async () => {
    await call(globals(), 'POST', '/v1/shutdown')
    print(globals(), { state: 'stopping' }, () => 'the daemon is stopping\n')
  })

  addResourceCommands(program, globals)
  addAuditCommands(program, globals)
  return program
}

/** Runs the CLI; resolves to the exit code. */
export async function runCli (argv: string[]): Promise<number> {
  const program = buildCli()
  try {
    await program.parseAsync(argv, { from: 'user' })
    return 0
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version end with code 0; everything else about the command line is a usage error.
      return err.exitCode === 0 ? 0 : 2
    }
    process.stderr.write(`galleonfs: ${(err as Error).message}\n`)
    // A command line that is wrong in a way only the command itself sees (a flag it needs, a
    // malformed key=value list) is a usage error all the same.
    return err instanceof UsageError ? 2 : 1
  }
}
