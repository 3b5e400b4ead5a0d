// `galleonfs <command>`: the CLI, a thin client of the daemon's HTTP/JSON API. Exit codes: 0 done,
// 1 the operation failed (the daemon said no, or is not running), 2 the command line is wrong.

import { readFileSync } from 'node:fs'
import { resolve as resolvePath } from 'node:path'
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander'
import { formatSize, parseSize } from '../src/size.js'
import type { ForgottenNode } from '../src/index.js'
import { ANSWER_TIMEOUT_SECONDS, call, callLong, CliError, daemonEndpoint, inCliTerms, NoAnswer, UsageError, type Globals } from './cli-client.js'
import { ConfigError, parseAddress } from './daemon-config.js'
import { columns, commaList, definitionIn, keyValues, policyFromFile, policyFromFlags, print, readDefinitionFile, sizeOption } from './cli-format.js'

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

interface VolumeView { id: string, name: string, namespace: string, type: string, state: string, sizeBytes: number, storageClass: string, replicas: number, encrypted: boolean, createdAt: string, pool?: string }

/** How many backups a policy keeps of a kind: a whole number from 0 to 10000, as the library takes (commander's `Number` would pass NaN on as null). */
function kept (v: string): number {
  const n = Number(v)
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < 0 || n > 10_000) throw new InvalidArgumentError('a whole number from 0 to 10000')
  return n
}

/**
 * A path given on the command line, made absolute here: the daemon runs in a working directory of
 * its own, so a relative path is the user's, from where the CLI runs.
 */
function absolute (path: string): string
function absolute (path: string | undefined): string | undefined
function absolute (path: string | undefined): string | undefined {
  return path === undefined || path === '' ? path : resolvePath(path)
}

/** A pool's overcommit ratio: a number of at least 1. */
function overcommit (v: string): number {
  const n = Number(v)
  if (v.trim() === '' || !Number.isFinite(n) || n < 1) throw new InvalidArgumentError('a number of at least 1')
  return n
}

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
      if (v.trim() === '' || !Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('a number of seconds above 0')
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
    .addOption(new Option('-s, --size <size>', 'size with suffix K/M/G/T').argParser(sizeOption).default(parseSize('1G'), '1G'))
    .option('-c, --storage-class <class>', 'storage class', 'encrypted-storage')
    .option('-r, --replicas <count>', 'replicas (overrides the storage class)', (v) => {
      const n = Number(v)
      if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('a positive whole number')
      return n
    })
    .option('-p, --pool <pool>', 'storage pool (default: the storage class\'s, if it names one)')
    .action(async (options: { name?: string, volumeType: string, size: number, storageClass: string, replicas?: number, pool?: string }) => {
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
  volume.command('expand').description('grow a volume online').argument('<volume>').argument('<size>', 'new size with suffix K/M/G/T', sizeOption)
    .action(async (ref: string, size: number) => {
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

  const backup = program.command('backup').description('backups of volumes')
  backup.command('create').argument('<volume>').description('back a volume up')
    .addOption(new Option('--strategy <strategy>', 'full, incremental or differential').choices(['full', 'incremental', 'differential']).default('full'))
    .option('--target <dir>', 'backup target directory (on the daemon\'s machine; a relative one is from here)')
    .action(async (ref: string, options: { strategy: string, target?: string }) => {
      const made = await callLong(globals(), `backup of ${ref}`, 'POST', '/v1/backups', { volume: ref, strategy: options.strategy, target: absolute(options.target) }) as { id: string, strategy: string, blocks: number, storedBytes: number }
      print(globals(), made, () => `backup ${made.id} (${made.strategy}): ${made.blocks} blocks, ${made.storedBytes} bytes stored\n`)
    })
  backup.command('list').argument('[volume]').option('--target <dir>', 'backup target directory').description('list backups').action(async (ref: string | undefined, options: { target?: string }) => {
    const query = new URLSearchParams({ ...(ref === undefined ? {} : { volume: ref }), ...(options.target === undefined ? {} : { target: absolute(options.target) }) })
    const list = await call(globals(), 'GET', `/v1/backups?${query.toString()}`) as Array<{ id: string, volumeName: string, strategy: string, createdAt: string, bytes: number }>
    print(globals(), list, () => columns(['ID', 'VOLUME', 'STRATEGY', 'CREATED', 'BYTES'], list.map((b) => [b.id, b.volumeName, b.strategy, b.createdAt, formatSize(b.bytes)])))
    // No backups is a valid answer, also for a name no volume has (a deleted volume's backups are
    // listed by its name, and may all be gone): still exit 0 and [], but a person is told when the
    // name is no volume's, which is most often a mistyped one.
    if (ref !== undefined && list.length === 0 && globals().json !== true) {
      const unknown = await call(globals(), 'GET', `/v1/volumes/${encodeURIComponent(ref)}`).then(() => false, (err: Error) => err.message.startsWith('VOLUME_NOT_FOUND'))
      if (unknown) process.stderr.write(`galleonfs: no backups of ${ref} on ${options.target === undefined ? 'the daemon\'s backup target' : absolute(options.target)}, and no volume is named ${ref} (\`galleonfs volume list\` shows the volumes; a deleted volume's backups are listed by its name or id)\n`)
    }
  })
  backup.command('restore').argument('<backup>').option('--name <name>', 'into a new volume').addOption(new Option('--volume <volume>', 'over an existing volume').conflicts('name')).option('--pool <pool>', 'storage pool of the new volume').option('--target <dir>', 'backup target directory').description('restore a backup')
    .action(async (id: string, options: { name?: string, volume?: string, pool?: string, target?: string }) => {
      const restored = await callLong(globals(), `restore of ${id.slice(0, 8)}`, 'POST', `/v1/backups/${encodeURIComponent(id)}/restore`, { ...options, target: absolute(options.target) }) as VolumeView
      print(globals(), restored, () => `restored backup ${id} into volume ${restored.name}\n`)
    })
  backup.command('verify').argument('<backup>').option('--target <dir>', 'backup target directory').description('check a backup\'s chunks').action(async (id: string, options: { target?: string }) => {
    const report = await callLong(globals(), `verifying ${id.slice(0, 8)}`, 'POST', `/v1/backups/${encodeURIComponent(id)}/verify`, { target: absolute(options.target) }) as { ok: boolean, chunksChecked: number, problems: unknown[] }
    print(globals(), report, () => `backup ${id}: ${report.ok ? 'ok' : 'DAMAGED'} (${report.chunksChecked} chunks checked, ${report.problems.length} problems)\n`)
    if (!report.ok) throw new CliError(`backup ${id} failed verification`)
  })

  backup.command('adopt').argument('<backup>').option('--target <dir>', 'backup target directory').description('accept an encrypted backup from a build before 2026-12-05 (untagged manifests), after checking its chunks').action(async (id: string, options: { target?: string }) => {
    const report = await callLong(globals(), `adopting ${id.slice(0, 8)}`, 'POST', `/v1/backups/${encodeURIComponent(id)}/adopt`, { target: absolute(options.target) }) as { adopted: string[], unchanged: string[], chunksChecked: number }
    print(globals(), report, () => report.adopted.length === 0 ? `backup ${id}: nothing to adopt (its chain is tagged already, or plain)\n` : `backup ${id}: tagged ${report.adopted.length} manifest(s) of its chain (${report.chunksChecked} chunks checked)\n`)
  })

  const policy = backup.command('policy').description('scheduled backups')
  policy.command('create').argument('<name>').description('create a backup policy')
    .requiredOption('--schedule <cron>', 'cron expression (UTC unless --timezone)')
    .option('--timezone <zone>', 'IANA time zone of the schedule')
    .addOption(new Option('--strategy <strategy>', 'full, incremental or differential').choices(['full', 'incremental', 'differential']))
    .option('--volumes <list>', 'comma-separated volume names or ids (this, --labels or both)')
    .option('--labels <list>', 'comma-separated key=value labels selecting volumes')
    .option('--daily <n>', 'daily backups kept (--daily, --weekly or --monthly is needed)', kept)
    .option('--weekly <n>', 'weekly backups kept', kept)
    .option('--monthly <n>', 'monthly backups kept', kept)
    .option('--target <dir>', 'backup target directory')
    .action(async (name: string, options: { schedule: string, timezone?: string, strategy?: string, volumes?: string, labels?: string, daily?: number, weekly?: number, monthly?: number, target?: string }) => {
      const labels = options.labels === undefined ? undefined : Object.fromEntries(options.labels.split(',').map((pair) => {
        const at = pair.indexOf('=')
        if (at <= 0) throw new UsageError(`--labels takes key=value pairs, got ${JSON.stringify(pair)}`)
        return [pair.slice(0, at), pair.slice(at + 1)]
      }))
      const retention = Object.fromEntries(Object.entries({ daily: options.daily, weekly: options.weekly, monthly: options.monthly }).filter(([, v]) => v !== undefined))
      // What the library requires of every policy, said as this command's flags (exit 2) rather than
      // sent and refused in the API's field names.
      if (options.volumes === undefined && options.labels === undefined) throw new UsageError('backup policy create needs --volumes <names> or --labels <key=value,...>: the volumes each run backs up')
      if (Object.keys(retention).length === 0) throw new UsageError('backup policy create needs --daily, --weekly or --monthly: how many backups it keeps (each run deletes the others), such as --daily 7')
      // Each run deletes every backup but the ones kept: a retention of only zeros would keep none.
      if (Object.keys(retention).length > 0 && Object.values(retention).every((n) => n === 0)) {
        throw new UsageError(`${Object.keys(retention).map((kind) => `--${kind} 0`).join(' ')} keeps no backup, and each run deletes every backup the policy does not keep: give --daily, --weekly or --monthly above 0, such as --daily 7`)
      }
      const created = await call(globals(), 'POST', '/v1/backup-policies', {
        name,
        schedule: options.schedule,
        ...(options.timezone === undefined ? {} : { timezone: options.timezone }),
        ...(options.strategy === undefined ? {} : { strategy: options.strategy }),
        ...(options.volumes === undefined ? {} : { volumes: options.volumes.split(',').map((v) => v.trim()).filter((v) => v.length > 0) }),
        ...(labels === undefined ? {} : { labels }),
        ...(Object.keys(retention).length === 0 ? {} : { retention }),
        ...(options.target === undefined ? {} : { target: absolute(options.target) })
      }) as { name: string, nextRunAt: string | null }
      print(globals(), created, () => `created backup policy ${created.name}; next run ${created.nextRunAt ?? 'never'}\n`)
    })
  policy.command('list').description('list backup policies').action(async () => {
    const list = await call(globals(), 'GET', '/v1/backup-policies') as Array<{ name: string, schedule: string, strategy: string, nextRunAt: string | null, lastResult: { at: string, backups: number, errors: unknown[] } | null }>
    // The last run, scheduled or by `policy run` (lastRunAt is only the last scheduled one), and how it went.
    const outcome = (run: { backups: number, errors: unknown[] } | null): string => run === null ? '-' : `${run.backups} backup(s)${run.errors.length === 0 ? '' : `, ${run.errors.length} FAILED`}`
    print(globals(), list, () => columns(['NAME', 'SCHEDULE', 'STRATEGY', 'NEXT RUN', 'LAST RUN', 'RESULT'], list.map((p) => [p.name, p.schedule, p.strategy, p.nextRunAt ?? '-', p.lastResult?.at ?? '-', outcome(p.lastResult)])))
  })
  policy.command('get').argument('<name>').description('show a backup policy and its last run').action(async (name: string) => {
    print(globals(), await call(globals(), 'GET', `/v1/backup-policies/${encodeURIComponent(name)}`))
  })
  policy.command('delete').argument('<name>').description('delete a backup policy (its backups stay)').action(async (name: string) => {
    await call(globals(), 'DELETE', `/v1/backup-policies/${encodeURIComponent(name)}`)
    print(globals(), { deleted: name }, () => `deleted backup policy ${name}\n`)
  })
  policy.command('run').argument('<name>').description('run a backup policy now').action(async (name: string) => {
    const run = await callLong(globals(), `policy ${name}`, 'POST', `/v1/backup-policies/${encodeURIComponent(name)}/run`) as { backups: unknown[], errors: Array<{ volume: string, message: string }>, pruned: unknown[], collectionDeferred?: boolean, deferredReasons?: string[] }
    // Pruning that could not free the space now (a backup was running on the target) says so.
    const deferred = run.collectionDeferred === true ? `the chunks the pruned backups used were not all deleted yet: ${(run.deferredReasons ?? []).map(inCliTerms).join('; ')}\n` : ''
    print(globals(), run, () => `policy ${name}: ${run.backups.length} backup(s), ${run.pruned.length} pruned, ${run.errors.length} error(s)\n${deferred}`)
    if (run.errors.length > 0) throw new CliError(`policy ${name} failed for ${run.errors.map((f) => `${f.volume} (${inCliTerms(f.message)})`).join(', ')}`)
  })

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
      if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError('a number of seconds')
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
    .requiredOption('-s, --capacity <size>', 'capacity with suffix K/M/G/T', sizeOption)
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
    .option('-s, --capacity <size>', 'new capacity with suffix K/M/G/T', sizeOption)
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
