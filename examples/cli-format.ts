// What the CLI's commands share besides the API: parsers of what they are given (sizes, lists,
// QoS policies from flags or a file) and the printing of answers (JSON, or aligned columns).

import { readFile } from 'node:fs/promises'
import { resolve as resolvePath } from 'node:path'
import { InvalidArgumentError } from 'commander'
import { parseSize } from '../src/size.js'
import Table from 'cli-table3'
import { CliError, UsageError, type Globals } from './cli-client.js'

export function print (globals: Globals, value: unknown, table?: () => string): void {
  process.stdout.write(globals.json === true || table === undefined ? JSON.stringify(value, null, 2) + '\n' : table())
}

// C0 and C1 control characters (escape sequences start with ESC or CSI), and the bidirectional
// overrides that reorder what a terminal shows.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g
const SHORT_ESCAPES: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/**
 * `text` with its control characters written as escapes (`\n`, `\u001b`): a cell holds what a
 * caller passed (an audit entry keeps a refused name as given), and printed raw, a newline would
 * forge a row and an escape sequence would reach the terminal.
 */
export function printable (text: string): string {
  return text.replace(UNPRINTABLE, (ch) => SHORT_ESCAPES[ch] ?? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/** Rows as aligned columns without borders (cli-table3), headers first; cells as `printable` shows them. */
export function columns (headers: string[], rows: string[][]): string {
  rows = rows.map((row) => row.map(printable))
  const none = { top: '', 'top-mid': '', 'top-left': '', 'top-right': '', bottom: '', 'bottom-mid': '', 'bottom-left': '', 'bottom-right': '', left: '', 'left-mid': '', mid: '', 'mid-mid': '', right: '', 'right-mid': '', middle: '  ' }
  const table = new Table({ head: headers, chars: none, style: { head: [], border: [], 'padding-left': 0, 'padding-right': 0 } })
  table.push(...rows)
  return table.toString().split('\n').map((line) => line.trimEnd()).join('\n') + '\n'
}

/**
 * A size flag or argument (`16M`): every size the CLI takes (of a volume, of a pool) is above 0, so
 * 0 is a usage error (exit 2) here, as a malformed or negative one is, not a refusal by the daemon.
 */
export function sizeOption (value: string): number {
  let bytes: number
  try {
    bytes = parseSize(value)
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message)
  }
  if (bytes === 0) throw new InvalidArgumentError('a size above 0 is needed, such as 512K, 100M or 1G')
  return bytes
}

/**
 * A volume size checked as sizeOption checks it, but kept as written, so that the daemon's refusal
 * of one that is not a whole number of blocks knows whether it had a unit (`2K` did not lose one).
 */
export function sizeText (value: string): string {
  sizeOption(value)
  return value.trim()
}

/** `key=value,key=value` as an object; a usage error (exit 2) naming the option otherwise. */
export function keyValues (text: string, option: string): Record<string, string> {
  return Object.fromEntries(text.split(',').map((pair) => pair.trim()).filter((pair) => pair.length > 0).map((pair) => {
    const at = pair.indexOf('=')
    if (at <= 0) throw new UsageError(`${option} takes key=value pairs separated by commas, got ${JSON.stringify(pair)}`)
    return [pair.slice(0, at), pair.slice(at + 1)]
  }))
}

/** `a,b,c` as a list without empty items. */
export function commaList (text: string): string[] {
  return text.split(',').map((item) => item.trim()).filter((item) => item.length > 0)
}

/** A QoS policy from `qos set` flags (the API validates it and names any bad field). */
export function policyFromFlags (options: Record<string, number | string | undefined>): Record<string, unknown> {
  const pick = (entries: Array<[string, string]>): Record<string, unknown> | undefined => {
    const out = Object.fromEntries(entries.filter(([, flag]) => options[flag] !== undefined).map(([field, flag]) => [field, options[flag]]))
    return Object.keys(out).length === 0 ? undefined : out
  }
  const limits = pick([['iops', 'limitIops'], ['read_iops', 'limitReadIops'], ['write_iops', 'limitWriteIops'], ['throughput_mbps', 'limitMbps'], ['read_throughput_mbps', 'limitReadMbps'], ['write_throughput_mbps', 'limitWriteMbps'], ['latency_ms', 'latencyMs']])
  const guarantees = pick([['iops', 'guaranteeIops'], ['throughput_mbps', 'guaranteeMbps']])
  const burstable = pick([['duration_seconds', 'burstSeconds'], ['iops_multiplier', 'burstIopsMultiplier'], ['throughput_multiplier', 'burstMbpsMultiplier']])
  const policy = { ...(limits === undefined ? {} : { limits }), ...(guarantees === undefined ? {} : { guarantees }), ...(burstable === undefined ? {} : { burstable }), ...(options.weight === undefined ? {} : { weight: options.weight }) }
  if (Object.keys(policy).length === 0) throw new UsageError('qos set needs a policy: flags such as --limit-iops 1000 or --guarantee-iops 200, or --file policy.yaml; `qos clear` removes one')
  return policy
}

/**
 * A definition file's contents: YAML for `.yaml`/`.yml` names, else JSON. The YAML parser is loaded
 * only here, so that commands without a file do not pay for loading it.
 */
export async function readDefinitionFile (file: string): Promise<unknown> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as Error).message}`)
  }
  try {
    return /\.ya?ml$/i.test(file) ? (await import('yaml')).parse(text) : JSON.parse(text)
  } catch (err) {
    throw parseProblem(file, err)
  }
}

export async function policyFromFile (file: string, options: Record<string, unknown>): Promise<unknown> {
  if (Object.entries(options).some(([key, value]) => key !== 'file' && value !== undefined)) throw new UsageError('give the policy either as --file or as flags, not both')
  const policy = await readDefinitionFile(file)
  return definitionIn(file, policy, 'a QoS policy (limits, guarantees, burstable, weight)')
}

/**
 * A parser's complaint about a definition file in one line: the yaml package adds the offending
 * lines and a caret below its first line (which already says where).
 */
export function parseProblem (file: string, err: unknown): CliError {
  const first = ((err as Error)?.message ?? String(err)).split('\n')[0]?.replace(/:\s*$/, '') ?? ''
  return new CliError(`${file} is not valid ${/\.ya?ml$/i.test(file) ? 'YAML' : 'JSON'}: ${first}`)
}

/** What a definition file holds, when it is one object (an empty file, a list or a lone value is refused). */
export function definitionIn (file: string, value: unknown, what: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new CliError(`${file} must hold ${what} as one object of fields, but holds ${value === null || value === undefined ? 'nothing' : Array.isArray(value) ? 'a list' : `a ${typeof value}`}`)
  }
  return value as Record<string, unknown>
}

/** A volume as the daemon's API describes it. */
export interface VolumeView { id: string, name: string, namespace: string, type: string, state: string, sizeBytes: number, storageClass: string, replicas: number, encrypted: boolean, createdAt: string, pool?: string }

/**
 * A path given on the command line, made absolute here: the daemon runs in a working directory of
 * its own, so a relative path is the user's, from where the CLI runs.
 */
export function absolute (path: string): string
export function absolute (path: string | undefined): string | undefined
export function absolute (path: string | undefined): string | undefined {
  return path === undefined || path === '' ? path : resolvePath(path)
}
