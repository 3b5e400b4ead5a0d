// h61 security audit, the NBD server as a stranger on the network sees it: raw sockets speaking the
// fixed newstyle handshake against a real NbdServer (plain and TLS-required). What must hold: a
// TLS-required server tells and serves nothing in clear, export names are volume names (no path
// tricks reach anything else), an option payload is never buffered past its limit, a refused
// client cannot make the server hold what it streams, and idle clients are let go.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { heldArrayBuffers } from './support/held-memory.js'
import { NbdServer, parsePskFile } from '../backends/nbd/index.js'
import { GalleonFS } from '../src/index.js'

const NBDMAGIC = 0x4e42444d41474943n
const IHAVEOPT = 0x49484156454f5054n
const OPTION_REPLY_MAGIC = 0x3e889045565a9n
const OPT_EXPORT_NAME = 1
const OPT_LIST = 3
const OPT_INFO = 6
const OPT_GO = 7
const REP_ACK = 1
const REP_INFO = 3
const REP_ERR_TLS_REQD = 0x80000005
const REP_ERR_UNKNOWN = 0x80000006

/** A raw NBD client: collects every byte the server sends. */
class RawClient {
  readonly socket: Socket
  received = Buffer.alloc(0)
  /** Every byte received, also those already taken as replies. */
  all = Buffer.alloc(0)
  readonly closed: Promise<void>
  constructor (port: number, allowHalfOpen = false) {
    this.socket = connect({ host: '127.0.0.1', port, allowHalfOpen })
    this.socket.on('error', () => {})
    this.socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk])
      this.all = Buffer.concat([this.all, chunk])
    })
    this.closed = new Promise((resolve) => { this.socket.once('close', () => { resolve() }) })
  }

  async waitFor (bytes: number, ms = 10_000): Promise<boolean> {
    const deadline = Date.now() + ms
    while (this.received.byteLength < bytes) {
      if (this.socket.destroyed || Date.now() > deadline) return false
      await new Promise((resolve) => setTimeout(resolve, 2))
    }
    return true
  }

  /** Reads the server's greeting and sends the client flags (fixed newstyle). */
  async greet (): Promise<void> {
    assert.ok(await this.waitFor(18), 'a greeting')
    assert.equal(this.received.readBigUInt64BE(0), NBDMAGIC)
    assert.equal(this.received.readBigUInt64BE(8), IHAVEOPT)
    this.received = this.received.subarray(18)
    const flags = Buffer.alloc(4)
    flags.writeUInt32BE(1)
    this.socket.write(flags)
  }

  option (option: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(16)
    head.writeBigUInt64BE(IHAVEOPT, 0)
    head.writeUInt32BE(option, 8)
    head.writeUInt32BE(data.byteLength, 12)
    this.socket.write(Buffer.concat([head, data]))
  }

  /** The option replies received so far (type and payload), the bytes of an incomplete one kept. */
  async replies (until: (reply: { type: number, data: Buffer }) => boolean): Promise<Array<{ option: number, type: number, data: Buffer }>> {
    const out: Array<{ option: number, type: number, data: Buffer }> = []
    for (;;) {
      if (!await this.waitFor(20)) return out
      assert.equal(this.received.readBigUInt64BE(0), OPTION_REPLY_MAGIC)
      const length = this.received.readUInt32BE(16)
      if (!await this.waitFor(20 + length)) return out
      const reply = { option: this.received.readUInt32BE(8), type: this.received.readUInt32BE(12), data: Buffer.from(this.received.subarray(20, 20 + length)) }
      this.received = this.received.subarray(20 + length)
      out.push(reply)
      if (until(reply)) return out
    }
  }
}

/** NBD_OPT_GO / NBD_OPT_INFO data for `name`, asking for no particular information. */
function goData (name: string): Buffer {
  const nameBytes = Buffer.from(name)
  const data = Buffer.alloc(4 + nameBytes.byteLength + 2)
  data.writeUInt32BE(nameBytes.byteLength, 0)
  nameBytes.copy(data, 4)
  return data
}


const final = (reply: { type: number }): boolean => reply.type === REP_ACK || (reply.type & 0x80000000) !== 0

describe('h61 nbd: a stranger against the NBD server', () => {
  let g: GalleonFS
  let plain: NbdServer
  let tls: NbdServer
  before(async () => {
    g = await GalleonFS.open({ inMemory: true })
    await g.createVolume({ name: 'images', sizeBytes: 1 << 20, storageClass: 'fast-local-ssd' })
    await g.createVolume({ name: 'hidden-volume-name', sizeBytes: 1 << 20, storageClass: 'fast-local-ssd' })
    plain = await NbdServer.listen(g, { host: '127.0.0.1', port: 0, handshakeTimeoutMs: 300 })
    tls = await NbdServer.listen(g, { host: '127.0.0.1', port: 0, tls: { psk: parsePskFile(`alice:${randomBytes(32).toString('hex')}\n`) } })
  })
  after(async () => {
    await plain.close()
    await tls.close()
    await g.close()
  })

  it('held: a TLS-required server reached in clear answers LIST, INFO and GO with TLS_REQD, names nothing, and EXPORT_NAME ends the connection without an export', async () => {
    const client = new RawClient(tls.port)
    await client.greet()
    for (const [option, data] of [[OPT_LIST, Buffer.alloc(0)], [OPT_INFO, goData('images')], [OPT_GO, goData('images')]] as const) {
      client.option(option, data)
      const replies = await client.replies(final)
      assert.deepEqual(replies.map((reply) => reply.type), [REP_ERR_TLS_REQD], `option ${option}`)
    }
    client.option(OPT_EXPORT_NAME, Buffer.from('images'))
    await client.closed
    assert.equal(client.received.byteLength, 0, 'nothing after EXPORT_NAME in clear')
    const text = client.all.toString('latin1')
    assert.ok(!text.includes('hidden-volume-name') && !text.includes('images'), 'no volume name crossed in clear')
  })

  it('held: export names with path tricks name no export (NBD_REP_ERR_UNKNOWN), and the session goes on', async () => {
    const client = new RawClient(plain.port)
    await client.greet()
    for (const name of ['../images', './images', 'images/..', '/images', 'default/../images', 'images@../../etc/passwd', '..', 'images\u0000', '%2e%2e/images']) {
      client.option(OPT_GO, goData(name))
      const replies = await client.replies(final)
      assert.equal(replies.at(-1)?.type, REP_ERR_UNKNOWN, `export name ${JSON.stringify(name)}`)
      assert.ok(!replies.some((reply) => reply.type === REP_INFO), `no information about ${JSON.stringify(name)}`)
    }
    client.option(OPT_GO, goData('images'))
    const replies = await client.replies(final)
    assert.equal(replies.at(-1)?.type, REP_ACK, 'the real name is served')
    client.socket.destroy()
  })

  it('held: an option declaring 4 GiB of data is refused at once, and a client streaming after it is not buffered', async () => {
    const client = new RawClient(plain.port, true)
    await client.greet()
    const head = Buffer.alloc(16)
    head.writeBigUInt64BE(IHAVEOPT, 0)
    head.writeUInt32BE(OPT_GO, 8)
    head.writeUInt32BE(0xffffffff, 12)
    client.socket.write(head)
    const baseline = await heldArrayBuffers()
    const chunk = Buffer.alloc(1 << 20, 0x43)
    let sent = 0
    let gone = false
    void client.closed.then(() => { gone = true })
    while (!gone && sent < 128 << 20) {
      sent += chunk.byteLength
      if (!client.socket.write(chunk)) {
        await new Promise<void>((resolve) => {
          const done = (): void => { client.socket.off('drain', done); client.socket.off('close', done); resolve() }
          client.socket.once('drain', done)
          client.socket.once('close', done)
        })
      }
    }
    // Measured while the client is still connected: what the server keeps of what it was sent.
    const held = await heldArrayBuffers() - baseline
    // The server ended its side at once (FIN) and reads on only to drop what comes (socket.ts finish()).
    assert.equal(client.socket.readableEnded || gone, true, 'the server ended the session')
    client.socket.destroy()
    assert.ok(held < 16 << 20, `the server holds ${Math.round(held / (1 << 20))} MiB of the ${sent >> 20} MiB the client sent after its refused option`)
  })

  it('held: fifty clients that connect and send nothing are disconnected after handshakeTimeoutMs', async () => {
    const clients = Array.from({ length: 50 }, () => new RawClient(plain.port))
    await Promise.all(clients.map(async (client) => { await client.closed }))
  })
})
