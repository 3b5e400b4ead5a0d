// The NBD protocol's numbers (doc/proto.md: magics, options, replies, flags, commands, errnos), this
// server's limits, and the types the handshake and the transmission phase share.

export const NBDMAGIC = 0x4e42444d41474943n
export const IHAVEOPT = 0x49484156454f5054n
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n
export const REQUEST_MAGIC = 0x25609513
export const SIMPLE_REPLY_MAGIC = 0x67446698
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef

export const FLAG_FIXED_NEWSTYLE = 1
export const FLAG_NO_ZEROES = 2

export const OPT_EXPORT_NAME = 1
export const OPT_ABORT = 2
export const OPT_LIST = 3
export const OPT_STARTTLS = 5
export const OPT_INFO = 6
export const OPT_GO = 7
export const OPT_STRUCTURED_REPLY = 8
export const OPT_LIST_META_CONTEXT = 9
export const OPT_SET_META_CONTEXT = 10

export const REP_ACK = 1
export const REP_SERVER = 2
export const REP_INFO = 3
export const REP_META_CONTEXT = 4
export const REP_ERR_UNSUP = 0x80000001
export const REP_ERR_POLICY = 0x80000002
export const REP_ERR_INVALID = 0x80000003
export const REP_ERR_TLS_REQD = 0x80000005
export const REP_ERR_UNKNOWN = 0x80000006
/** The server will not negotiate: it is shutting down (here also: not serving yet). */
export const REP_ERR_SHUTDOWN = 0x80000007

export const INFO_EXPORT = 0
export const INFO_NAME = 1
export const INFO_DESCRIPTION = 2
export const INFO_BLOCK_SIZE = 3

export const TFLAG_HAS_FLAGS = 1 << 0
export const TFLAG_READ_ONLY = 1 << 1
export const TFLAG_SEND_FLUSH = 1 << 2
export const TFLAG_SEND_FUA = 1 << 3
export const TFLAG_SEND_TRIM = 1 << 5
export const TFLAG_SEND_WRITE_ZEROES = 1 << 6
export const TFLAG_SEND_DF = 1 << 7
export const TFLAG_CAN_MULTI_CONN = 1 << 8

export const CMD_READ = 0
export const CMD_WRITE = 1
export const CMD_DISC = 2
export const CMD_FLUSH = 3
export const CMD_TRIM = 4
export const CMD_WRITE_ZEROES = 6
export const CMD_BLOCK_STATUS = 7

export const CMD_FLAG_FUA = 1 << 0
export const CMD_FLAG_NO_HOLE = 1 << 1
export const CMD_FLAG_DF = 1 << 2
export const CMD_FLAG_REQ_ONE = 1 << 3

export const REPLY_FLAG_DONE = 1
export const REPLY_TYPE_NONE = 0
export const REPLY_TYPE_OFFSET_DATA = 1
export const REPLY_TYPE_BLOCK_STATUS = 5
/** The one metadata context served: base:allocation (hole = 1, zero = 2). */
export const BASE_ALLOCATION = 'base:allocation'
export const BASE_ALLOCATION_ID = 1
export const STATE_HOLE = 1
export const STATE_ZERO = 2
/** Largest range one block status reply describes (the client asks again for the rest). */
export const MAX_STATUS_BYTES = 1024 * 1024 * 1024
export const REPLY_TYPE_ERROR = 0x8001

export const EPERM = 1
export const EIO = 5
export const EINVAL = 22
export const ENOSPC = 28
export const ENOTSUP = 95
export const ESHUTDOWN = 108

/** Longest option payload accepted during the handshake. */
export const MAX_OPTION_BYTES = 64 * 1024
/** Longest READ or WRITE (advertised as the maximum block size). */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024
/** Requests one connection may have in flight before it stops reading more. */
export const MAX_IN_FLIGHT = 64
/**
 * Bytes one connection may hold before it stops reading requests: data of the requests in flight
 * plus replies its client has not read yet. One request more may bring a payload of up to
 * MAX_REQUEST_BYTES on top.
 */
export const MAX_HELD_BYTES = 128 * 1024 * 1024

/** An export as a connection serves it. */
export interface Export {
  readonly name: string
  readonly source: string | { volume: string, snapshot: string }
  readonly volumeId: string
  readonly size: number
  readonly readOnly: boolean
  readonly description: string
  /** ReadWriteMany: writers need not be counted. */
  readonly shared: boolean
}

/**
 * What a session holds open while it serves an export, as an attachment of what it serves: a
 * writable file for a writable export, a read-only one for a read-only export (of a volume or of
 * a snapshot).
 */
export interface Attachment { close: () => Promise<void> }

/** A protocol violation: the connection is closed. */
export class ProtocolError extends Error {}
