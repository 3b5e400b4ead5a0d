// The daemon's audit log routes: `GET /v1/audit` (queryAuditLog, its filters as query
// parameters), `GET /v1/audit/verify` (verifyAuditLog, against a head kept elsewhere when given)
// and `GET /v1/audit/head` (auditHead, the record to keep elsewhere).

import { GalleonError, type AuditEntry, type AuditQuery, type AuditVerification, type GalleonFS } from '../src/index.js'

/** The query parameters of `url` as one value each; a repeated one is refused (which would count?). */
function singleParameters (url: URL): Map<string, string> {
  const params = new Map<string, string>()
  for (const [key, value] of url.searchParams) {
    if (params.has(key)) throw new GalleonError('INVALID_ARGUMENT', `the query parameter ${JSON.stringify(key)} is given twice; give it once`)
    params.set(key, value)
  }
  return params
}

/**
 * The filter a `GET /v1/audit` asks for. Values come as text: times of digits only are epoch
 * milliseconds (anything else is handed on as an ISO-8601 time), a limit of digits a number.
 * Every parameter goes to the library, which refuses one it does not know (naming the filters it
 * takes) rather than ignore it: a misspelt filter would answer with every entry.
 */
export function auditQuery (url: URL): AuditQuery {
  const query: Record<string, unknown> = {}
  for (const [key, value] of singleParameters(url)) {
    if ((key === 'from' || key === 'to') && /^-?\d+$/.test(value)) query[key] = Number(value)
    else if (key === 'limit' && /^\d+$/.test(value)) query[key] = Number(value)
    else query[key] = value
  }
  return query as AuditQuery
}

/** `GET /v1/audit/<what>`: verify (with `seq` and `hash`, against that head) or head; undefined for another. */
export async function auditRoute (g: GalleonFS, what: string, url: URL): Promise<AuditVerification | { seq: number, hash: string } | AuditEntry[] | undefined> {
  const params = singleParameters(url)
  if (what === 'head') {
    if (params.size > 0) throw new GalleonError('INVALID_ARGUMENT', `GET /v1/audit/head takes no query parameters, got ${JSON.stringify([...params.keys()][0])}`)
    return await g.auditHead()
  }
  if (what !== 'verify') return undefined
  const unknown = [...params.keys()].find((key) => key !== 'seq' && key !== 'hash')
  if (unknown !== undefined) throw new GalleonError('INVALID_ARGUMENT', `unknown query parameter ${JSON.stringify(unknown)} for GET /v1/audit/verify; it takes seq and hash (a head from GET /v1/audit/head), or none`)
  const seq = params.get('seq')
  const hash = params.get('hash')
  if (seq === undefined && hash === undefined) return await g.verifyAuditLog()
  if (seq === undefined || hash === undefined || !/^\d+$/.test(seq) || !/^[0-9a-f]{64}$/.test(hash)) {
    throw new GalleonError('INVALID_ARGUMENT', 'GET /v1/audit/verify takes seq and hash together: the sequence number and the 64 hex digits of a head from GET /v1/audit/head')
  }
  return await g.verifyAuditLog({ seq: Number(seq), hash })
}
