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

import { spawn } from 'node:child_process'
import { GalleonError, describe } from '../errors.js'
import { ExternalKeyProvider } from './keys.js'

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
  /** The endpoint, http: or https:. */
  readonly url: string
  /** Sent as `Authorization: Bearer <token>`. */
  readonly token?: string
  readonly timeoutMs?: number
}

function checkCommon (what: string, options: { keyId?: unknown, timeoutMs?: unknown } | null | undefined): number {
  if (options === null || typeof options !== 'object') throw new GalleonError('INVALID_ARGUMENT', `${what} needs an options object, got ${describe(options)}`)
  if (typeof options.keyId !== 'string' || options.keyId.length === 0) throw new GalleonError('INVALID_ARGUMENT', `${what} needs keyId, the name of the key in the KMS, got ${describe(options.keyId)}`)
  const timeout = options.timeoutMs ?? DEFAULT_TIMEOUT_MS
  if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0) throw new GalleonError('INVALID_ARGUMENT', `${what}: timeoutMs must be a positive number of milliseconds, got ${describe(options.timeoutMs)}`)
  return timeout
}

function decodeBase64 (text: string, source: string): Uint8Array {
  const trimmed = text.trim()
  if (trimmed.length === 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(trimmed)) throw new GalleonError('BACKEND_UNAVAILABLE', `${source} did not answer with base64 data (got ${JSON.stringify(trimmed.slice(0, 80))})`)
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
    const output = await new Promise<string>((resolve, reject) => {
      const child = spawn(command, [...args, operation], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, GALLEONFS_KEY_ID: keyId, GALLEONFS_KEY_CONTEXT: context },
        timeout: timeoutMs,
        killSignal: 'SIGKILL'
      })
      const out: Buffer[] = []
      const err: Buffer[] = []
      let size = 0
      child.stdout.on('data', (chunk: Buffer) => {
        size += chunk.byteLength
        if (size > MAX_OUTPUT_BYTES) child.kill('SIGKILL')
        else out.push(chunk)
      })
      child.stderr.on('data', (chunk: Buffer) => { if (err.length < 64) err.push(chunk) })
      child.once('error', (error) => { reject(new GalleonError('BACKEND_UNAVAILABLE', `${source} could not be started: ${error.message}; check the command and PATH`, { cause: error })) })
      // A command that exits without reading its input must not crash us with EPIPE.
      child.stdin.on('error', () => {})
      child.once('close', (code, signal) => {
        if (code === 0 && size <= MAX_OUTPUT_BYTES) { resolve(Buffer.concat(out).toString('utf8')); return }
        const why = size > MAX_OUTPUT_BYTES
          ? `wrote more than ${MAX_OUTPUT_BYTES} bytes`
          : signal !== null ? `was killed by ${signal}${signal === 'SIGKILL' ? ` (after ${timeoutMs} ms?)` : ''}` : `exited with status ${code}`
        const stderr = Buffer.concat(err).toString('utf8').trim().slice(0, 500)
        reject(new GalleonError('BACKEND_UNAVAILABLE', `${source} ${why}${stderr === '' ? '' : `: ${stderr}`}`))
      })
      child.stdin.end(Buffer.from(input).toString('base64') + '\n')
    })
    return decodeBase64(output, source)
  }
  return new ExternalKeyProvider({
    keyId,
    wrap: async (dek, context) => await run('wrap', dek, context),
    unwrap: async (wrapped, context) => await run('unwrap', wrapped, context)
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
  if (options.token !== undefined && (typeof options.token !== 'string' || options.token.length === 0)) throw new GalleonError('INVALID_ARGUMENT', `httpKeyProvider(): token must be a non-empty string, got ${describe(options.token)}`)
  const { keyId, token } = options
  const call = async (operation: Operation, input: Uint8Array, context: string): Promise<Uint8Array> => {
    const source = `the KMS at ${url.origin}${url.pathname} (${operation})`
    let response: Response
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
        body: JSON.stringify({ operation, keyId, context, data: Buffer.from(input).toString('base64') }),
        signal: AbortSignal.timeout(timeoutMs)
      })
    } catch (err) {
      throw new GalleonError('BACKEND_UNAVAILABLE', `${source} did not answer: ${(err as Error)?.message ?? String(err)}`, { cause: err })
    }
    const text = await response.text().catch(() => '')
    if (response.status !== 200) throw new GalleonError('BACKEND_UNAVAILABLE', `${source} answered ${response.status}: ${text.slice(0, 300)}`)
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      throw new GalleonError('BACKEND_UNAVAILABLE', `${source} did not answer with JSON: ${text.slice(0, 80)}`)
    }
    const data = (body as { data?: unknown } | null)?.data
    if (typeof data !== 'string') throw new GalleonError('BACKEND_UNAVAILABLE', `${source} answered without a base64 "data" field`)
    return decodeBase64(data, source)
  }
  return new ExternalKeyProvider({
    keyId,
    wrap: async (dek, context) => await call('wrap', dek, context),
    unwrap: async (wrapped, context) => await call('unwrap', wrapped, context)
  })
}
