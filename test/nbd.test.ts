// The NBD export against real clients nobody here wrote (nbdinfo, nbdcopy, qemu-img, fio's nbd
// engine), plus raw-socket checks of the protocol's corners: options, pipelining, trims, read-only
// exports, and malformed or truncated frames that must end only their own connection.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { AccessMode, GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { NbdClient, infoRequestData, metaContextData } from './support/nbd-client.js'

const exec = promisify(execFile)
const missing = (tool: string): string | undefined => ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))) ? undefined : `${tool} is not installed (see .ci/run)`
for (const tool of ['nbdinfo', 'nbdcopy', 'qemu-img', 'fio']) {
  const why = missing(tool)
  if (why !== undefined) process.stdout.write(`# SKIP some NBD tests: ${why}\n`)
}

let root: string
let g: GalleonFS
let server: NbdServer
let uri: string
let image: Uint8Array
const MiB = 1 << 20

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-nbd-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  await g.createVolume({ name: 'disk', sizeBytes: '32M' })
  image = new Uint8Array(randomBytes(32 * MiB))
  await g.write('disk', 0, image)
  await g.createSnapshot('disk', 'snap')
  await g.createVolume({ name: 'scratch', sizeBytes: '8M' })
  await g.createVolume({ name: 'shelf', sizeBytes: '1M', accessModes: [AccessMode.ReadOnlyMany] })
  await g.createVolume({ name: 'sparse', sizeBytes: '16M' })
  await g.write('sparse', 4 * MiB, new Uint8Array(MiB).fill(1))
  await g.write('sparse', 10 * MiB + 100, new Uint8Array(10).fill(1))
  server = await NbdServer.listen(g, { port: 0 })
  uri = `nbd://127.0.0.1:${server.port}`
})
after(async () => {
  await server?.close()
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

/** Raw clients here give the server 3 s to close a connection it should end. */
const clientTimeouts = { closeTimeoutMs: 3_000 }

describe('NBD export with real clients', () => {
  it('nbdinfo shows exports, sizes and read-only snapshots', { skip: missing('nbdinfo') }, async () => {
    const info = (await exec('nbdinfo', ['--json', `${uri}/disk`])).stdout
    const parsed = JSON.parse(info)
    assert.equal(parsed.exports[0]['export-size'], 32 * MiB)
    assert.equal(parsed.exports[0]['is_read_only'], false)
    assert.equal(parsed.exports[0]['block_size_preferred'], 4096)
    const snap = JSON.parse((await exec('nbdinfo', ['--json', `${uri}/disk@snap`])).stdout)
    assert.equal(snap.exports[0]['is_read_only'], true)
    const list = (await exec('nbdinfo', ['--list', '--json', uri])).stdout
    assert.deepEqual(JSON.parse(list).exports.map((e: { 'export-name': string }) => e['export-name']).sort(), ['disk', 'scratch', 'shelf', 'sparse'])
    await assert.rejects(exec('nbdinfo', [`${uri}/nope`]))
  })

  it('qemu-img convert copies a volume out and in byte-exact', { skip: missing('qemu-img') }, async () => {
    const out = join(root, 'out.raw')
    await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', `${uri}/disk`, out])
    assert.deepEqual(new Uint8Array(await readFile(out)), image)
    const input = join(root, 'in.raw')
    const other = new Uint8Array(randomBytes(8 * MiB))
    await writeFile(input, other)
    await exec('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', input, `${uri}/scratch`])
    assert.deepEqual(await g.read('scratch', 0, 8 * MiB), other)
    // A snapshot export refuses writes.
    await assert.rejects(exec('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', input, `${uri}/disk@snap`]))
    assert.deepEqual(await g.read({ volume: 'disk', snapshot: 'snap' }, 0, 8 * MiB), image.subarray(0, 8 * MiB))
  })

  it('nbdcopy round trip through a file', { skip: missing('nbdcopy') }, async () => {
    const file = join(root, 'copy.raw')
    await exec('nbdcopy', [`${uri}/disk@snap`, file])
    assert.deepEqual(new Uint8Array(await readFile(file)), image)
    const back = new Uint8Array(randomBytes(8 * MiB))
    await writeFile(file, back)
    await exec('nbdcopy', [file, `${uri}/scratch`])
    assert.deepEqual(await g.read('scratch', 0, 8 * MiB), back)
  })

  it('reports which blocks hold data (base:allocation): nbdinfo --map and qemu-img map see the holes', { skip: missing('nbdinfo') ?? missing('qemu-img') }, async () => {
    const map = (await exec('nbdinfo', ['--map', `${uri}/sparse`])).stdout.trim().split('\n').map((line) => line.trim().split(/\s+/).slice(0, 3).map(Number))
    assert.deepEqual(map, [[0, 4 * MiB, 3], [4 * MiB, MiB, 0], [5 * MiB, 5 * MiB, 3], [10 * MiB, 4096, 0], [10 * MiB + 4096, 6 * MiB - 4096, 3]])
    const extents = JSON.parse((await exec('qemu-img', ['map', '--output=json', '-f', 'raw', `${uri}/sparse`])).stdout) as Array<{ start: number, length: number, data: boolean }>
    assert.deepEqual(extents.filter((e) => e.data).map((e) => [e.start, e.length]), [[4 * MiB, MiB], [10 * MiB, 4096]])
    assert.deepEqual(await g.getAllocation('sparse', 4 * MiB - 100, 200), [{ offset: 4 * MiB - 100, length: 100, allocated: false }, { offset: 4 * MiB, length: 100, allocated: true }])
    await assert.rejects(g.getAllocation('sparse', 16 * MiB, 1), { code: 'OUT_OF_RANGE' })
    // A sparse copy: nbdcopy reads only the data.
    const out = join(root, 'sparse.raw')
    await exec('nbdcopy', [`${uri}/sparse`, out])
    const copied = new Uint8Array(await readFile(out))
    assert.deepEqual(copied.subarray(4 * MiB, 5 * MiB), new Uint8Array(MiB).fill(1))
    assert.equal(copied.subarray(0, 4 * MiB).some((b) => b !== 0), false)
  })

  it('fio --ioengine=nbd with crc32c verification passes, also with several clients at once', { skip: missing('fio') }, async () => {
    const run = async (name: string, offset: string): Promise<void> => {
      const { stdout } = await exec('fio', [`--name=${name}`, '--ioengine=nbd', `--uri=${uri}/scratch`, '--rw=randwrite', '--bs=4k', `--offset=${offset}`, '--size=4M',
        '--iodepth=16', '--verify=crc32c', '--verify_state_save=0', '--verify_fatal=1', '--do_verify=1', '--output-format=json'], { maxBuffer: 16 << 20 })
      const report = JSON.parse(stdout.slice(stdout.indexOf('{')))
      assert.equal(report.jobs[0].error, 0)
      assert.ok(report.jobs[0].read.io_bytes >= 4 * MiB, 'verified everything it wrote')
    }
    await Promise.all([run('a', '0'), run('b', '4M')])
  })
})

describe('NBD protocol corners (raw socket)', () => {
  it('answers LIST, INFO for an unknown export, unsupported options, then GO; ABORT ends the session', async () => {
    const client = await NbdClient.connect(server.port, clientTimeouts)
    const flags = await client.hello()
    assert.equal(flags & 3, 3) // fixed newstyle, no zeroes
    const names = await client.list()
    assert.deepEqual(names.sort(), ['disk', 'scratch', 'shelf', 'sparse'])
    client.option(1234)
    assert.equal((await client.optionReply()).type, 0x80000001) // ERR_UNSUP
    client.option(5) // STARTTLS
    assert.equal((await client.optionReply()).type, 0x80000001)
    const unknown = Buffer.alloc(4 + 4 + 2)
    unknown.writeUInt32BE(4, 0)
    unknown.write('nope', 4)
    client.option(6, unknown)
    assert.equal((await client.optionReply()).type, 0x80000006) // ERR_UNKNOWN
    client.option(6, Buffer.from([0, 0, 0, 50, 1])) // name length past the end
    assert.equal((await client.optionReply()).type, 0x80000003) // ERR_INVALID
    client.option(2)
    assert.equal((await client.optionReply()).type, 1)
    assert.equal(await client.closedByServer(), true)
  })

  it('serves pipelined requests, trims and zeroes, refuses writes to read-only exports with EPERM and past the end with ENOSPC', async () => {
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    const { size, flags } = await client.go('scratch')
    assert.equal(size, 8 * MiB)
    assert.ok((flags & (1 << 5)) !== 0 && (flags & (1 << 6)) !== 0, 'trim and write zeroes advertised')
    const block = new Uint8Array(randomBytes(8192))
    client.request(1, 1, 4096, 8192, 0, block)
    client.request(1, 2, 65536, 8192, 1, block) // FUA
    client.request(3, 3, 0, 0)
    const acks = [await client.reply(), await client.reply(), await client.reply()]
    assert.deepEqual(acks.map((r) => r.error), [0, 0, 0])
    assert.deepEqual(acks.map((r) => r.handle).sort(), [1, 2, 3])
    client.request(0, 4, 4096, 8192)
    const read = await client.reply(8192)
    assert.equal(read.handle, 4)
    assert.deepEqual(new Uint8Array(read.data), block)
    client.request(4, 5, 4096, 4096) // TRIM the first block of the write
    assert.equal((await client.reply()).error, 0)
    client.request(6, 6, 65536 + 100, 200) // WRITE_ZEROES, unaligned
    assert.equal((await client.reply()).error, 0)
    client.request(6, 7, 65536 + 4096, 4096, 2) // WRITE_ZEROES with NO_HOLE
    assert.equal((await client.reply()).error, 0)
    assert.deepEqual(await g.read('scratch', 4096, 4096), new Uint8Array(4096))
    assert.deepEqual(await g.read('scratch', 8192, 4096), block.subarray(4096))
    const zeroed = Uint8Array.from(block)
    zeroed.fill(0, 100, 300)
    zeroed.fill(0, 4096)
    assert.deepEqual(await g.read('scratch', 65536, 8192), zeroed)
    // A WRITE_ZEROES with NO_HOLE longer than the 1 MiB pieces it is written in, unaligned at both ends.
    const wide = new Uint8Array(randomBytes(3 * MiB))
    await g.write('scratch', 3 * MiB, wide)
    client.request(6, 12, 3 * MiB + 512, 2 * MiB + 1000, 2)
    assert.equal((await client.reply()).error, 0)
    const expected = Uint8Array.from(wide)
    expected.fill(0, 512, 512 + 2 * MiB + 1000)
    assert.deepEqual(await g.read('scratch', 3 * MiB, 3 * MiB), expected)
    client.request(1, 8, 8 * MiB - 4096, 8192, 0, new Uint8Array(8192))
    assert.equal((await client.reply()).error, 28) // ENOSPC
    client.request(0, 9, 8 * MiB, 4096)
    assert.equal((await client.reply()).error, 22) // EINVAL
    client.request(7, 11, 0, 4096) // BLOCK_STATUS without base:allocation negotiated
    assert.equal((await client.reply()).error, 22)
    client.request(2, 10, 0, 0) // DISC
    assert.equal(await client.closedByServer(), true)

    const ro = await NbdClient.connect(server.port, clientTimeouts)
    await ro.hello()
    const snap = await ro.go('disk@snap')
    assert.ok((snap.flags & 2) !== 0, 'read-only flag')
    ro.request(1, 1, 0, 4096, 0, new Uint8Array(4096))
    assert.equal((await ro.reply()).error, 1) // EPERM
    ro.request(4, 2, 0, 4096)
    assert.equal((await ro.reply()).error, 1)
    ro.socket.destroy()
    const shelf = await NbdClient.connect(server.port, clientTimeouts)
    await shelf.hello()
    assert.ok(((await shelf.go('shelf')).flags & 2) !== 0, 'a ReadOnlyMany volume is exported read-only')
    shelf.socket.destroy()
  })

  it('malformed and truncated frames end only their own connection; the server and other clients carry on', async () => {
    const healthy = await NbdClient.connect(server.port, clientTimeouts)
    await healthy.hello()
    await healthy.go('disk')
    const attacks: Array<(client: NbdClient) => Promise<void>> = [
      async (c) => { await c.read(18); c.socket.write(Buffer.from([0xff, 0xff, 0xff, 0xff])) }, // unknown client flags
      async (c) => { await c.hello(); c.socket.write(Buffer.alloc(16, 0x41)) }, // bad option magic
      async (c) => { await c.hello(); const h = Buffer.alloc(16); h.writeBigUInt64BE(0x49484156454f5054n); h.writeUInt32BE(7, 8); h.writeUInt32BE(0x7fffffff, 12); c.socket.write(h) }, // huge option
      async (c) => { await c.hello(); c.option(7, Buffer.from([0, 0])) }, // GO too short
      async (c) => { await c.hello(); await c.go('disk'); c.socket.write(Buffer.alloc(28, 0x42)) }, // bad request magic
      async (c) => { await c.hello(); await c.go('disk'); c.request(1, 1, 0, 0x7fffffff) }, // write longer than allowed
      async (c) => { await c.hello(); await c.go('disk'); c.socket.write(Buffer.from([0x25, 0x60, 0x95])); c.socket.end() }, // truncated request
      async (c) => { await c.hello(); await c.go('disk'); c.request(1, 1, 0, 4096, 0, new Uint8Array(100)); c.socket.end() }, // truncated payload
      async (c) => { c.socket.write(randomBytes(5000)) }, // noise
      async (c) => { await c.hello(); await c.go('disk'); c.request(99, 1, 0, 0) } // unknown command: an error reply, the connection stays
    ]
    for (const attack of attacks) {
      const client = await NbdClient.connect(server.port, clientTimeouts)
      await attack(client)
      await client.closedByServer(300)
      client.socket.destroy()
    }
    // The healthy client still reads correct data, and new clients connect.
    healthy.request(0, 77, 5 * MiB, 4096)
    const reply = await healthy.reply(4096)
    assert.equal(reply.error, 0)
    assert.deepEqual(new Uint8Array(reply.data), image.subarray(5 * MiB, 5 * MiB + 4096))
    const fresh = await NbdClient.connect(server.port, clientTimeouts)
    await fresh.hello()
    assert.equal((await fresh.go('disk')).size, 32 * MiB)
    fresh.socket.destroy()
    healthy.socket.destroy()
  })

  it('follows the spec\'s finer points: DF only with structured replies, an empty structured read is NONE, unknown flags EINVAL, meta contexts need structured replies, FLUSH on a read-only export succeeds', async () => {
    const plain = await NbdClient.connect(server.port, clientTimeouts)
    await plain.hello()
    plain.option(9, metaContextData('disk', [])) // LIST_META_CONTEXT before STRUCTURED_REPLY
    assert.equal((await plain.optionReply()).type, 0x80000003)
    const { flags } = await plain.go('disk')
    assert.equal(flags & (1 << 7), 0, 'no DF without structured replies')
    plain.request(1, 1, 0, 4096, 1 << 9, new Uint8Array(4096)) // an unknown command flag
    assert.equal((await plain.reply()).error, 22)
    plain.socket.destroy()

    const structured = await NbdClient.connect(server.port, clientTimeouts)
    await structured.hello()
    await structured.structuredReplies()
    const go = await structured.go('disk@snap')
    assert.ok((go.flags & (1 << 7)) !== 0, 'DF with structured replies')
    structured.request(0, 5, 0, 0) // empty read
    const empty = await structured.chunk() // asserts the structured reply magic
    assert.equal(empty.type, 0) // NBD_REPLY_TYPE_NONE
    assert.equal(empty.body.byteLength, 0)
    structured.request(3, 6, 0, 0) // FLUSH on a read-only export
    assert.equal((await structured.chunk()).type, 0)
    structured.socket.destroy()
  })

  it('stops reading a client that does not read its replies once 128 MiB are held, and serves the rest when it reads', async () => {
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    await client.go('disk')
    client.socket.pause() // read nothing: replies pile up in the server
    const before = (await g.getVolumeMetrics('disk')).readBytes
    const COUNT = 80
    const PIECE = 4 * MiB
    for (let i = 0; i < COUNT; i++) client.request(0, i, (i % 8) * PIECE, PIECE)
    // Wait until the server has started, then stopped, reading the volume for this client (on a
    // loaded machine the first reads may take longer than one pause).
    let read = 0
    const deadline = Date.now() + 60_000
    for (let last = -1; (read !== last || read === 0) && Date.now() < deadline;) {
      last = read
      await new Promise((resolve) => setTimeout(resolve, 400))
      read = (await g.getVolumeMetrics('disk')).readBytes - before
    }
    assert.ok(read >= 64 * MiB, `the server served requests until its bound (${read / MiB} MiB)`)
    assert.ok(read < 200 * MiB, `at most 128 MiB held plus a request and socket buffers, not all ${COUNT * PIECE / MiB} MiB (${read / MiB} MiB read)`)
    // Now the client reads: every reply arrives.
    client.socket.removeAllListeners('data')
    let received = 0
    const all = COUNT * (16 + PIECE)
    const done = new Promise<void>((resolve) => { client.socket.on('data', (chunk: Buffer) => { received += chunk.byteLength; if (received >= all) resolve() }) })
    client.socket.resume()
    await done
    assert.equal(received, all)
    assert.equal((await g.getVolumeMetrics('disk')).readBytes - before, COUNT * PIECE)
    client.socket.destroy()
  })

  it('answers past-the-end trims and unadvertised FAST_ZERO with EINVAL; a failed SET_META_CONTEXT clears the earlier choice; a snapshot name may hold @', async () => {
    await g.createSnapshot('scratch', 'nightly@2024-06-01')
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    await client.structuredReplies()
    assert.deepEqual(await client.setAllocationContext('scratch'), ['base:allocation']) // one META_CONTEXT, then ACK
    client.option(10, metaContextData('nope', ['base:allocation'])) // SET_META_CONTEXT fails: unknown export
    assert.equal((await client.optionReply()).type, 0x80000006)
    await client.go('scratch')
    const structuredError = async (): Promise<number> => {
      const reply = await client.chunk()
      assert.equal(reply.type, 32769) // NBD_REPLY_TYPE_ERROR
      return reply.error
    }
    client.request(7, 1, 0, 4096) // BLOCK_STATUS: no context chosen any more
    assert.equal(await structuredError(), 22)
    client.request(4, 2, 8 * MiB - 4096, 8192) // TRIM past the end
    assert.equal(await structuredError(), 22)
    client.request(6, 3, 0, 4096, 1 << 4) // WRITE_ZEROES with FAST_ZERO, not advertised
    assert.equal(await structuredError(), 22)
    client.socket.destroy()

    const snap = await NbdClient.connect(server.port, clientTimeouts)
    await snap.hello()
    const { size, flags } = await snap.go('scratch@nightly@2024-06-01')
    assert.equal(size, 8 * MiB)
    assert.ok((flags & 2) !== 0, 'a snapshot is read-only')
    snap.socket.destroy()
  })

  it('refuses command flags that do not apply to the command with EINVAL (BLOCK_STATUS included), with no effect on the data', async () => {
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    await client.structuredReplies()
    assert.deepEqual(await client.setAllocationContext('scratch'), ['base:allocation']) // one META_CONTEXT, then ACK
    await client.go('scratch')
    const before = await g.read('scratch', 0, 8192)
    const FUA = 1
    const NO_HOLE = 2
    const DF = 4
    const REQ_ONE = 8
    const refused: Array<[number, number, Uint8Array?]> = [
      [7, 1 << 5], // BLOCK_STATUS with an unknown flag
      [7, NO_HOLE], // BLOCK_STATUS with a WRITE_ZEROES flag
      [0, REQ_ONE], // READ with a BLOCK_STATUS flag
      [0, NO_HOLE], // READ with a WRITE_ZEROES flag
      [1, DF, new Uint8Array(4096).fill(0xee)], // WRITE with a READ flag
      [1, NO_HOLE, new Uint8Array(4096).fill(0xee)], // WRITE with a WRITE_ZEROES flag
      [4, DF], // TRIM with a READ flag
      [6, REQ_ONE], // WRITE_ZEROES with a BLOCK_STATUS flag
      [3, NO_HOLE] // FLUSH with a WRITE_ZEROES flag
    ]
    refused.forEach(([type, flags, data], i) => { client.request(type, 100 + i, 0, data?.byteLength ?? 4096, flags, data) })
    const errors = new Map<number, number>()
    for (let i = 0; i < refused.length; i++) {
      const reply = await client.chunk()
      errors.set(reply.handle, reply.error)
    }
    assert.deepEqual(refused.map((_, i) => errors.get(100 + i)), refused.map(() => 22), 'EINVAL for each, in request order')
    assert.deepEqual(await g.read('scratch', 0, 8192), before, 'nothing written, trimmed or zeroed')
    // FUA is valid on every command; each command's own flag is accepted.
    const accepted: Array<[number, number]> = [[7, FUA | REQ_ONE], [0, FUA | DF], [3, FUA]]
    accepted.forEach(([type, flags], i) => { client.request(type, 200 + i, type === 3 ? 0 : 4096, type === 3 ? 0 : 4096, flags) })
    for (let i = 0; i < accepted.length; i++) assert.equal((await client.chunk()).error, 0)
    client.socket.destroy()
  })

  it('serving a principal: LIST names reach the listed volumes for it, and a volume it may only read is exported read-only by INFO and GO alike', async () => {
    const h = await GalleonFS.open({ inMemory: true })
    let principalServer: NbdServer | undefined
    try {
      await h.createVolume({ name: 'disk', sizeBytes: '1M' })
      await h.createVolume({ name: 'disk', sizeBytes: '2M', namespace: 'tenant-a' })
      await h.createVolume({ name: 'mine', sizeBytes: '3M', namespace: 'tenant-a' })
      await h.createAccessPolicy({ name: 'tenant', principals: ['role:tenant'], verbs: ['volume:read'], namespaces: ['*'] })
      principalServer = await NbdServer.listen(h.as({ id: 't', roles: ['tenant'], namespace: 'tenant-a' }), { port: 0 })
      const client = await NbdClient.connect(principalServer.port, clientTimeouts)
      await client.hello()
      const names = await client.list()
      assert.deepEqual(names.sort(), ['default/disk', 'disk', 'mine'])
      const sizes = new Map<string, number>()
      for (const name of names) {
        const c = await NbdClient.connect(principalServer.port, clientTimeouts)
        await c.hello()
        c.option(6, infoRequestData(name)) // INFO
        let infoFlags = -1
        for (let reply = await c.optionReply(); reply.type !== 1; reply = await c.optionReply()) {
          assert.ok(reply.type < 0x80000000, `INFO ${name} refused: ${reply.data.toString()}`)
          if (reply.type === 3 && reply.data.readUInt16BE(0) === 0) infoFlags = reply.data.readUInt16BE(10)
        }
        const go = await c.go(name)
        sizes.set(name, go.size)
        assert.equal(go.flags, infoFlags, `INFO and GO agree for ${name}`)
        assert.ok((go.flags & 2) !== 0, `${name}: read-only for a principal that may not write`)
        c.request(1, 1, 0, 4096, 0, new Uint8Array(4096))
        assert.equal((await c.reply()).error, 1) // EPERM
        c.socket.destroy()
      }
      assert.deepEqual(Object.fromEntries(sizes), { 'default/disk': MiB, disk: 2 * MiB, mine: 3 * MiB })
      client.socket.destroy()
    } finally {
      await principalServer?.close()
      await h.close()
    }
  })

  it('exports a ReadWriteOnce volume that is mounted read-write as read-only; close() answers requests in flight first', async () => {
    const mountId = await g.mounts.mountVolume('scratch', join(root, 'virtual-scratch'))
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    assert.ok(((await client.go('scratch')).flags & 2) !== 0)
    client.socket.destroy()
    await g.mounts.unmountVolume(mountId)

    const own = await NbdServer.listen(g, { port: 0 })
    const writer = await NbdClient.connect(own.port, clientTimeouts)
    await writer.hello()
    await writer.go('scratch')
    const data = new Uint8Array(randomBytes(MiB))
    writer.request(1, 42, 0, MiB, 0, data)
    // Once the server has the whole request (a slow store keeps it in flight is not needed: close
    // waits for whatever was received).
    await new Promise((resolve) => setTimeout(resolve, 100))
    await own.close()
    const reply = await writer.reply()
    assert.equal(reply.handle, 42)
    assert.equal(reply.error, 0)
    assert.deepEqual(await g.read('scratch', 0, MiB), data)
    writer.socket.destroy()
  })


  it('a client connected read-write to a ReadWriteOnce volume is its writer: a read-write mount is refused until it disconnects, read-only mounts and more NBD clients are not', async () => {
    const first = await NbdClient.connect(server.port, clientTimeouts)
    await first.hello()
    assert.equal((await first.go('scratch')).flags & 2, 0, 'writable export')
    const second = await NbdClient.connect(server.port, clientTimeouts)
    await second.hello()
    assert.equal((await second.go('scratch')).flags & 2, 0, 'a second NBD client (multi-conn) may write too')
    await assert.rejects(g.mounts.mountVolume('scratch', join(root, 'virtual-rw')), (err: Error & { code?: string }) => err.code === 'BUSY' && /NBD client connected read-write/.test(err.message))
    const readOnly = await g.mounts.mountVolume('scratch', join(root, 'virtual-ro'), { readOnly: true })
    await g.mounts.unmountVolume(readOnly)
    // A session holds the claim for as long as it lasts, whatever it sends.
    first.request(3, 1, 0, 0) // FLUSH
    assert.equal((await first.reply()).error, 0)
    first.socket.destroy()
    second.socket.destroy()
    let mountId: string | undefined
    for (let i = 0; i < 100 && mountId === undefined; i++) {
      mountId = await g.mounts.mountVolume('scratch', join(root, 'virtual-rw')).catch((err: { code?: string }) => {
        if (err.code !== 'BUSY') throw err
        return undefined
      })
      if (mountId === undefined) await new Promise((resolve) => setTimeout(resolve, 20))
    }
    assert.ok(mountId !== undefined, 'the mount succeeds once the NBD clients are gone')
    await g.mounts.unmountVolume(mountId)
  })
  it('deleting a volume an NBD client is connected to read-write is refused (BUSY) until it disconnects, or forced', async () => {
    await g.createVolume({ name: 'attached', sizeBytes: 1 * MiB })
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    await client.go('attached')
    await assert.rejects(g.deleteVolume('attached'), (err: Error & { code?: string }) => err.code === 'BUSY' && /NBD clients connected read-write/.test(err.message))
    client.request(1, 1, 0, 4096, 0, new Uint8Array(4096).fill(5))
    assert.equal((await client.reply()).error, 0, 'the client goes on writing')
    await g.deleteVolume('attached', { force: true })
    await assert.rejects(g.getVolume('attached'), { code: 'VOLUME_NOT_FOUND' })
    client.request(1, 2, 0, 4096, 0, new Uint8Array(4096).fill(6))
    assert.notEqual((await client.reply()).error, 0, 'after a forced delete its writes fail')
    client.socket.destroy()
  })

  it('a client of a snapshot export (or a file open on the snapshot) is its reader: deleting the snapshot or its volume is refused (BUSY) until it goes, or forced', async () => {
    await g.createVolume({ name: 'snapread', sizeBytes: 1 * MiB })
    await g.writeBlock('snapread', 0, new Uint8Array(4096).fill(7))
    await g.createSnapshot('snapread', 's1')
    const client = await NbdClient.connect(server.port, clientTimeouts)
    await client.hello()
    await client.go('snapread@s1')
    await assert.rejects(g.deleteSnapshot('snapread', 's1'), (err: Error & { code?: string }) => err.code === 'BUSY' && /snapshot s1 has 1 reader\(s\).*NBD clients/.test(err.message))
    await assert.rejects(g.deleteVolume('snapread'), (err: Error & { code?: string }) => err.code === 'BUSY' && /volume snapread has 1 reader\(s\) of its snapshots/.test(err.message))
    client.request(0, 1, 0, 4096)
    const read = await client.reply(4096)
    assert.equal(read.error, 0, 'the client goes on reading')
    assert.ok(read.data.every((b) => b === 7))
    // NBD_OPT_INFO alone holds nothing; a file opened on the snapshot is a reader too.
    const file = await g.mounts.openVolumeFile({ volume: 'snapread', snapshot: 's1' })
    client.socket.destroy()
    // The server lets the session's reader go once it sees the disconnect; the file still holds the snapshot.
    const deadline = Date.now() + 10_000
    for (;;) {
      const err = await g.deleteSnapshot('snapread', 's1').then(() => undefined, (e: Error & { code?: string }) => e)
      assert.ok(err !== undefined, 'the open file keeps the snapshot')
      assert.equal(err.code, 'BUSY')
      if (/has 1 reader\(s\): files open on it/.test(err.message)) break
      assert.ok(Date.now() < deadline, `the disconnected client stopped counting: ${err.message}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    await file.close()
    await g.deleteSnapshot('snapread', 's1')
    await assert.rejects(g.getSnapshot('snapread', 's1'), { code: 'SNAPSHOT_NOT_FOUND' })
    // Forced: deleted under a connected client, whose next read fails.
    await g.createSnapshot('snapread', 's2')
    const forced = await NbdClient.connect(server.port, clientTimeouts)
    await forced.hello()
    await forced.go('snapread@s2')
    await g.deleteSnapshot('snapread', 's2', { force: true })
    forced.request(0, 2, 0, 4096)
    assert.notEqual((await forced.reply(4096)).error, 0, 'after a forced delete its reads fail')
    forced.socket.destroy()
    await g.deleteVolume('snapread')
  })

  it('close() with many pipelined requests in flight answers all of them and returns', async () => {
    const own = await NbdServer.listen(g, { port: 0 })
    const client = await NbdClient.connect(own.port, clientTimeouts)
    await client.hello()
    await client.go('disk')
    const before = (await g.getVolumeMetrics('disk')).readOps
    for (let i = 0; i < 100; i++) client.request(0, i, (i % 32) * MiB, 65536)
    // Close once the server is well into the pipeline (a fixed pause is too short on a busy machine).
    const deadline = Date.now() + 10_000
    while ((await g.getVolumeMetrics('disk')).readOps - before < 64 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1))
    const started = Date.now()
    await own.close()
    assert.ok(Date.now() - started < 8000, 'close returned promptly')
    let answered = 0
    while (answered < 100) {
      const head = await client.read(16, 2000)
      if (head === undefined) break
      assert.equal(head.readUInt32BE(4), 0)
      await client.read(65536)
      answered++
    }
    assert.ok(answered >= 64, `${answered} replies`)
    client.socket.destroy()
  })

  it('listen validates its options and reports a taken port', async () => {
    await assert.rejects(NbdServer.listen(g, { port: -1 }), { code: 'INVALID_ARGUMENT' })
    await assert.rejects(NbdServer.listen(null as never), { code: 'INVALID_ARGUMENT' })
    await assert.rejects(NbdServer.listen(g, { port: server.port }), { code: 'BUSY' })
  })
})
