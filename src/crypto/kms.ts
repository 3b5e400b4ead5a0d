// Key providers that reach a key management service outside the process: by running a command
// (a KMS CLI, a script around an HSM tool) or by calling an HTTP endpoint. Both are external
// providers (the KEK never enters this process): they send the data key or its wrapped form and
// get the other back.
//
// Command protocol: `command ...args wrap|unwrap`; the bytes to transform come base64-encoded on
// stdin, the result is expected base64-encoded on stdout (surrounding whitespace ignored); the
// environment carries GALLEONFS_KEY_ID and GALLEONFS_KEY_CONTEXT (what the key belongs to, to bind
// the wrapping to it). Exit status 0 means success; otherwise stderr is reported.
//
// HTTP protocol: `POST <url>` with the JSON body { "operation": "wrap" | "unwrap", "keyId",
// "context", "data": base64 } and, if a token is configured, `Authorization: Bearer <token>`; a 200
// answer carries { "data": base64 }. Any other status is a failure (its body is reported).

import { childEnvironment } from '../child-env.js'
import { GalleonError, describe } from '../errors.js'
import { runOffLoop } from '../off-loop-command.js'
import { ExternalKeyProvider, MAX_TIMER_MS } from './keys.js'
import { KeyProviderTimeout } from './provider-timeout.js'

type Operation = 'wrap' | 'unwrap'

const DEFAULT_TIMEOUT_MS = 30_000
/** Most output accepted from a KMS (a wrapped 32-byte key is far smaller). */
const MAX_OUTPUT_BYTES = 64 * 1024

/** Options of `commandKeyProvider`. */
export interface CommandKeyProviderOptions {
  /** Names the KEK in the KMS (recorded with the volumes' keys; passed as GALLEONFS_KEY_ID). */
  readonly keyId: string
  /** Program to run (looked up on PATH), without a shell. */
  readonly command: string
  /** Arguments before the operation (`wrap` or `unwrap`), which comes last. */
  readonly args?: readonly string[]
  /** A call taking longer fails (default 30 s). */
  readonly timeoutMs?: number
}

/** Options of `httpKeyProvider`. */
export interface HttpKeyProviderOptions {
  readonly keyId: string
  /** The endpoint: https:, or http: to this machine (loopback) unless `insecure`. No credentials in it. */
  readonly url: string
  /** Sent as `Authorization: Bearer <token>`. */
  readonly token?: string
  readonly timeoutMs?: number
  /** Allow plain http to another host (data keys then cross the network unencrypted). */
  readonly insecure?: boolean
}

const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]', '::1'])

/** A response body up to MAX_OUTPUT_BYTES, or undefined when it is longer. */
async function readLimited (response: Response): Promise<string | undefined> {
  const chunks: Uint8Array[] = []
  let size = 0
  try {
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      size += chunk.byteLength
      if (size > MAX_OUTPUT_BYTES) {
        await response.body?.cancel().catch(() => {})
        return undefined
      }
      chunks.push(chunk)
    }
  } catch {
    // A body cut short: what arrived is judged as it is.
  }
  return Buffer.concat(chunks).toString('utf8')
}

function checkCommon (what: string, options: { keyId?: unknown, timeoutMs?: unknown } | null | undefined): number {
  if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `${what} needs an options object, got ${describe(options)}`)
  if (typeof options.keyId !== 'string' || options.keyId.length === 0) throw new GalleonError('INVALID_ARGUMENT', `${what} needs keyId, the name of the key in the KMS, got ${describe(options.keyId)}`)
  const timeout = options.timeoutMs ?? DEFAULT_TIMEOUT_MS
  if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0) throw new GalleonError('INVALID_ARGUMENT', `${what}: timeoutMs must be a positive number of milliseconds, got ${describe(options.timeoutMs)}`)
  // Node's timers take at most 2^31 - 1 ms; a longer limit would fire at once. (5 s of that are
  // left for the ExternalKeyProvider's own, later limit.)
  return Math.min(timeout, MAX_TIMER_MS - 5000)
}

/** The KMS's answer as bytes. Never quotes what it got: an unwrap's answer is a plaintext key. */
function decodeBase64 (text: string, source: string): Uint8Array {
  const trimmed = text.trim()
  if (trimmed.length === 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(trimmed)) throw new GalleonError('BACKEND_UNAVAILABLE', `${source} did not answer with base64 data (got ${trimmed.length} characters that are not plain base64; the protocol wants the bytes alone, base64-encoded)`)
  return new Uint8Array(Buffer.from(trimmed, 'base64'))
}

/** A key provider that runs a command for every wrap and unwrap. */
export function commandKeyProvider (options: CommandKeyProviderOptions): ExternalKeyProvider {
  const timeoutMs = checkCommon('commandKeyProvider()', options)
  if (typeof options.command !== 'string' || options.command.length === 0) throw new GalleonError('INVALID_ARGUMENT', `commandKeyProvider() needs command, the program to run, got ${describe(options.command)}`)
  const args = options.args ?? []
  if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) throw new GalleonError('INVALID_ARGUMENT', `commandKeyProvider(): args must be a list of strings, got ${describe(options.args)}`)
  const { keyId, command } = options
  const run = async (operation: Operation, input: Uint8Array, context: string): Promise<Uint8Array> => {
    const source = `the KMS command ${command} (${operation})`
    // From a worker thread (see off-loop-command.ts): this process may have a file of one of its
    // own FUSE mounts open. In its own process group, so that a timeout kills whatever it started
    // too (a shell script's children would otherwise keep its pipes, and this call, open).
    const ran = await runOffLoop({
      command,
      args: [...args, operation],
      env: { ...childEnvironment(), GALLEONFS_KEY_ID: keyId, GALLEONFS_KEY_CONTEXT: context },
      input: Buffer.from(input).toString('base64') + '\n',
      timeoutMs,
      maxOutputBytes: MAX_OUTPUT_BYTES,
      processGroup: true
    })
    if (ran.startError !== undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `${source} could not be started: ${ran.startError}; check the command and PATH`)
    if (ran.killed === undefined && ran.code === 0) return decodeBase64(ran.stdout, source)
    const why = ran.killed === 'timeout'
      ? `did not answer within ${timeoutMs} ms and was killed`
      : ran.killed === 'output' ? `wrote more than ${MAX_OUTPUT_BYTES} bytes and was killed` : ran.signal !== null ? `was killed by ${ran.signal}` : `exited with status ${ran.code}`
    const stderr = ran.stderr.trim().slice(0, 500)
    throw new GalleonError('BACKEND_UNAVAILABLE', `${source} ${why}${stderr === '' ? '' : `: ${stderr}`}`, ran.killed === 'timeout' ? { cause: new KeyProviderTimeout(timeoutMs, source) } : {})
  }
  return new ExternalKeyProvider({
    keyId,
    wrap: async (dek, context) => await run('wrap', dek, context),
    unwrap: async (wrapped, context) => await run('unwrap', wrapped, context),
    // Its own limit (which kills the command and says so) comes first.
    timeoutMs: timeoutMs + 5000
  })
}

/** A key provider that calls an HTTP KMS endpoint for every wrap and unwrap. */
export function httpKeyProvider (options: HttpKeyProviderOptions): ExternalKeyProvider {
  const timeoutMs = checkCommon('httpKeyProvider()', options)
  let url: URL
  try {
    url = new URL(String(options.url))
  } catch {
    throw new GalleonError('INVALID_ARGUMENT', `httpKeyProvider() needs url, an http: or https: address, got ${describe(options.url)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new GalleonError('INVALID_ARGUMENT', `httpKeyProvider() needs an http: or https: url, got ${url.protocol}`)
  if (url.username !== '' || url.password !== '') throw new GalleonError('INVALID_ARGUMENT', 'httpKeyProvider(): the url must not carry credentials (user:password@); pass the token as { token } (the daemon: kms_token_file)')
  // Data keys cross the wire in the clear inside the request: plain http only to this machine.
  if (url.protocol === 'http:' && !LOOPBACK.has(url.hostname) && options.insecure !== true) {
    throw new GalleonError('INVALID_ARGUMENT', `httpKeyProvider(): ${url.origin} is plain http to another host, which would send data keys unencrypted over the network; use https, or pass { insecure: true } if the network is trusted`)
  }
  if (options.token !== undefined && (typeof options.token !== 'string' || options.token.length === 0)) throw new GalleonError('INVALID_ARGUMENT', `httpKeyProvider(): token must be a non-empty string, got ${describe(options.token)}`)
  const { keyId, token } = options
  // Messages name the endpoint without its query string (which may hold an API key).
  const where = `${url.origin}${url.pathname}`
  const call = async (operation: Operation, input: Uint8Array, context: string): Promise<Uint8Array> => {
    const source = `the KMS at ${where} (${operation})`
    let response: Response
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
        body: JSON.stringify({ operation, keyId, context, data: Buffer.from(input).toString('base64') }),
        // A redirect would send the request body, a plaintext data key for a wrap, somewhere else.
        redirect: 'error',
        signal: AbortSignal.timeout(timeoutMs)
      })
    } catch (err) {
      const cause = (err as { cause?: { code?: string, message?: string } })?.cause
      const why = (err as Error)?.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : cause?.code ?? cause?.message ?? (err as Error)?.name ?? 'request failed'
      throw new GalleonError('BACKEND_UNAVAILABLE', `${source} did not answer: ${why}`, { cause: (err as Error)?.name === 'TimeoutError' ? new KeyProviderTimeout(timeoutMs, source) : err })
    }
    const text = await readLimited(response)
    if (text === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `${source} answered ${response.status} with more than ${MAX_OUTPUT_BYTES} bytes`)
    // An error answer is quoted (it explains itself); a 200 answer never is (it may hold a key).
    if (response.status !== 200) throw new GalleonError('BACKEND_UNAVAILABLE', `${source} answered ${response.status}: ${text.slice(0, 300)}`)
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      throw new GalleonError('BACKEND_UNAVAILABLE', `${source} answered 200 with ${text.length} characters that are not JSON; the protocol wants { "data": base64 }`)
    }
    const data = (body as { data?: unknown } | null)?.data
    if (typeof data !== 'string') throw new GalleonError('BACKEND_UNAVAILABLE', `${source} answered without a base64 "data" field`)
    return decodeBase64(data, source)
  }
  return new ExternalKeyProvider({
    keyId,
    wrap: async (dek, context) => await call('wrap', dek, context),
    unwrap: async (wrapped, context) => await call('unwrap', wrapped, context),
    // Its own limit (which aborts the request and says so) comes first.
    timeoutMs: timeoutMs + 5000
  })
}
