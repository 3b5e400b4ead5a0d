// The CLI's `backup` commands: backups of volumes (create, list, restore, verify, adopt) and the
// scheduled backup policies (`backup policy ...`).

import { Command, InvalidArgumentError, Option } from 'commander'
import { formatSize } from '../src/size.js'
import { call, callLong, CliError, inCliTerms, UsageError, type Globals } from './cli-client.js'
import { absolute, columns, print, type VolumeView } from './cli-format.js'

/** How many backups a policy keeps of a kind: a whole number from 0 to 10000, as the library takes (commander's `Number` would pass NaN on as null). */
function kept (v: string): number {
  const n = Number(v)
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < 0 || n > 10_000) throw new InvalidArgumentError('a whole number from 0 to 10000')
  return n
}

/** Adds `backup` and `backup policy` to the command tree; `globals` reads the global options. */
export function addBackupCommands (program: Command, globals: () => Globals): void {
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
}
