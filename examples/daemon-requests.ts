// How the daemon answers one API request once it has started: the token and the request path
// checked, the route called, its result sent (JSON, Prometheus text, or progress lines then the
// result), and errors mapped to HTTP statuses; and the answer to what Node's HTTP parser refuses.

import { maxHeaderSize, type IncomingMessage, type ServerResponse } from 'node:http'
import { isGalleonError, PROMETHEUS_CONTENT_TYPE, type GalleonErrorCode, type GalleonFS } from '../src/index.js'
import { ConfigError, type DaemonConfig } from './daemon-config.js'
import type { Logger } from './daemon-log.js'
import { sameToken } from './daemon-token.js'
import { discardBody, HttpError, readBody, route, type RouteContext } from './daemon-routes.js'

/** Media type of a streamed answer: progress lines, then the result (asked for with Accept). */
const NDJSON = 'application/x-ndjson'
/** Progress lines are sent at most this often. */
const PROGRESS_INTERVAL_MS = 100
/**
 * A streamed answer gets a line at least this often (an empty one when there is no progress to
 * report), so a client tells a long operation from a daemon that hangs (see STREAM_SILENCE_MS in
 * cli-client.ts).
 */
const STREAM_KEEPALIVE_MS = 5_000

const STATUS: Partial<Record<GalleonErrorCode, number>> = {
  VOLUME_NOT_FOUND: 404, SNAPSHOT_NOT_FOUND: 404, BACKUP_NOT_FOUND: 404, POLICY_NOT_FOUND: 404, STORAGE_CLASS_NOT_FOUND: 404, POOL_NOT_FOUND: 404,
  VOLUME_EXISTS: 409, SNAPSHOT_EXISTS: 409, POLICY_EXISTS: 409, STORAGE_CLASS_EXISTS: 409, POOL_EXISTS: 409, BUSY: 409,
  INVALID_ARGUMENT: 400, OUT_OF_RANGE: 400, READ_ONLY: 409, PERMISSION_DENIED: 403, NOT_IMPLEMENTED: 501, NO_SPACE: 507,
  CANCELLED: 499, HOOK_FAILED: 424, BACKEND_UNAVAILABLE: 503, NOT_LEADER: 421, WRITE_CONCERN_UNSATISFIED: 503
}

/** The answer to a request Node's HTTP parser refused: status, code and what to do. */
export function parserRefusal (err: NodeJS.ErrnoException & { reason?: string }): [number, string, string] {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW': return [431, 'TOO_LARGE', `the request line and headers are limited to ${maxHeaderSize} bytes (names in the API are short: a volume name has at most 63 characters)`]
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW': return [413, 'TOO_LARGE', 'the chunk extensions of the request body are too large; send the body without them']
    case 'ERR_HTTP_REQUEST_TIMEOUT': return [408, 'REQUEST_TIMEOUT', 'the request did not arrive in time; send its headers and body at once']
    default: return [400, 'BAD_REQUEST', `the request is not HTTP/1.1 the daemon reads (${err.reason ?? err.message}); the API takes GET, POST, PUT, PATCH and DELETE requests with JSON bodies`]
  }
}

/** What answering a request uses of the daemon; the getters are read as each request is answered. */
export interface RequestContext {
  /** The configuration in effect (a reload changes it in place). */
  readonly config: DaemonConfig
  readonly log: Logger
  readonly g: () => GalleonFS
  readonly token: () => string
  /** What the routes may use besides the library, but for the request's own signal and progress. */
  readonly routes: Omit<RouteContext, 'signal' | 'progress'>
}

/** Answers one request (called once the daemon has started). */
export async function handleRequest (daemon: RequestContext, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const { config, log } = daemon
  const send = (status: number, body: unknown, type = 'application/json', close = false): void => {
    const text = typeof body === 'string' ? body : JSON.stringify(body)
    response.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), ...(close ? { connection: 'close' } : {}) })
    response.end(text)
  }
  let streaming = false
  // A request refused before its body was read (no token, say): the body is dropped, up to a bound.
  let bodyTaken = false
  const began = performance.now()
  // A client that goes away mid-answer cancels what it asked for (a backup, a restore).
  const gone = new AbortController()
  response.once('close', () => {
    if (!response.writableFinished) gone.abort()
    log('debug', 'request', { method: request.method, url: request.url, status: response.statusCode, ms: Math.round((performance.now() - began) * 10) / 10, ...(response.writableFinished ? {} : { cancelled: true }) })
  })
  try {
    if (request.headers.host === undefined && request.httpVersion === '1.1') throw new HttpError(400, 'BAD_REQUEST', 'an HTTP/1.1 request needs a Host header (RFC 9112); send Host: with the daemon\'s address')
    // The scheme's name is case-insensitive (RFC 9110), the token is not.
    const offered = /^Bearer +(\S+) *$/i.exec(request.headers.authorization ?? '')?.[1] ?? ''
    if (!sameToken(offered, daemon.token())) throw new HttpError(401, 'UNAUTHORIZED', 'a valid API token is required (Authorization: Bearer <token>); the CLI finds it in the runtime file or takes --token / GALLEONFS_TOKEN')
    const url = (() => {
      try {
        return new URL(request.url ?? '/', 'http://daemon')
      } catch {
        throw new HttpError(400, 'INVALID_ARGUMENT', `the request target ${JSON.stringify(request.url)} is not a URL path such as /v1/volumes`)
      }
    })()
    // URL parsing resolves dot segments (also %2e), backslashes and a leading // into another
    // path: DELETE /v1/volumes/v1/snapshots/.. would delete the volume v1. A target that is not
    // already in that normal form is refused instead.
    const target = (request.url ?? '/').replace(/^[a-z][a-z\d+.-]*:\/\/[^/?#]*/i, '').split(/[?#]/)[0] || '/'
    if (target !== url.pathname) {
      throw new HttpError(400, 'INVALID_ARGUMENT', `the request path ${JSON.stringify(target)} would name another path, ${url.pathname} (it holds a "." or ".." segment, a backslash, a leading "//" or a character to percent-encode); names are never "." or "..", and each is sent encoded with encodeURIComponent`)
    }
    bodyTaken = true
    const body = await readBody(request)
    const context: RouteContext = { ...daemon.routes, signal: gone.signal }
    if ((request.headers.accept ?? '').includes(NDJSON)) {
      // Progress lines while the operation runs, then one line with its result or error.
      streaming = true
      response.writeHead(200, { 'content-type': NDJSON })
      // The answer begins now (not with the first line): the client waits for its beginning
      // only so long, and an operation may run a while before it reports progress, or never.
      response.flushHeaders()
      const keepalive = setInterval(() => { if (!response.writableEnded) response.write('\n') }, STREAM_KEEPALIVE_MS)
      response.once('close', () => { clearInterval(keepalive) })
      let last = 0
      context.progress = ({ bytesDone, bytesTotal }) => {
        const now = Date.now()
        if (bytesDone < bytesTotal && bytesDone > 0 && now - last < PROGRESS_INTERVAL_MS) return
        last = now
        keepalive.refresh()
        response.write(JSON.stringify({ progress: { bytesDone, bytesTotal } }) + '\n')
      }
      try {
        const result = await route(daemon.g(), config, request.method ?? 'GET', url, body, context)
        response.end(JSON.stringify({ result: result ?? null }) + '\n')
      } finally {
        clearInterval(keepalive)
      }
      return
    }
    const result = await route(daemon.g(), config, request.method ?? 'GET', url, body, context)
    if (typeof result === 'string') send(200, result, PROMETHEUS_CONTENT_TYPE)
    else send(result === undefined ? 204 : 200, result ?? '')
  } catch (err) {
    const [status, error] = err instanceof HttpError
      ? [err.status, { code: err.code, message: err.message }]
      : err instanceof ConfigError
        ? [400, { code: 'INVALID_CONFIG', message: `${err.message}; the daemon keeps the configuration it had` }]
        : isGalleonError(err) ? [STATUS[err.code] ?? 500, { code: err.code, message: err.message }] : [500, { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) }]
    if (status === 500) log('error', 'request failed', { method: request.method, url: request.url, error: error.message })
    if (!bodyTaken) discardBody(request)
    if (streaming) response.end(JSON.stringify({ error }) + '\n')
    else send(status, { error }, undefined, err instanceof HttpError && err.closeConnection)
  }
}
