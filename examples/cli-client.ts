// The CLI's client of the daemon's HTTP/JSON API: one request, its answer or a one-line error, and
// long operations whose answer streams progress (drawn as a bar) before the result.

import { request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { readFile } from 'node:fs/promises'
import { formatSize } from '../src/size.js'
import { DAEMON_HEADER, runtimeTokenPath } from './daemon-token.js'
import { parseAddress } from './daemon-config.js'

/** A failure to report in one line (exit 1), never with a stack trace. */
export class CliError extends Error {}

/** A command line that is wrong (exit 2), reported in one line before anything is sent. */
export class UsageError extends CliError {}

export interface Globals { daemonAddress: string, token?: string, json?: boolean, progress?: boolean, timeout?: number, daemonCaFile?: string }

/**
 * Where the daemon's API is: `host:port` (HTTP), or `https://host:port` for a daemon started with
 * --ipc-tls-cert-file. `address` is host:port either way (what the runtime token file is named by).
 */
export function daemonEndpoint (daemonAddress: string): { host: string, port: number, https: boolean, address: string } {
  const https = /^https:\/\//i.test(daemonAddress)
  const address = daemonAddress.replace(/^https?:\/\//i, '').replace(/\/$/, '')
  return { ...parseAddress(address, '--daemon-address'), https, address }
}

/** The CA that signed the daemon's certificate (--daemon-ca-file, GALLEONFS_DAEMON_CA_FILE), if given. */
async function daemonCa (globals: Globals): Promise<string | undefined> {
  const file = globals.daemonCaFile ?? process.env.GALLEONFS_DAEMON_CA_FILE
  if (file === undefined || file === '') return undefined
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    throw new CliError(`cannot read the daemon's CA file ${file} (--daemon-ca-file): ${(err as Error).message}`)
  }
}

/** Media type of a streamed answer (progress lines, then the result). */
const NDJSON = 'application/x-ndjson'

async function tokenFor (globals: Globals): Promise<string> {
  const given = globals.token ?? process.env.GALLEONFS_TOKEN
  if (given !== undefined && given !== '') return given
  try {
    return (await readFile(runtimeTokenPath(daemonEndpoint(globals.daemonAddress).address), 'utf8')).trim()
  } catch {
    return ''
  }
}

/**
 * Why a request got no answer: kinds the CLI reports differently (`daemon status --wait` waits out
 * 'unreachable' and 'closed'; 'refused', a TLS mismatch or an untrusted certificate, stays so).
 */
type Unanswered = 'unreachable' | 'timeout' | 'closed' | 'refused'

/** A request that got no answer. */
export class NoAnswer extends CliError {
  constructor (readonly kind: Unanswered, message: string) { super(message) }
}

/** How long the CLI waits by default for the daemon to begin its answer. */
export const ANSWER_TIMEOUT_SECONDS = 30

/**
 * The longest --timeout or --wait the CLI takes (23 days): Node's timers hold at most 2^31 - 1 ms
 * and fire after 1 ms for anything longer, so a larger value (a script's "wait forever") would
 * report a daemon that answers as hung at once. Leaves room for the stream allowance added to it.
 */
export const MAX_WAIT_SECONDS = 2_000_000

/**
 * Sends one API request and resolves when the answer begins; a daemon that is not there, one that
 * does not begin its answer within `timeoutMs` (--timeout), a rejected token or an error status
 * become CliError. Only the wait for the answer's beginning is bounded: a long operation streams
 * its answer (see callLong), so no timeout cuts it, and a cut connection would cancel it.
 */
async function request (globals: Globals, method: string, path: string, body?: unknown, options: { accept?: string, timeoutMs?: number } = {}): Promise<IncomingMessage & { timeoutMs: number }> {
  const { host, port, https } = daemonEndpoint(globals.daemonAddress)
  const ca = await daemonCa(globals)
  if (ca !== undefined && !https) throw new UsageError(`--daemon-ca-file is for a daemon serving HTTPS: give --daemon-address as https://${host.includes(':') ? `[${host}]` : host}:${port}, or for a daemon in plain HTTP no CA file (neither --daemon-ca-file nor GALLEONFS_DAEMON_CA_FILE)`)
  const timeoutMs = options.timeoutMs ?? (globals.timeout ?? ANSWER_TIMEOUT_SECONDS) * 1000
  const payload = body === undefined ? undefined : JSON.stringify(body)
  const token = await tokenFor(globals)
  let response: IncomingMessage
  try {
    response = await new Promise<IncomingMessage>((resolve, reject) => {
      // agent: false: one connection per call, closed after it (a CLI makes few calls).
      const send = https ? httpsRequest : httpRequest
      const sent = send({ host, port, method, path, agent: false, ...(https ? { minVersion: 'TLSv1.2' as const, ...(ca === undefined ? {} : { ca }) } : {}), headers: { authorization: `Bearer ${token}`, ...(options.accept === undefined ? {} : { accept: options.accept }), ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }) } })
      const timer = setTimeout(() => { sent.destroy(new NoAnswer('timeout', '')) }, timeoutMs)
      sent.once('response', (answer) => { clearTimeout(timer); resolve(answer) })
      sent.once('error', (err) => { clearTimeout(timer); reject(err) })
      sent.end(payload)
    })
  } catch (err) {
    throw noAnswer(globals, err, timeoutMs)
  }
  if (response.statusCode !== undefined && response.statusCode >= 200 && response.statusCode <= 299 && response.headers[DAEMON_HEADER] === undefined) {
    // Another server that answers JSON (a proxy's health page, another API) would otherwise be
    // printed as if it were the daemon's answer.
    response.resume()
    throw notGalleon(globals, `answered HTTP ${response.statusCode} without the ${DAEMON_HEADER} header every answer of the daemon carries`)
  }
  if (response.statusCode === undefined || response.statusCode < 200 || response.statusCode > 299) {
    const text = await readAll(globals, response, timeoutMs)
    const error = (() => { try { return (JSON.parse(text) as { error?: { code?: string, message?: string } }).error } catch { return undefined } })()
    if (response.statusCode === 401) throw new CliError(`the daemon at ${globals.daemonAddress} rejected the API token; pass --token or set GALLEONFS_TOKEN (it is in the daemon's storage path, file ipc.token)`)
    // Not a GalleonFS refusal (a proxy's or another program's page): said as such, in one line.
    if (typeof error?.code !== 'string') throw notGalleon(globals, `answered HTTP ${response.statusCode ?? '?'} ${response.statusMessage ?? ''}`.trimEnd() + (text.trim() === '' ? '' : ` (${shortText(text)})`))
    throw new CliError(`${error.code}: ${inCliTerms(error.message ?? text)}`)
  }
  return Object.assign(response, { timeoutMs })
}

/** What the CLI says when the program at --daemon-address does not answer as a GalleonFS daemon does. */
function notGalleon (globals: Globals, what: string): CliError {
  return new CliError(`the server at ${globals.daemonAddress} ${what}, not as a GalleonFS daemon does; check that --daemon-address is the daemon's --ipc-address (another program may listen there)`)
}

/** The start of a body that is not the daemon's, on one line. */
function shortText (text: string): string {
  const line = text.replace(/\s+/g, ' ').trim()
  return line.length > 80 ? `${line.slice(0, 80)}...` : line
}

/**
 * The library's messages name the fix as an API call (`listVolumes()`, `{ force: true }`); the CLI
 * user needs the command or flag that does it. Each entry rewrites one such phrase; a message
 * without any passes unchanged.
 */
const CLI_FIXES: ReadonlyArray<[RegExp, string]> = [
  [/deleteVolume\(("[^"]*"), \{ force: true \}\)/g, '`galleonfs volume delete $1 --force`'],
  [/\b([Pp]ass|with) \{ force: true \}/g, '$1 --force'],
  [/mount it with \{ readOnly: true \}/g, 'mount it with --options ro'],
  [/an absolute mount point \(GET \/v1\/mounts lists the mounts\)/g, 'a mount point (`galleonfs mount list` shows the mounts)'],
  [/replace the policy \(deleteBackupPolicy, createBackupPolicy\)/g, 'replace the policy (`galleonfs backup policy delete`, then `galleonfs backup policy create`)'],
  [/with the first createBackup\(\) to it/g, 'with the first `galleonfs backup create <volume> --target <dir>` to it'],
  [/join one \(joinCluster\) first/g, 'join one first (`galleonfs cluster join <address>`)'],
  [/Run migrateVolume\(\) again/g, 'Run `galleonfs volume migrate` again'],
  [/clone the snapshot \(cloneVolume\)/g, 'clone the snapshot (`galleonfs volume clone <volume> <new-name> --snapshot <snapshot>`)'],
  [/listVolumes\(\)/g, '`galleonfs volume list`'],
  [/ \(openVolumeFile\)/g, ''],
  [/listSnapshots\(\)/g, '`galleonfs snapshot list <volume>`'],
  [/listBackups\(\)/g, '`galleonfs backup list --target <dir>`'],
  [/adoptBackup\("([^"]*)"\)/g, '`galleonfs backup adopt $1`'],
  [/listBackupPolicies\(\)/g, '`galleonfs backup policy list`'],
  [/(?:a later|the next) deleteBackup(?: on the target)? collects them/g, 'the next run of a policy that prunes a backup there collects them'],
  [/migrateVolume\(vol, \{ storageClass: 'encrypted-storage' \}\)/g, '`galleonfs volume migrate <volume> --storage-class encrypted-storage`'],
  // A mount refused for a word of the volume's storage class (src/mount/mount-words.ts).
  [/of volume (\S+) lists ([^]*?)\(migrateVolume\(vol, \{ storageClass \}\)\)/g, 'of volume $1 lists $2(`galleonfs volume migrate $1 --storage-class <class>`)'],
  [/a storage class without (it|them) \(createStorageClass\)/g, 'a storage class without $1 (`galleonfs storage-class create <file>`)'],
  [/or open GalleonFS with a mount driver that applies (it|them)/g, 'or start the daemon with a mount driver that applies $1 (mount_driver in [drivers])'],
  [/\(and those a mount driver of one's own lists in MountDriver\.options\)/g, '(and those the daemon\'s mount_driver lists, when it is a driver of your own)'],
  [/GET \/v1\/mounts lists the mounts|listMounts\(\) shows the mounts/g, '`galleonfs mount list` shows the mounts'],
  [/listStorageClasses\(\)/g, '`galleonfs storage-class list`'],
  [/listPools\(\)/g, '`galleonfs pool list`'],
  [/clusterStatus\(\) lists the members/g, '`galleonfs cluster status` lists the members'],
  [/twice leaseTtlMs have passed since it stopped \(at most leaseTtlMs after its lease ended\)/g, 'twice the daemon\'s cluster lease_ttl have passed since it stopped (at most one lease_ttl after its lease ended)'],
  [/let it leave with leaveCluster\(\)/g, 'let it leave with `galleonfs cluster leave` on it'],
  [/a node leaves with leaveCluster\(\)/g, 'a node leaves with `galleonfs cluster leave`'],
  [/createPool\(\)/g, '`galleonfs pool create`'],
  [/capacity or overcommitRatio with updatePool\("([^"]*)", \.\.\.\)/g, 'capacity or overcommit with `galleonfs pool update $1 --capacity <size>`'],
  [/updatePool\(\)/g, '`galleonfs pool update`'],
  [/open it with \{ cluster \} \(or joinCluster\), or create the volume with replicas: 1/g, 'join a cluster (`galleonfs cluster join <address>`), or create the volume with --replicas 1'],
  [/not in a cluster \(joinCluster, or open it with \{ cluster \}\)/g, 'not in a cluster (`galleonfs cluster join <address>` joins one)'],
  [/pass \{ target: '\/path\/to\/backups' \} or open GalleonFS with \{ backupTarget \}/g, 'give --target <dir> (or start the daemon with backup_target in [drivers])']
]

/** A message of the daemon (the library's words) with its fixes said as CLI commands and flags. */
export function inCliTerms (message: string): string {
  return CLI_FIXES.reduce((text, [phrase, replacement]) => text.replace(phrase, replacement), message)
}

/** A daemon that took the connection but did not answer within `seconds`, the value of `flag`. */
export function noAnswerInTime (address: string, seconds: number, flag = '--timeout'): NoAnswer {
  return new NoAnswer('timeout', `the daemon at ${address} accepted the connection but did not answer within ${seconds} s; it may be stopped (SIGSTOP), hung or overloaded: see its log, or wait longer with ${flag} <seconds>`)
}

/** What a request that got no answer is reported as: nobody there, no answer in time, or a cut connection. */
function noAnswer (globals: Globals, err: unknown, timeoutMs: number): NoAnswer {
  const address = globals.daemonAddress
  // host:port, without the scheme: what --ipc-address takes and https:// is put before.
  const { address: hostPort, https } = daemonEndpoint(address)
  if (err instanceof NoAnswer && err.kind === 'timeout') return noAnswerInTime(address, timeoutMs / 1000)
  const code = (err as NodeJS.ErrnoException).code
  // HTTPS and HTTP mixed up: an HTTP client's request is not a TLS hello (the daemon hangs up), and
  // an HTTPS client's hello is answered in plain HTTP (no TLS record).
  if (!https && (code === 'ECONNRESET' || code === 'EPIPE')) return new NoAnswer('closed', `the daemon at ${address} closed the connection without answering; see its log (if it serves HTTPS, with --ipc-tls-cert-file, give --daemon-address as https://${hostPort})`)
  if (https && (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'EPROTO' || /wrong version number|packet length too long/i.test((err as Error)?.message ?? ''))) return new NoAnswer('refused', `the daemon at ${address} does not speak HTTPS; give --daemon-address without https://, or start the daemon with --ipc-tls-cert-file and --ipc-tls-key-file`)
  if (https && typeof code === 'string' && /CERT|SELF_SIGNED|ERR_TLS_CERT_ALTNAME_INVALID|UNABLE_TO_VERIFY/.test(code)) return new NoAnswer('refused', `the daemon's certificate at ${address} was not accepted (${(err as Error).message}); give the CA that signed it with --daemon-ca-file (or GALLEONFS_DAEMON_CA_FILE), and an address its certificate names`)
  if (code === 'ECONNRESET' || code === 'EPIPE') return new NoAnswer('closed', `the daemon at ${address} closed the connection without answering; see its log`)
  // Something listens there that does not speak HTTP (an SSH server, a database, an NBD server).
  if (typeof code === 'string' && code.startsWith('HPE_')) return new NoAnswer('refused', `the server at ${address} did not answer in HTTP (${(err as Error).message}), not as a GalleonFS daemon does; check that --daemon-address is the daemon's --ipc-address (another program may listen there)`)
  if (code === 'ENOTFOUND') return new NoAnswer('unreachable', `the host name ${JSON.stringify(daemonEndpoint(address).host)} of --daemon-address ${address} is not known (${code}); give the daemon's --ipc-address, such as 127.0.0.1:8090`)
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'EADDRNOTAVAIL' || code === 'EAI_AGAIN') {
    return new NoAnswer('unreachable', `no GalleonFS daemon answers at ${address}; start it with \`galleonfs -d --ipc-address ${hostPort}${https ? ' --ipc-tls-cert-file <cert.pem> --ipc-tls-key-file <key.pem>' : ''}\`, or point the CLI at it with --daemon-address`)
  }
  return new NoAnswer('unreachable', `cannot reach the daemon at ${address}: ${(err as Error)?.message ?? String(err)}`)
}

/**
 * Stops waiting on an answer whose body stalls: when nothing of it has come for `idleMs` (`more()`
 * is called for each part that comes), the connection is cut with a NoAnswer saying so.
 */
function watchStall (globals: Globals, response: IncomingMessage, idleMs: number): { more: () => void, unwatch: () => void } {
  const stalled = (): void => {
    response.destroy(new NoAnswer('timeout', `the daemon at ${globals.daemonAddress} began its answer but sent nothing more of it for ${idleMs / 1000} s; it may be stopped (SIGSTOP), hung or overloaded: see its log, or wait longer with --timeout <seconds>`))
  }
  const timer = setTimeout(stalled, idleMs)
  return { more: () => { timer.refresh() }, unwatch: () => { clearTimeout(timer) } }
}

/**
 * The whole body of an answer as text; NoAnswer when the daemon cuts it short, or sends nothing
 * more of it for `idleMs` (a body is sent at once: a gap that long is a daemon that hangs).
 */
async function readAll (globals: Globals, response: IncomingMessage, idleMs: number): Promise<string> {
  const chunks: Buffer[] = []
  const { more, unwatch } = watchStall(globals, response, idleMs)
  try {
    for await (const chunk of response) {
      more()
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (err instanceof NoAnswer) throw err
    throw new NoAnswer('closed', `the daemon at ${globals.daemonAddress} ended its answer early; see its log`)
  } finally {
    unwatch()
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** One API call; its JSON answer (the text of a text/plain one). */
export async function call (globals: Globals, method: string, path: string, body?: unknown, options: { timeoutMs?: number } = {}): Promise<unknown> {
  const response = await request(globals, method, path, body, options)
  const text = await readAll(globals, response, response.timeoutMs)
  if (text === '') return undefined
  const type = response.headers['content-type'] ?? ''
  if (/^text\/plain\b/i.test(type)) return text
  try {
    return JSON.parse(text)
  } catch {
    // A cut or garbled body would otherwise reach a command as a string (`list.map is not a function`).
    throw notGalleon(globals, /json/i.test(type) ? `sent a JSON answer that is cut short or garbled (${shortText(text)})` : `answered in ${type === '' ? 'no declared type' : type.split(';')[0]} (${shortText(text)})`)
  }
}

/**
 * How long past --timeout a streamed answer may go without a line before the CLI gives up; the
 * daemon sends one at least every 5 s (STREAM_KEEPALIVE_MS in daemon.ts), an empty one if need be.
 */
const STREAM_SILENCE_MS = 15_000

/**
 * A long operation: the daemon streams its answer (it begins at once, progress lines follow while
 * the operation runs, then the result), so it may take as long as it needs. On a terminal (or with
 * --progress) the progress is drawn as a bar on stderr.
 */
export async function callLong (globals: Globals, label: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const show = globals.progress ?? (process.stderr.isTTY === true && globals.json !== true)
  const response = await request(globals, method, path, body, { accept: NDJSON })
  // Loaded here: only long operations draw a bar.
  const { Presets, SingleBar } = await import('cli-progress')
  const bar = new SingleBar({
    format: `${label} [{bar}] {percentage}% | {done} of {all} | {eta_formatted} left`,
    stream: process.stderr,
    hideCursor: true,
    noTTYOutput: process.stderr.isTTY !== true,
    notTTYSchedule: 1000,
    // Not cli-progress's own handler: it only stops the bar, and a process with a SIGINT listener
    // does not end, so Ctrl-C left the operation running to its end and the CLI exiting 0.
    gracefulExit: false
  }, Presets.shades_classic)
  let started = false
  // Ctrl-C (or SIGTERM) while the bar is drawn: the terminal gets its cursor and line wrap back,
  // then the signal ends the process as it would without a bar (exit 130 or 143), which closes the
  // connection: the daemon cancels the backup or restore (a restore into a new volume removes it).
  const interrupted = (signal: NodeJS.Signals): void => {
    process.removeListener('SIGINT', interrupted)
    process.removeListener('SIGTERM', interrupted)
    bar.stop()
    response.destroy()
    process.kill(process.pid, signal)
  }
  let outcome: { result?: unknown, error?: { code?: string, message?: string } } | undefined
  let pending = ''
  const decoder = new TextDecoder()
  const cut = (): CliError => new CliError(`the daemon at ${globals.daemonAddress} ended the answer before the operation finished; see its log`)
  const take = (line: string): void => {
    if (line.trim() === '') return
    let parsed: unknown
    try {
      parsed = JSON.parse(line)
    } catch {
      throw cut()
    }
    const message = parsed as { progress?: { bytesDone: number, bytesTotal: number }, result?: unknown, error?: { code?: string, message?: string } }
    if (message.progress !== undefined) {
      if (!show) return
      const { bytesDone, bytesTotal } = message.progress
      const sizes = { done: formatSize(bytesDone), all: formatSize(bytesTotal) }
      if (!started) {
        bar.start(bytesTotal, bytesDone, sizes)
        started = true
        process.once('SIGINT', interrupted)
        process.once('SIGTERM', interrupted)
      } else {
        bar.setTotal(bytesTotal)
        bar.update(bytesDone, sizes)
      }
    } else {
      outcome = message
    }
  }
  // The daemon sends a line (progress, or an empty one) every few seconds while the operation runs:
  // silence well past that is a daemon that hangs (stopped, or its machine gone), not a slow operation.
  const { more, unwatch } = watchStall(globals, response, response.timeoutMs + STREAM_SILENCE_MS)
  try {
    for await (const chunk of response as AsyncIterable<Uint8Array>) {
      more()
      pending += decoder.decode(chunk, { stream: true })
      let newline: number
      while ((newline = pending.indexOf('\n')) >= 0) {
        take(pending.slice(0, newline))
        pending = pending.slice(newline + 1)
      }
    }
    take(pending)
  } catch (err) {
    // The connection cut (the daemon died or was stopped) or a garbled line.
    throw err instanceof CliError ? err : cut()
  } finally {
    unwatch()
    process.removeListener('SIGINT', interrupted)
    process.removeListener('SIGTERM', interrupted)
    if (started) bar.stop()
  }
  if (outcome === undefined) throw cut()
  if (outcome.error !== undefined) throw new CliError(`${outcome.error.code ?? 'ERROR'}: ${inCliTerms(outcome.error.message ?? '')}`)
  return outcome.result
}
