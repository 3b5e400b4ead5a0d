// The handshake (fixed newstyle): option haggling up to the export a session serves, resolving
// export names to volumes and snapshots, and what a session holds (a writable export's writer, a snapshot's reader).

import type { Socket } from 'node:net'
import type { GalleonFS } from '../../src/galleonfs.js'
import { GalleonError } from '../../src/errors.js'
import { BASE_ALLOCATION, BASE_ALLOCATION_ID, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, NBDMAGIC, INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME, MAX_OPTION_BYTES, MAX_REQUEST_BYTES, OPTION_REPLY_MAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT, OPT_STARTTLS, OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, ProtocolError, REP_ACK, REP_ERR_INVALID, REP_ERR_POLICY, REP_ERR_SHUTDOWN, REP_ERR_TLS_REQD, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER, TFLAG_CAN_MULTI_CONN, TFLAG_HAS_FLAGS, TFLAG_READ_ONLY, TFLAG_SEND_DF, TFLAG_SEND_FLUSH, TFLAG_SEND_FUA, TFLAG_SEND_TRIM, TFLAG_SEND_WRITE_ZEROES, type Export, type Attachment } from './protocol.js'
import { SocketReader, repliesBelow } from './socket.js'
import { established, startTls, type NbdTls } from './tls.js'

/**
 * Option replies a client may leave unread before its next option is read: a client that sends
 * options without reading the replies (NBD_OPT_LIST ones can be long) stops being read until it does.
 */
const MAX_OPTION_REPLY_BACKLOG = 1024 * 1024

/**
 * A session's connection: the socket it speaks on and its reader. NBD_OPT_STARTTLS replaces both
 * with the TLS socket over the client's, so whoever serves the session reads them from here.
 */
export interface Session {
  socket: Socket
  reader: SocketReader
  /**
   * The server's TLS when the connection was accepted, if it had any: FORCEDTLS mode. The mode
   * holds for the whole connection (proto.md: a server MUST be consistent in its mode across the
   * lifespan of a TCP connection), whatever setTls() does meanwhile.
   */
  readonly tls: NbdTls | undefined
  /**
   * The credentials an NBD_OPT_STARTTLS uses: the server's current ones (or, if TLS was turned
   * off since, those of `tls`), so a key or certificate replaced by setTls() no longer opens a
   * session that was still in clear when it was replaced.
   */
  readonly credentials: () => NbdTls | undefined
  /** Set once the session speaks TLS. */
  secured: boolean
}

/** What negotiate() resolves to: the export a session serves and what it negotiated. */
export type Negotiated = { export: Export, attachment?: Attachment, structured: boolean, allocation: boolean } | undefined

/**
 * Why the server takes no new session now (it is starting, or stopping), asked at each option;
 * undefined: it serves.
 */
export type Refusal = () => string | undefined

/**
 * The greeting, the client's flags and the option haggling: the export to serve, or undefined.
 * Without `g` (a server that cannot serve yet) every option is refused as `refusal` says.
 */
export async function greet (g: GalleonFS | undefined, session: Session, refusal?: Refusal): Promise<Negotiated> {
  const { socket, reader } = session
  const hello = Buffer.alloc(18)
  hello.writeBigUInt64BE(NBDMAGIC, 0)
  hello.writeBigUInt64BE(IHAVEOPT, 8)
  hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16)
  socket.write(hello)
  const clientFlags = await reader.read(4)
  if (clientFlags === undefined) return undefined
  const flags = clientFlags.readUInt32BE(0)
  if ((flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) !== 0) throw new ProtocolError('unknown client flags')
  return await negotiate(g, session, (flags & FLAG_NO_ZEROES) !== 0, (flags & FLAG_FIXED_NEWSTYLE) !== 0, refusal)
}

/**
 * Option haggling; resolves to the export to serve, or undefined when the client left. While
 * `refusal` gives a reason (and always without `g`), every option but NBD_OPT_ABORT and
 * NBD_OPT_STARTTLS is answered NBD_REP_ERR_SHUTDOWN with that reason.
 */
export async function negotiate (g: GalleonFS | undefined, session: Session, noZeroes: boolean, fixed = true, refusal?: Refusal): Promise<Negotiated> {
  let structured = false
  // base:allocation as chosen by the last NBD_OPT_SET_META_CONTEXT, for the export it named.
  let allocation: Export | undefined
  // Meta contexts chosen for another export than the one the session serves do not apply to it (proto.md).
  const contextsFor = (served: Export): boolean => allocation !== undefined && sameSource(allocation, served)
  while (true) {
    const { socket, reader } = session
    await repliesBelow(socket, MAX_OPTION_REPLY_BACKLOG)
    const header = await reader.read(16)
    if (header === undefined) return undefined
    if (header.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('bad option magic')
    const option = header.readUInt32BE(8)
    const length = header.readUInt32BE(12)
    if (length > MAX_OPTION_BYTES) throw new ProtocolError('option too long')
    const data = await reader.read(length)
    if (data === undefined) return undefined
    const reply = (type: number, payload: Buffer = Buffer.alloc(0), written?: (err?: Error | null) => void): void => {
      const head = Buffer.alloc(20)
      head.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0)
      head.writeUInt32BE(option, 8)
      head.writeUInt32BE(type, 12)
      head.writeUInt32BE(payload.byteLength, 16)
      socket.write(Buffer.concat([head, payload]), written)
    }
    const error = (type: number, message: string): void => { reply(type, Buffer.from(message)) }
    if (session.tls !== undefined && !fixed && option !== OPT_ABORT) {
      // proto.md: a client without NBD_FLAG_C_FIXED_NEWSTYLE gets NOTLS mode, where TLS_REQD is
      // never sent; such a client cannot start TLS, and this server serves nothing in clear.
      if (option === OPT_EXPORT_NAME) return undefined
      error(REP_ERR_POLICY, 'this server requires TLS, which needs fixed newstyle negotiation: set NBD_FLAG_C_FIXED_NEWSTYLE, then send NBD_OPT_STARTTLS')
      continue
    }
    if (session.tls !== undefined && !session.secured && option !== OPT_STARTTLS && option !== OPT_ABORT) {
      // FORCEDTLS: nothing is told or served in clear. NBD_OPT_EXPORT_NAME cannot be refused, so
      // the session ends.
      if (option === OPT_EXPORT_NAME) return undefined
      error(REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first (e.g. an nbds:// URI, or qemu\'s tls-creds)')
      continue
    }
    if (option === OPT_STARTTLS) {
      // Also while refusing: a client that wants TLS gets the refusal over TLS, not an error in clear.
      if (session.tls === undefined) { error(REP_ERR_UNSUP, 'this server was started without TLS (NbdServer.listen(g, { tls }), or the daemon\'s --nbd-tls-* options)'); continue }
      if (session.secured) { error(REP_ERR_INVALID, 'TLS is already negotiated on this connection'); continue }
      const tls = session.credentials() ?? session.tls
      if (length !== 0) { error(REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data'); continue }
      // A client must wait for this reply before its TLS handshake: bytes it sent after the
      // option, before the reply, are not TLS the server could take over.
      if (reader.detach() > 0) throw new ProtocolError('data sent after NBD_OPT_STARTTLS before its reply')
      // The reply goes out in clear, all of it, before TLS takes the socket over; what the client
      // sends meanwhile (its TLS hello) waits in the paused socket, and TLS takes it from there.
      socket.pause()
      const sent = await new Promise<boolean>((resolve) => { reply(REP_ACK, undefined, (err?: Error | null) => { resolve(err === undefined || err === null) }) })
      if (!sent || socket.destroyed) return undefined
      const secured = startTls(socket, tls)
      secured.on('error', () => {}) // a failed handshake closes the session; the server goes on
      // The session's socket from now on (the handshake limit and close() end this one), but
      // nothing is read from it before the handshake is done and the client's certificate checked.
      session.socket = secured
      if (!await established(secured, tls)) return undefined
      session.reader = new SocketReader(secured)
      session.secured = true
      continue
    }
    if (option === OPT_ABORT) {
      reply(REP_ACK)
      socket.end()
      return undefined
    }
    const refused = refusal?.()
    if (g === undefined || refused !== undefined) {
      // proto.md: a server being shut down SHOULD error every further option but NBD_OPT_ABORT
      // with NBD_REP_ERR_SHUTDOWN, and the client MUST then disconnect; NBD_OPT_EXPORT_NAME
      // cannot be answered with an error, so that session ends (a hard disconnect).
      if (option === OPT_EXPORT_NAME) return undefined
      error(REP_ERR_SHUTDOWN, fitted(refused ?? 'this NBD server serves no exports yet: retry in a moment'))
      continue
    }
    switch (option) {
      case OPT_EXPORT_NAME: {
        // No way to report an error here: an unknown export ends the connection.
        const claimed = await resolveExport(g, data.toString('utf8')).then(async (found) => await claim(g, found)).catch(() => undefined)
        if (claimed === undefined) return undefined
        const out = Buffer.alloc(noZeroes ? 10 : 134)
        out.writeBigUInt64BE(BigInt(claimed.export.size), 0)
        out.writeUInt16BE(transmissionFlags(claimed.export, structured, g.durable), 8)
        socket.write(out)
        return { ...claimed, structured, allocation: contextsFor(claimed.export) }
      }
      case OPT_LIST: {
        if (length !== 0) { error(REP_ERR_INVALID, 'NBD_OPT_LIST takes no data'); break }
        for (const volume of await g.listVolumes().catch(() => [])) {
          // The bare name where it names this volume for whoever the server acts as (a principal's
          // bare names resolve in its own namespace), else namespace/name.
          const bare = (await g.getVolume(volume.name).catch(() => undefined))?.id === volume.id
          const name = Buffer.from(bare ? volume.name : `${volume.namespace}/${volume.name}`)
          const entry = Buffer.alloc(4 + name.byteLength)
          entry.writeUInt32BE(name.byteLength, 0)
          name.copy(entry, 4)
          reply(REP_SERVER, entry)
        }
        reply(REP_ACK)
        break
      }
      case OPT_STRUCTURED_REPLY:
        if (length !== 0) { error(REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'); break }
        structured = true
        reply(REP_ACK)
        break
      case OPT_INFO:
      case OPT_GO: {
        if (length < 6) { error(REP_ERR_INVALID, 'NBD_OPT_INFO/GO needs a name length, a name and an information request count'); break }
        const nameLength = data.readUInt32BE(0)
        if (4 + nameLength + 2 > length) { error(REP_ERR_INVALID, 'the export name runs past the end of the option'); break }
        const name = data.subarray(4, 4 + nameLength).toString('utf8')
        const requests = data.readUInt16BE(4 + nameLength)
        if (4 + nameLength + 2 + requests * 2 !== length) { error(REP_ERR_INVALID, 'the information requests do not match the option length'); break }
        let found: Export
        let attachment: Attachment | undefined
        try {
          // GO starts the session: claim the writer (or a snapshot's reader) before the flags go
          // out. INFO claims and lets go at once, so that it tells what a GO would get (read-only
          // when the writer's place is taken or the caller may not write).
          ;({ export: found, attachment } = await claim(g, await resolveExport(g, name)))
          // Letting the writer's place go flushes the volume, which a full disk (or a failed store)
          // refuses; the place is let go all the same, and a GO would be served: INFO says so too.
          if (option === OPT_INFO) await attachment?.close().catch(() => {})
        } catch (err) {
          const code = (err as { code?: string }).code
          error(code === 'PERMISSION_DENIED' ? REP_ERR_POLICY : code === 'VOLUME_NOT_FOUND' || code === 'SNAPSHOT_NOT_FOUND' || code === 'INVALID_ARGUMENT' ? REP_ERR_UNKNOWN : REP_ERR_INVALID, (err as Error).message)
          break
        }
        const info = (type: number, body: Buffer): void => {
          const payload = Buffer.alloc(2 + body.byteLength)
          payload.writeUInt16BE(type, 0)
          body.copy(payload, 2)
          reply(REP_INFO, payload)
        }
        const exportInfo = Buffer.alloc(10)
        exportInfo.writeBigUInt64BE(BigInt(found.size), 0)
        exportInfo.writeUInt16BE(transmissionFlags(found, structured, g.durable), 8)
        info(INFO_EXPORT, exportInfo)
        const asked = new Set(Array.from({ length: requests }, (_, i) => data.readUInt16BE(4 + nameLength + 2 + i * 2)))
        if (asked.has(INFO_NAME)) info(INFO_NAME, Buffer.from(found.name))
        if (asked.has(INFO_DESCRIPTION)) info(INFO_DESCRIPTION, Buffer.from(found.description))
        const sizes = Buffer.alloc(12)
        sizes.writeUInt32BE(1, 0)
        sizes.writeUInt32BE(g.blockSize, 4)
        sizes.writeUInt32BE(MAX_REQUEST_BYTES, 8)
        info(INFO_BLOCK_SIZE, sizes)
        reply(REP_ACK)
        if (option === OPT_GO) return { export: found, attachment, structured, allocation: contextsFor(found) }
        break
      }
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT: {
        // A SET replaces the contexts chosen before, also when it fails.
        if (option === OPT_SET_META_CONTEXT) allocation = undefined
        const queries = parseMetaContextOption(data)
        if (queries === undefined) { error(REP_ERR_INVALID, 'malformed meta context option'); break }
        if (!structured) { error(REP_ERR_INVALID, 'negotiate structured replies (NBD_OPT_STRUCTURED_REPLY) before meta contexts'); break }
        let named: Export
        try {
          named = await resolveExport(g, queries.exportName)
        } catch (err) {
          error(REP_ERR_UNKNOWN, (err as Error).message)
          break
        }
        // base:allocation is the one context: listed for an empty query, "base:" or itself.
        const wanted = (option === OPT_LIST_META_CONTEXT && queries.queries.length === 0) || queries.queries.some((q) => q === BASE_ALLOCATION || q === 'base:')
        if (option === OPT_SET_META_CONTEXT && queries.queries.includes(BASE_ALLOCATION)) allocation = named
        if (wanted && (option === OPT_LIST_META_CONTEXT || allocation !== undefined)) {
          const name = Buffer.from(BASE_ALLOCATION)
          const body = Buffer.alloc(4 + name.byteLength)
          body.writeUInt32BE(option === OPT_SET_META_CONTEXT ? BASE_ALLOCATION_ID : 0, 0)
          name.copy(body, 4)
          reply(REP_META_CONTEXT, body)
        }
        reply(REP_ACK)
        break
      }
      default:
        error(REP_ERR_UNSUP, `option ${option} is not supported by the GalleonFS NBD server`)
    }
  }
}

/** Resolves an export name: a volume (by name, namespace/name or id) or `volume@snapshot`. */
async function resolveExport (g: GalleonFS, name: string): Promise<Export> {
  if (name.length === 0) throw new GalleonError('INVALID_ARGUMENT', 'an empty export name; name a volume')
  // Volume and namespace names have no '@'; a snapshot's name may.
  const at = name.indexOf('@')
  if (at > 0) {
    const volume = await g.getVolume(name.slice(0, at))
    const snapshot = await g.getSnapshot(volume.id, name.slice(at + 1))
    return { name, source: { volume: volume.id, snapshot: snapshot.id }, volumeId: volume.id, size: snapshot.sizeBytes, readOnly: true, description: `GalleonFS snapshot ${snapshot.name} of ${volume.namespace}/${volume.name} (read-only)`, shared: false }
  }
  const volume = await g.getVolume(name)
  // A ReadWriteOnce volume mounted read-write has its one writer: export it read-only then.
  const shared = volume.accessModes.includes('ReadWriteMany' as never)
  const mountedWriter = !shared && g.mounts.listMounts().some((m) => m.volumeId === volume.id && m.snapshotId === undefined && !m.readOnly)
  const readOnly = mountedWriter || !volume.accessModes.some((mode) => mode === 'ReadWriteOnce' || mode === 'ReadWriteMany')
  return { name, source: volume.id, volumeId: volume.id, size: volume.sizeBytes, readOnly, description: `GalleonFS volume ${volume.namespace}/${volume.name}`, shared }
}

/**
 * The export a session will serve, and what it holds for the session. A writable export is
 * registered as a writer with the mount manager (a writable VolumeFile held for the session): of a
 * ReadWriteOnce volume, so a read-write mount is refused while an NBD client may write; of a
 * ReadWriteMany one too, so the caller's right to write is checked and deleting the volume under a
 * connected writer is refused unless forced. When a mount
 * took the writer's place in the meantime, or the caller may read the volume but not write it, the
 * export is served read-only. A read-only export holds a read-only VolumeFile on what it serves
 * (the volume, or the snapshot), so deleting the volume (or the snapshot) is refused while a client
 * reads it, unless forced, and so is restoring a backup over the volume; the export itself is
 * refused when such a file is (while the volume is being reverted, or restored into).
 */
async function claim (g: GalleonFS, found: Export): Promise<{ export: Export, attachment?: Attachment }> {
  if (typeof found.source !== 'string' || found.readOnly) return { export: found, attachment: await g.mounts.openVolumeFile(found.source, { readOnly: true }) }
  try {
    const writer = await g.mounts.openVolumeFile(found.volumeId, {})
    return { export: found, attachment: writer }
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code !== 'BUSY' && code !== 'READ_ONLY' && code !== 'PERMISSION_DENIED') throw err
    // Served read-only, as a reader: refused as a read-only file is (during a restore into the
    // volume, say), else held until the session ends.
    return { export: { ...found, readOnly: true }, attachment: await g.mounts.openVolumeFile(found.volumeId, { readOnly: true }) }
  }
}

/** Whether two exports serve the same volume or snapshot (by whichever name the client used). */
function sameSource (a: Export, b: Export): boolean {
  if (typeof a.source === 'string' || typeof b.source === 'string') return a.source === b.source
  return a.source.volume === b.source.volume && a.source.snapshot === b.source.snapshot
}

/** Transmission flags of an export as the handshake advertises them. */
function transmissionFlags (exp: Export, structured: boolean, durable: boolean): number {
  // DF (don't fragment) only means something with structured replies. FLUSH and FUA promise
  // durability, which a store without it (memory) cannot give: not offered there (a client then
  // treats the device as having no write cache).
  let flags = TFLAG_HAS_FLAGS | TFLAG_CAN_MULTI_CONN | (durable ? TFLAG_SEND_FLUSH | TFLAG_SEND_FUA : 0) | (structured ? TFLAG_SEND_DF : 0)
  if (exp.readOnly) flags |= TFLAG_READ_ONLY
  else flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
  return flags
}

/** The payload of NBD_OPT_LIST/SET_META_CONTEXT: export name and query strings (undefined if malformed). */
function parseMetaContextOption (data: Buffer): { exportName: string, queries: string[] } | undefined {
  if (data.byteLength < 8) return undefined
  const nameLength = data.readUInt32BE(0)
  if (4 + nameLength + 4 > data.byteLength) return undefined
  const exportName = data.subarray(4, 4 + nameLength).toString('utf8')
  const count = data.readUInt32BE(4 + nameLength)
  const queries: string[] = []
  let at = 8 + nameLength
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.byteLength) return undefined
    const length = data.readUInt32BE(at)
    if (at + 4 + length > data.byteLength) return undefined
    queries.push(data.subarray(at + 4, at + 4 + length).toString('utf8'))
    at += 4 + length
  }
  return at === data.byteLength ? { exportName, queries } : undefined
}

/** Longest string an option reply may carry (proto.md: a string MUST be at most 4096 bytes). */
const MAX_STRING_BYTES = 4096

/** `text` cut to what an option reply may carry, at a character boundary. */
function fitted (text: string): string {
  if (Buffer.byteLength(text) <= MAX_STRING_BYTES) return text
  let cut = text.slice(0, MAX_STRING_BYTES)
  while (Buffer.byteLength(cut) > MAX_STRING_BYTES) cut = cut.slice(0, -1)
  return cut
}
