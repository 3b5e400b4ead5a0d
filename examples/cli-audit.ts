// The CLI's `audit` commands: entries of the daemon's audit log (query), whether the log is intact
// (verify, also against a head kept elsewhere), and the head to keep (head).

import { Command, InvalidArgumentError, Option } from 'commander'
import type { AuditEntry, AuditVerification } from '../src/index.js'
import { call, CliError, type Globals } from './cli-client.js'
import { columns, print } from './cli-format.js'

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** ISO-8601 as the CLI takes it: a date, optionally a time of day, optionally a zone. */
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?)?(Z|[+-]\d{2}:?\d{2})?$/

/**
 * A time flag: ISO-8601 (`2026-01-31T12:00:00Z`; without a zone, a time of this machine's zone, as
 * `date` shows it), epoch milliseconds, or a while ago (`30m`, `2h`, `7d`). Sent as epoch
 * milliseconds, so the daemon's time zone plays no part. A malformed one, or a date that does not
 * exist (February 30th), is a usage error (exit 2).
 */
export function timeOption (value: string): string {
  const text = value.trim()
  const ago = /^(\d+)([smhd])$/.exec(text)
  if (ago !== null) return String(Date.now() - Number(ago[1]) * (UNIT_MS[ago[2] as string] as number))
  if (/^\d+$/.test(text) && Number.isSafeInteger(Number(text))) return text
  const iso = ISO_TIME.exec(text)
  if (iso !== null) {
    const [year, month, day, hour, minute, second] = iso.slice(1, 7).map((part) => Number(part ?? 0)) as [number, number, number, number, number, number]
    const millis = Number(((iso[7] ?? '') + '00').slice(0, 3))
    const zone = iso[8]
    // A field out of range (month 13, February 30th, 25:00) moves the date: such a time does not exist.
    const utc = new Date(Date.UTC(year, month - 1, day, hour, minute, second, millis))
    const exists = utc.getUTCFullYear() === year && utc.getUTCMonth() === month - 1 && utc.getUTCDate() === day &&
      utc.getUTCHours() === hour && utc.getUTCMinutes() === minute && utc.getUTCSeconds() === second
    const offset = zone === undefined || zone === 'Z' ? '0000' : zone.slice(1).replace(':', '')
    if (exists && Number(offset.slice(0, 2)) <= 23 && Number(offset.slice(2)) <= 59) {
      if (zone === undefined) return String(new Date(year, month - 1, day, hour, minute, second, millis).getTime())
      const minutes = (zone.startsWith('-') ? -1 : 1) * (Number(offset.slice(0, 2)) * 60 + Number(offset.slice(2)))
      return String(utc.getTime() - minutes * 60_000)
    }
  }
  throw new InvalidArgumentError('an ISO-8601 time (2026-01-31T12:00:00Z; without a zone, this machine\'s local time), epoch milliseconds, or a while ago such as 30m, 2h or 7d')
}

function limitOption (value: string): number {
  const n = Number(value)
  if (value.trim() === '' || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('a whole number above 0')
  return n
}

/** `--head <seq>:<hash>`, as `audit head` prints it. */
function headOption (value: string): { seq: number, hash: string } {
  const found = /^(\d+):([0-9a-f]{64})$/.exec(value.trim())
  if (found === null || !Number.isSafeInteger(Number(found[1]))) throw new InvalidArgumentError('<seq>:<hash> as `galleonfs audit head` prints it')
  return { seq: Number(found[1]), hash: found[2] as string }
}

/** An entry's result as one column: the result, and the error code of a refusal. */
function outcome (entry: AuditEntry): string {
  return entry.code === undefined ? entry.result : `${entry.result} ${entry.code}`
}

/** Adds `audit query|verify|head` to the program. */
export function addAuditCommands (program: Command, globals: () => Globals): void {
  const audit = program.command('audit').description('the daemon\'s audit log: who changed or was refused what, and whether the log is intact')

  audit.command('query').alias('list').description('show audit entries, oldest first (filters combine)')
    .option('--from <time>', 'entries from this time on: ISO-8601, epoch milliseconds, or a while ago (30m, 2h, 7d)', timeOption)
    .option('--to <time>', 'entries before this time (same forms as --from)', timeOption)
    .option('--principal <id>', 'one caller: a principal\'s id, `application` for the application\'s (and this daemon\'s API\'s) calls, `system` for the instance\'s own work')
    .option('--object <object>', 'one object, such as volume:default/db, or a prefix ending in * (volume:tenant-a/*)')
    .option('--action <call>', 'one call, such as createVolume or deleteBackup')
    .addOption(new Option('--result <result>', 'one outcome').choices(['ok', 'denied', 'failed']))
    .option('--limit <n>', 'at most this many entries (default 1000)', limitOption)
    .action(async (options: { from?: string, to?: string, principal?: string, object?: string, action?: string, result?: string, limit?: number }) => {
      const params = new URLSearchParams()
      for (const [key, value] of Object.entries(options)) if (value !== undefined) params.set(key, String(value))
      const query = params.size === 0 ? '' : `?${params.toString()}`
      const entries = await call(globals(), 'GET', `/v1/audit${query}`) as AuditEntry[]
      print(globals(), entries, () => entries.length === 0
        ? 'no audit entries match\n'
        : columns(['SEQ', 'TIME', 'PRINCIPAL', 'ACTION', 'OBJECT', 'RESULT', 'DETAILS'], entries.map((e) => [String(e.seq), e.time, e.principal, e.action, e.object, outcome(e), e.details === undefined ? '' : JSON.stringify(e.details)])))
    })

  audit.command('verify').description('check the audit log\'s hash chain: an edited, removed or reordered entry, or entries cut off its end (exit 1 when it is not intact)')
    .option('--head <seq:hash>', 'also check against a head kept elsewhere (as `audit head` printed it): catches a log rebuilt from scratch', headOption)
    .action(async (options: { head?: { seq: number, hash: string } }) => {
      const query = options.head === undefined ? '' : `?seq=${options.head.seq}&hash=${options.head.hash}`
      const report = await call(globals(), 'GET', `/v1/audit/verify${query}`) as AuditVerification
      print(globals(), report, () => report.ok
        ? `audit log intact: ${report.entries} entries, head ${report.head.seq}:${report.head.hash}\n`
        : `audit log NOT intact: ${report.problems.length} problem(s) in ${report.entries} entries\n${columns(['SEQ', 'PROBLEM'], report.problems.map((p) => [String(p.seq), p.problem]))}`)
      if (!report.ok) throw new CliError(`the audit log failed verification (${report.problems.length} problem(s))`)
    })

  audit.command('head').description('print the log\'s head (<seq>:<hash>): keep it elsewhere, and check the log against it later with `audit verify --head`')
    .action(async () => {
      const head = await call(globals(), 'GET', '/v1/audit/head') as { seq: number, hash: string }
      print(globals(), head, () => `${head.seq}:${head.hash}\n`)
    })
}
