// README "NBD": claims no other test checks literally, with real clients: the server listens on
// loopback unless told otherwise, exports go by name, `namespace/name` and id, a ReadOnlyMany volume
// and `volume@snapshot` are exported read-only, the README's own nbdcopy and fio lines work, and a
// block trimmed over NBD is a hole to nbdinfo --map and to g.getAllocation alike.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { networkInterfaces, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { AccessMode, GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { NbdClient } from './support/nbd-client.js'

const exec = promisify(execFile)
const missing = ['nbdinfo', 'nbdcopy', 'fio'].find((tool) => !['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))))
const skip = missing === undefined ? undefined : `${missing} is not installed (see .ci/run)`
if (skip !== undefined) process.stdout.write(`# SKIP h54 NBD tests: ${skip}\n`)
const MiB = 1 << 20
const CMD_TRIM = 4

let root: string
let g: GalleonFS
let server: NbdServer
let uri: string

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'h54-nbd-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  server = await NbdServer.listen(g, { port: 0 })
  uri = `nbd://127.0.0.1:${server.port}`
})
after(async () => {
  await server?.close()
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

const info = async (name: string): Promise<{ 'export-size': number, is_read_only: boolean, block_size_minimum: number, block_size_preferred: number, block_size_maximum: number }> =>
  JSON.parse((await exec('nbdinfo', ['--json', `${uri}/${encodeURIComponent(name).replace(/%2F/g, '/').replace(/%40/g, '@')}`])).stdout).exports[0]

describe('README NBD', { skip }, () => {
  it('listens on loopback unless told otherwise, on a free port for port 0', async () => {
    assert.equal(server.host, '127.0.0.1')
    assert.ok(server.port > 0)
    const other = Object.values(networkInterfaces()).flat().find((a) => a !== undefined && a.family === 'IPv4' && !a.internal)
    if (other === undefined) return
    // Not reachable on this machine's other addresses.
    const reached = await new Promise<string>((resolve) => {
      const socket = connect(server.port, other.address)
      socket.once('connect', () => { socket.destroy(); resolve('connected') })
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'))
    })
    assert.equal(reached, 'ECONNREFUSED', `${other.address}:${server.port}`)
  })

  it('exports by name, namespace/name and id; ReadOnlyMany volumes and snapshots read-only; nbdinfo shows sizes and block sizes; the README\'s nbdcopy and fio lines work', async () => {
    const images = await g.createVolume({ name: 'images', sizeBytes: '8M' })
    const team = await g.createVolume({ name: 'images', sizeBytes: '4M', namespace: 'team' })
    await g.createVolume({ name: 'shelf', sizeBytes: '1M', accessModes: [AccessMode.ReadOnlyMany] })
    const bytes = new Uint8Array(randomBytes(8 * MiB))
    await g.write('images', 0, bytes)
    await g.createSnapshot('images', 'v1')
    await g.write('images', 0, new Uint8Array(MiB).fill(1))

    const byName = await info('images')
    assert.equal(byName['export-size'], 8 * MiB)
    assert.equal(byName.is_read_only, false)
    assert.ok(byName.block_size_minimum >= 1 && byName.block_size_preferred === 4096 && byName.block_size_maximum >= 4096, JSON.stringify(byName))
    assert.equal((await info(images.id))['export-size'], 8 * MiB)
    assert.equal((await info('team/images'))['export-size'], 4 * MiB)
    assert.equal((await info(team.id))['export-size'], 4 * MiB)
    assert.equal((await info('shelf')).is_read_only, true, 'a ReadOnlyMany volume is exported read-only')
    assert.equal((await info('images@v1')).is_read_only, true)
    // NBD_OPT_LIST "shows the names that reach each volume".
    const listed = JSON.parse((await exec('nbdinfo', ['--list', '--json', uri])).stdout).exports.map((e: { 'export-name': string }) => e['export-name']) as string[]
    for (const name of ['images', 'team/images', 'shelf']) assert.ok(listed.includes(name), `${name} in ${listed.join(', ')}`)

    // `nbdcopy nbd://127.0.0.1:10809/images@v1 v1.raw  # a snapshot, exported read-only`
    const out = join(root, 'v1.raw')
    await exec('nbdcopy', [`${uri}/images@v1`, out])
    assert.ok(Buffer.from(await readFile(out)).equals(bytes), 'the snapshot as it was')
    // `fio --name=t --ioengine=nbd --uri=nbd://127.0.0.1:10809/images --rw=randrw --bs=4k --size=8M`
    const { stdout } = await exec('fio', ['--name=t', '--ioengine=nbd', `--uri=${uri}/images`, '--rw=randrw', '--bs=4k', '--size=8M', '--output-format=json'], { cwd: root, maxBuffer: 16 << 20 })
    assert.equal(JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0].error, 0)
  })

  it('a block trimmed over NBD is a hole to nbdinfo --map, as g.getAllocation says', async () => {
    await g.createVolume({ name: 'holes', sizeBytes: '4M' })
    await g.write('holes', 0, new Uint8Array(2 * MiB).fill(7))
    const client = await NbdClient.connect(server.port, { closeTimeoutMs: 3_000 })
    try {
      await client.hello()
      await client.go('holes')
      client.request(CMD_TRIM, 1, MiB, 512 * 1024)
      assert.equal((await client.reply()).error, 0)
    } finally {
      client.socket.destroy()
    }
    const map = (await exec('nbdinfo', ['--map', `${uri}/holes`])).stdout.trim().split('\n').map((line) => line.trim().split(/\s+/).slice(0, 3).map(Number))
    // Type 3 = hole and zero, 0 = data.
    assert.deepEqual(map, [[0, MiB, 0], [MiB, 512 * 1024, 3], [MiB + 512 * 1024, 512 * 1024, 0], [2 * MiB, 2 * MiB, 3]])
    assert.deepEqual(await g.getAllocation('holes', 0, 4 * MiB), [
      { offset: 0, length: MiB, allocated: true },
      { offset: MiB, length: 512 * 1024, allocated: false },
      { offset: MiB + 512 * 1024, length: 512 * 1024, allocated: true },
      { offset: 2 * MiB, length: 2 * MiB, allocated: false }
    ])
  })
})
