// TLS for the NBD server (NBD_OPT_STARTTLS, doc/proto.md "TLS support"): the options that turn it
// on, checked up front, and the upgrade of a session's socket. A server given TLS runs in the
// protocol's FORCEDTLS mode: every option but NBD_OPT_STARTTLS (and NBD_OPT_ABORT) is answered
// NBD_REP_ERR_TLS_REQD until the client has upgraded, and NBD_OPT_EXPORT_NAME ends the session.
// Credentials are x509 (a server certificate, and optionally a CA that every client's certificate
// must chain to) and/or pre-shared keys (an identity per client, as qemu-nbd and nbdkit take
// them from a `username:hexkey` file).

import type { Socket } from 'node:net'
import { TLSSocket, createSecureContext, type SecureContext } from 'node:tls'
import { GalleonError, describe } from '../../src/errors.js'

/** TLS credentials of an NBD server (`NbdServer.listen(g, { tls })`). */
export interface NbdTlsOptions {
  /** The server's certificate chain, PEM (with `key`). */
  readonly cert?: string | Uint8Array
  /** The server certificate's private key, PEM (with `cert`). */
  readonly key?: string | Uint8Array
  /**
   * CA certificates, PEM: given, every client must present a certificate that chains to one of
   * them (x509 client authentication, as qemu-nbd's `verify-peer=on`), unless it connects with a
   * pre-shared key (`psk` given too); without it, any client that completes the handshake is served.
   */
  readonly ca?: string | Uint8Array
  /**
   * Pre-shared keys by client identity: each key given as bytes or as hex (at least 16 bytes,
   * as `psktool` makes them). A client connects as one of these identities with its key.
   * `parsePskFile` reads the `identity:hexkey` lines of qemu's and nbdkit's PSK files.
   */
  readonly psk?: Readonly<Record<string, string | Uint8Array>>
}

/** TLS as a server uses it: the context, whether clients must present certificates, the keys. */
export interface NbdTls {
  readonly context: SecureContext
  readonly verifyClients: boolean
  readonly psk: ReadonlyMap<string, Buffer> | undefined
}

const KNOWN_KEYS = new Set(['cert', 'key', 'ca', 'psk'])
/** Shortest pre-shared key taken, in bytes (128 bits). */
const MIN_PSK_BYTES = 16
/** TLS 1.3 suites with pre-shared keys, in the server's order: those whose hash (SHA-256) a PSK from the callback can use first. */
const TLS13_PSK_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384'
/** Longest identity taken (RFC 4279 allows 2^16 - 1 bytes; GnuTLS and OpenSSL take 128 at most in practice). */
const MAX_IDENTITY_BYTES = 128

function pem (value: unknown, name: string): string | Buffer | undefined {
  if (value === undefined) return undefined
  if (typeof value === 'string') {
    if (!value.includes('-----BEGIN ')) throw new GalleonError('INVALID_ARGUMENT', `tls.${name} must be PEM text (it starts with "-----BEGIN "); read the file first, e.g. readFileSync(path, 'utf8'), got a string without a PEM header`)
    return value
  }
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  throw new GalleonError('INVALID_ARGUMENT', `tls.${name} must be PEM text or its bytes, got ${describe(value)}`)
}

function pskKey (identity: string, value: unknown): Buffer {
  let key: Buffer
  if (typeof value === 'string') {
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(value)) throw new GalleonError('INVALID_ARGUMENT', `the pre-shared key of "${identity}" must be hex digits (an even number of them), as psktool writes it`)
    key = Buffer.from(value, 'hex')
  } else if (value instanceof Uint8Array) {
    key = Buffer.from(value)
  } else {
    throw new GalleonError('INVALID_ARGUMENT', `the pre-shared key of "${identity}" must be hex text or bytes, got ${describe(value)}`)
  }
  if (key.byteLength < MIN_PSK_BYTES) throw new GalleonError('INVALID_ARGUMENT', `the pre-shared key of "${identity}" has ${key.byteLength} bytes; use at least ${MIN_PSK_BYTES} (e.g. psktool -u ${identity} -p keys.psk, or 32 random bytes in hex)`)
  return key
}

/** Checks `tls` options and builds what the server uses; INVALID_ARGUMENT names what is wrong. */
export function checkTlsOptions (tls: unknown): NbdTls {
  if (tls === null || typeof tls !== 'object' || Array.isArray(tls)) throw new GalleonError('INVALID_ARGUMENT', `tls must be an object such as { cert, key } or { psk: { alice: '<hex key>' } }, got ${describe(tls)}`)
  for (const key of Object.keys(tls)) if (!KNOWN_KEYS.has(key)) throw new GalleonError('INVALID_ARGUMENT', `tls has no option "${key}" (it takes cert, key, ca and psk)`)
  const options = tls as NbdTlsOptions
  const cert = pem(options.cert, 'cert')
  const key = pem(options.key, 'key')
  const ca = pem(options.ca, 'ca')
  if ((cert === undefined) !== (key === undefined)) throw new GalleonError('INVALID_ARGUMENT', `tls.${cert === undefined ? 'cert' : 'key'} is missing: a server certificate needs both cert and key`)
  if (ca !== undefined && cert === undefined) throw new GalleonError('INVALID_ARGUMENT', 'tls.ca checks the clients\' certificates, which needs a server certificate too: give cert and key as well')
  let psk: Map<string, Buffer> | undefined
  if (options.psk !== undefined) {
    if (options.psk === null || typeof options.psk !== 'object' || Array.isArray(options.psk)) throw new GalleonError('INVALID_ARGUMENT', `tls.psk must map client identities to keys, such as { alice: '<hex key>' }, got ${describe(options.psk)}`)
    psk = new Map()
    for (const [identity, value] of Object.entries(options.psk)) {
      const bytes = Buffer.byteLength(identity)
      if (bytes === 0 || bytes > MAX_IDENTITY_BYTES || identity.includes(':') || /[\0-\x1f]/.test(identity)) throw new GalleonError('INVALID_ARGUMENT', `the PSK identity ${JSON.stringify(identity.slice(0, 200))} must be 1 to ${MAX_IDENTITY_BYTES} bytes, without ":" or control characters`)
      psk.set(identity, pskKey(identity, value))
    }
    if (psk.size === 0) throw new GalleonError('INVALID_ARGUMENT', 'tls.psk names no identity: give at least one, such as { alice: \'<hex key>\' }')
  }
  if (cert === undefined && psk === undefined) throw new GalleonError('INVALID_ARGUMENT', 'tls needs credentials: a certificate (cert and key, optionally ca) or pre-shared keys (psk)')
  let context: SecureContext
  try {
    context = createSecureContext({
      cert,
      key,
      ca,
      minVersion: 'TLSv1.2',
      // With pre-shared keys, TLS 1.2 clients need the PSK cipher suites. In TLS 1.3, OpenSSL takes
      // a key from the PSK callback only under a SHA-256 suite: picked by the client's preference
      // (GnuTLS, so nbdinfo and qemu, lists TLS_AES_256_GCM_SHA384 first), a server that also has a
      // certificate would fall back to it and fail every PSK client. So the server's order decides,
      // SHA-256 suites first (TLS_AES_128_GCM_SHA256 is one every TLS 1.3 client implements).
      ...(psk === undefined ? {} : { ciphers: `${TLS13_PSK_SUITES}:${cert === undefined ? '' : 'HIGH:'}PSK:!aNULL:!eNULL:!MD5:!RC4:!3DES`, honorCipherOrder: true })
    })
  } catch (err) {
    throw new GalleonError('INVALID_ARGUMENT', `the TLS credentials were refused: ${(err as Error).message} (check that cert, key and ca are the PEM files meant, and that key belongs to cert)`, { cause: err })
  }
  return { context, verifyClients: ca !== undefined, psk }
}

/**
 * Reads a PSK file as qemu-nbd and nbdkit take it (`psktool` writes it): one `identity:hexkey` per
 * line; blank lines and lines starting with `#` are skipped. The result is what `tls.psk` takes.
 */
export function parsePskFile (text: string, source = 'the PSK file'): Record<string, string> {
  const keys: Record<string, string> = {}
  const lines = text.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).trim()
    if (line === '' || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    if (colon <= 0) throw new GalleonError('INVALID_ARGUMENT', `${source}, line ${i + 1}: expected identity:hexkey (as psktool writes), got a line without an identity before ":"`)
    const identity = line.slice(0, colon)
    if (Object.hasOwn(keys, identity)) throw new GalleonError('INVALID_ARGUMENT', `${source}, line ${i + 1}: the identity "${identity}" is given twice; keep one line per identity`)
    const key = line.slice(colon + 1)
    try {
      pskKey(identity, key)
    } catch (err) {
      throw new GalleonError('INVALID_ARGUMENT', `${source}, line ${i + 1}: ${(err as Error).message}`)
    }
    keys[identity] = key
  }
  if (Object.keys(keys).length === 0) throw new GalleonError('INVALID_ARGUMENT', `${source} holds no key: add a line identity:hexkey (psktool -u <identity> -p <file> makes one)`)
  return keys
}

/**
 * Upgrades a session's socket to TLS, the server's side; the handshake runs as data arrives (the
 * client starts it once it has read NBD_REP_ACK). A failed handshake (a wrong key, a certificate
 * the CA did not sign) errors and closes the socket.
 */
export function startTls (socket: Socket, tls: NbdTls): TLSSocket {
  const secured = new TLSSocket(socket, {
    isServer: true,
    secureContext: tls.context,
    requestCert: tls.verifyClients,
    rejectUnauthorized: tls.verifyClients,
    ...(tls.psk === undefined ? {} : { pskCallback: (_socket: TLSSocket, identity: string) => tls.psk?.get(identity) ?? null })
  })
  secured.setNoDelay(true)
  return secured
}

/**
 * Resolves to true once the TLS handshake of `secured` (made by startTls) is done and, when the
 * server checks client certificates (`ca`), the client's certificate chains to the CA; to false,
 * with the socket destroyed, when the handshake failed, the certificate does not verify, or the
 * connection closed first. Nothing may be read from or told to the client before it is true.
 */
export async function established (secured: TLSSocket, tls: NbdTls): Promise<boolean> {
  const secure = await new Promise<boolean>((resolve) => {
    if (secured.destroyed) { resolve(false); return }
    const settle = (outcome: boolean): void => { secured.off('secure', onSecure); secured.off('close', onClose); resolve(outcome) }
    const onSecure = (): void => { settle(true) }
    const onClose = (): void => { settle(false) }
    // 'secure': the server side's end of the handshake (what tls.Server waits for too).
    secured.once('secure', onSecure)
    secured.once('close', onClose)
  })
  if (!secure || secured.destroyed) return false
  if (tls.verifyClients) {
    // OpenSSL, as Node sets it up, finishes every handshake whatever the client's certificate and
    // leaves the verdict for later: tls.Server reads it in its own connection handler, which a
    // TLSSocket made over a running connection (as STARTTLS needs) never passes through. Without
    // this check, a certificate of any CA (or a self-signed one) would be taken. Node exposes the
    // verdict on the socket's `ssl` handle only; if that ever goes, every client is refused.
    const handle = (secured as unknown as { ssl?: { verifyError?: () => Error | null | undefined } }).ssl
    const verdict = typeof handle?.verifyError === 'function' ? handle.verifyError() : new Error('the client certificate could not be checked')
    if (verdict !== null && verdict !== undefined) {
      secured.destroy()
      return false
    }
  }
  return true
}
