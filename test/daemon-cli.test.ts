// The daemon and the CLI as real processes: `galleonfs -d` on a free loopback port, driven by the
// `galleonfs` CLI (examples/galleonfs.ts run with tsx, as the package's bin runs its build).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, createServer as createNetServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ENTRY, ROOT, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { scriptArgs } from './support/child-script.js'

const KMS_COMMAND = join(ROOT, 'test', 'fixtures', 'kms-command.mjs')

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-daemon-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

type Running = RunningDaemon

/** Starts `galleonfs -d` on a free loopback IPC port and resolves once it is ready. */
async function startDaemon (args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Running> {
  return await startDaemonProcess(['--ipc-address', '127.0.0.1:0', ...args], { cwd: root, env })
}

/** Runs the CLI against the daemon at `address`; resolves to its exit code and output. */
async function cli (address: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  return await galleonfs(['--daemon-address', address, ...args], env)
}

/** Runs the `galleonfs` program with `args`. */
async function galleonfs (args: string[], env: Record<string, string> = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(process.execPath, [...scriptArgs(ENTRY), ...args], { cwd: root, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, stdout, stderr })
    })
  })
}

/** Runs `nbdcopy from to`. */
async function nbdcopy (from: string, to: string): Promise<void> {
  await new Promise<void>((resolve, reject) => execFile('nbdcopy', [from, to], (err, _stdout, stderr) => err === null ? resolve() : reject(new Error(`nbdcopy ${from} ${to}: ${stderr}`))))
}

/** The NBD address a daemon logged last ("serving NBD exports"). */
function nbdAddressOf (daemon: Running): string | undefined {
  return daemon.logs.map((line) => JSON.parse(line) as { message?: string, nbdAddress?: string }).filter((entry) => entry.message === 'serving NBD exports').at(-1)?.nbdAddress
}

const NBDCOPY = existsSync('/usr/bin/nbdcopy') ? undefined : 'nbdcopy is not installed (Debian package libnbd-bin)'

describe('daemon and CLI', () => {
  it('creates, lists, shows and deletes volumes; JSON and tables; status and storage classes', async () => {
    const storage = join(root, 'node1')
    const daemon = await startDaemon(['--storage-path', storage])
    try {
      const created = await cli(daemon.address, ['--json', 'volume', 'create', '--name', 'web-data', '--size', '16M', '--storage-class', 'fast-local-ssd'])
      assert.equal(created.code, 0, created.stderr)
      assert.equal(JSON.parse(created.stdout).sizeBytes, 16 << 20)
      // The seed's defaults: 1G, encrypted-storage (here with one replica, all a single node offers).
      const db = await cli(daemon.address, ['volume', 'create', '-n', 'db-data', '-r', '1'])
      assert.equal(db.code, 0, db.stderr)
      assert.match(db.stdout, /created volume db-data .*1073741824 bytes, class encrypted-storage/)
      const list = await cli(daemon.address, ['volume', 'list'])
      assert.match(list.stdout.split('\n')[0] ?? '', /^NAME\s+ID\s+SIZE\s+CLASS\s+REPLICAS\s+STATE$/)
      assert.deepEqual(JSON.parse((await cli(daemon.address, ['--json', 'volume', 'list'])).stdout).map((v: { name: string }) => v.name), ['web-data', 'db-data'])
      const shown = JSON.parse((await cli(daemon.address, ['--json', 'volume', 'get', 'db-data'])).stdout)
      assert.equal(shown.encrypted, true)
      assert.equal(shown.usage.allocatedBytes, 0)
      const status = JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'status'])).stdout)
      assert.equal(status.state, 'running')
      assert.equal(status.volumes, 2)
      assert.match((await cli(daemon.address, ['storage-class', 'list'])).stdout, /encrypted-storage\s+Retain\s+true/)
      assert.equal(JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'config'])).stdout).storagePath, storage)
      // Retain class: refused without --force.
      const refused = await cli(daemon.address, ['volume', 'delete', 'db-data'])
      assert.equal(refused.code, 1)
      assert.match(refused.stderr, /BUSY: .*Retain/)
      assert.equal((await cli(daemon.address, ['volume', 'delete', 'db-data', '--force'])).code, 0)
      assert.equal((await cli(daemon.address, ['volume', 'delete', 'web-data'])).code, 0)
      assert.deepEqual(JSON.parse((await cli(daemon.address, ['--json', 'volume', 'list'])).stdout), [])
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('reports user errors in one line with exit codes 1 and 2, never a stack trace', async () => {
    const daemon = await startDaemon(['--storage-path', join(root, 'node2')])
    try {
      const unknown = await cli(daemon.address, ['volume', 'get', 'nope'])
      assert.equal(unknown.code, 1)
      assert.match(unknown.stderr, /^galleonfs: VOLUME_NOT_FOUND: no volume with id or name "nope"/)
      const badSize = await cli(daemon.address, ['volume', 'create', '--size', 'lots'])
      assert.equal(badSize.code, 2)
      assert.match(badSize.stderr, /cannot parse size "lots"/)
      const badType = await cli(daemon.address, ['volume', 'create', '-t', 'forever'])
      assert.equal(badType.code, 2)
      const unknownCommand = await cli(daemon.address, ['volume', 'explode'])
      assert.equal(unknownCommand.code, 2)
      const wrongToken = await cli(daemon.address, ['daemon', 'status'], { GALLEONFS_TOKEN: 'not-the-token' })
      assert.equal(wrongToken.code, 1)
      assert.match(wrongToken.stderr, /rejected the API token/)
      const tooBig = await cli(daemon.address, ['volume', 'create', '-n', 'x', '-s', '1M', '-c', 'no-such-class'])
      assert.equal(tooBig.code, 1)
      assert.match(tooBig.stderr, /STORAGE_CLASS_NOT_FOUND/)
      for (const result of [unknown, badSize, wrongToken, tooBig]) assert.doesNotMatch(result.stderr, /\n\s+at /)
      // The API itself: no token, an oversized body, an unknown route; Prometheus metrics with the token.
      const token = (await readFile(join(root, 'node2', 'ipc.token'), 'utf8')).trim()
      const base = `http://${daemon.address}`
      assert.equal((await fetch(`${base}/v1/volumes`)).status, 401)
      const big = await fetch(`${base}/v1/volumes`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: 'x'.repeat(2 * 1024 * 1024) })
      assert.equal(big.status, 413)
      assert.equal((await fetch(`${base}/v1/nothing`, { headers: { authorization: `Bearer ${token}` } })).status, 404)
      const metrics = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${token}` } })
      assert.equal(metrics.status, 200)
      assert.match(await metrics.text(), /galleonfs_volumes 0/)
      // A malformed percent-escape in a name, and write data that is not base64, are the client's mistakes.
      const api = async (method: string, path: string, body?: unknown): Promise<{ status: number, answer: { code?: string, error?: { code: string }, data?: string } }> => {
        const response = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
        const text = await response.text()
        return { status: response.status, answer: text === '' ? {} : JSON.parse(text) }
      }
      const malformed = await api('GET', '/v1/volumes/%E0%A4%A')
      assert.deepEqual([malformed.status, malformed.answer.error?.code], [400, 'INVALID_ARGUMENT'])
      assert.equal((await api('POST', '/v1/volumes', { name: 'b64', sizeBytes: 1 << 20, storageClass: 'fast-local-ssd' })).status, 200)
      for (const data of ['hello world, not base64!', '!!!!', 'QUJD', 'QUI=x', '{"json":"by mistake"}']) {
        const written = await api('POST', '/v1/volumes/b64/write', { offset: 0, data })
        if (data === 'QUJD') assert.equal(written.status, 204)
        else assert.deepEqual([written.status, written.answer.error?.code], [400, 'INVALID_ARGUMENT'], data)
      }
      assert.equal((await api('POST', '/v1/volumes/b64/read', { offset: 0, length: 8 })).answer.data, Buffer.from('ABC\0\0\0\0\0').toString('base64'))
    } finally {
      daemon.child.kill('SIGTERM')
      await daemon.exited
    }
    const noDaemon = await cli(daemon.address, ['volume', 'list'])
    assert.equal(noDaemon.code, 1)
    assert.match(noDaemon.stderr, /no GalleonFS daemon answers at .*start it with `galleonfs -d/)
  })

  it('stops on SIGTERM while clients hold connections with half a request, or none', { timeout: 120_000 }, async () => {
    const daemon = await startDaemon(['--storage-path', join(root, 'node-stall')])
    const port = Number(daemon.address.split(':').pop())
    const open = async (text: string): Promise<{ closed: Promise<unknown> }> => {
      const socket = connect(port, '127.0.0.1')
      socket.on('error', () => {})
      await once(socket, 'connect')
      if (text !== '') socket.write(text)
      return { closed: once(socket, 'close') }
    }
    // Headers never finished (no token needed for that), and a connection that sends nothing.
    const partial = await open('GET /v1/status HTTP/1.1\r\nHost: daemon\r\n')
    const silent = await open('')
    // An answer to a later connection: the daemon has accepted the earlier ones.
    assert.equal((await fetch(`http://${daemon.address}/v1/status`)).status, 401)
    daemon.child.kill('SIGTERM')
    assert.equal(await daemon.exited, 0)
    await partial.closed
    await silent.closed
  })

  it('listens on an IPv6 IPC address: logs it in brackets, and the CLI finds the token there', async () => {
    const daemon = await startDaemonProcess(['--ipc-address', '[::1]:0', '--storage-path', join(root, 'node-v6')], { cwd: root })
    try {
      assert.match(daemon.address, /^\[::1\]:\d+$/)
      const listed = await cli(daemon.address, ['--json', 'volume', 'list'], { GALLEONFS_TOKEN: '' })
      assert.equal(listed.code, 0, listed.stderr)
      assert.deepEqual(JSON.parse(listed.stdout), [])
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('keeps volumes across a graceful stop, a SIGKILL and a restart; refuses a second daemon on the same storage', async () => {
    const storage = join(root, 'node3')
    let daemon = await startDaemon(['--storage-path', storage])
    assert.equal((await cli(daemon.address, ['volume', 'create', '-n', 'kept', '-s', '4M', '-c', 'fast-local-ssd'])).code, 0)
    const second = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', '--storage-path', storage, '--ipc-address', '127.0.0.1:0'], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
    let secondLog = ''
    second.stderr.on('data', (chunk: Buffer) => { secondLog += chunk.toString() })
    assert.equal(await new Promise((resolve) => second.once('exit', resolve)), 1)
    assert.match(secondLog, /already open/)
    assert.equal((await cli(daemon.address, ['daemon', 'stop'])).code, 0)
    assert.equal(await daemon.exited, 0)

    daemon = await startDaemon(['--storage-path', storage])
    assert.deepEqual(JSON.parse((await cli(daemon.address, ['--json', 'volume', 'list'])).stdout).map((v: { name: string }) => v.name), ['kept'])
    assert.equal((await cli(daemon.address, ['volume', 'create', '-n', 'after-kill', '-s', '4M', '-c', 'fast-local-ssd'])).code, 0)
    daemon.child.kill('SIGKILL')
    await daemon.exited
    daemon = await startDaemon(['--storage-path', storage])
    try {
      assert.deepEqual(JSON.parse((await cli(daemon.address, ['--json', 'volume', 'list'])).stdout).map((v: { name: string }) => v.name).sort(), ['after-kill', 'kept'])
    } finally {
      daemon.child.kill('SIGINT')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('serves NBD exports when given --nbd-address', { skip: existsSync('/usr/bin/nbdinfo') ? undefined : 'nbdinfo is not installed' }, async () => {
    const storage = join(root, 'node7')
    const daemon = await startDaemon(['--storage-path', storage, '--nbd-address', '127.0.0.1:0', '--replication-strategy', 'asynchronous'])
    try {
      assert.equal((await cli(daemon.address, ['volume', 'create', '-n', 'exported', '-s', '2M', '-c', 'fast-local-ssd'])).code, 0)
      const ready = daemon.logs.map((line) => JSON.parse(line) as { message?: string, nbdAddress?: string }).find((entry) => entry.message === 'ready')
      const info = await new Promise<string>((resolve, reject) => execFile('nbdinfo', ['--json', `nbd://${ready?.nbdAddress}/exported`], (err, stdout) => err === null ? resolve(stdout) : reject(err)))
      assert.equal(JSON.parse(info).exports[0]['export-size'], 2 << 20)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('keeps every flushed write when the daemon is killed with SIGKILL: written and read back over NBD', { skip: NBDCOPY }, async () => {
    const storage = join(root, 'node15')
    let daemon = await startDaemon(['--storage-path', storage, '--nbd-address', '127.0.0.1:0'])
    const image = join(root, 'durable.img')
    const data = randomBytes(8 << 20)
    await writeFile(image, data)
    try {
      assert.equal((await cli(daemon.address, ['volume', 'create', '-n', 'durable', '-s', '8M', '-c', 'fast-local-ssd'])).code, 0)
      // nbdcopy ends with NBD_CMD_FLUSH: once it returns, the daemon has made every write durable.
      await nbdcopy(image, `nbd://${nbdAddressOf(daemon)}/durable`)
    } finally {
      daemon.child.kill('SIGKILL')
      await daemon.exited
    }
    daemon = await startDaemon(['--storage-path', storage, '--nbd-address', '127.0.0.1:0'])
    try {
      const back = join(root, 'durable-back.img')
      await nbdcopy(`nbd://${nbdAddressOf(daemon)}/durable`, back)
      assert.ok((await readFile(back)).equals(data), 'every byte written before the SIGKILL reads back')
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('creates and lists 100 volumes through the API (the seed\'s performance loop), reporting the time', async () => {
    const storage = join(root, 'node5')
    const daemon = await startDaemon(['--storage-path', storage])
    try {
      const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
      const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
      const started = performance.now()
      for (let i = 0; i < 100; i++) {
        const response = await fetch(`http://${daemon.address}/v1/volumes`, { method: 'POST', headers, body: JSON.stringify({ name: `perf-${i}`, sizeBytes: '1M', storageClass: 'fast-local-ssd' }) })
        assert.equal(response.status, 200, await response.text())
      }
      const created = performance.now() - started
      const list = await cli(daemon.address, ['--json', 'volume', 'list'])
      assert.equal(JSON.parse(list.stdout).length, 100)
      process.stdout.write(`# 100 volumes created through the API in ${Math.round(created)} ms (${(created / 100).toFixed(1)} ms each), listed by the CLI\n`)
    } finally {
      daemon.child.kill('SIGTERM')
      await daemon.exited
    }
  })

  it('reads the TOML configuration file, lets flags override it, and refuses bad configuration with exit code 2', async () => {
    const config = join(root, 'daemon.conf')
    await writeFile(config, `[daemon]\nstorage_path = "${join(root, 'from-file')}"\nblock_size = 8192\nipc_address = "127.0.0.1:1"\n\n[cluster]\nauto_join = true\n\n[replication]\nstrategy = "synchronous"\n`)
    const daemon = await startDaemon(['--config', config])
    try {
      const shown = JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'config'])).stdout)
      assert.equal(shown.storagePath, join(root, 'from-file'))
      assert.equal(shown.blockSize, 8192)
      assert.equal(shown.ipcAddress, '127.0.0.1:0') // the flag won over the file
      assert.ok(daemon.logs.some((line) => /not used by this release/.test(line) && line.includes('cluster.auto_join')))
    } finally {
      daemon.child.kill('SIGTERM')
      await daemon.exited
    }
    for (const [text, message] of [
      ['[daemon]\nblock_size = 1000\n', /block_size in \[daemon\] must be a power of two/],
      ['[daemon]\ncolour = "red"\n', /unknown key colour in \[daemon\]/],
      ['[nonsense]\n', /unknown section \[nonsense\]/],
      ['[daemon\n', /not valid TOML/]
    ] as const) {
      await writeFile(config, text)
      const child = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', '--config', config], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
      let log = ''
      child.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
      assert.equal(await new Promise((resolve) => child.once('exit', resolve)), 2, log)
      assert.match(log, message)
    }
  })
})

describe('daemon and CLI: snapshots, backups, clones, storage classes, cluster, mounts', () => {
  it('runs every volume, snapshot, backup and storage-class command against a real daemon', async () => {
    const storage = join(root, 'node6')
    const mounts = join(root, 'mnt6')
    const target = join(root, 'backups6')
    const daemon = await startDaemon(['--storage-path', storage, '--mount-point', mounts])
    const ok = async (args: string[]): Promise<string> => {
      const result = await cli(daemon.address, args)
      assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    try {
      await ok(['volume', 'create', '-n', 'app', '-s', '4M', '-c', 'fast-local-ssd'])
      assert.match(await ok(['volume', 'expand', 'app', '8M']), /is now 8388608 bytes/)
      assert.match(await ok(['snapshot', 'create', 'app', 'first']), /snapshot first of app taken/)
      assert.deepEqual(JSON.parse(await ok(['--json', 'snapshot', 'list', 'app'])).map((s: { name: string }) => s.name), ['first'])
      assert.match(await ok(['volume', 'clone', 'app', 'app-copy', '--snapshot', 'first']), /cloned app as app-copy/)
      const backup = JSON.parse(await ok(['--json', 'backup', 'create', 'app', '--target', target]))
      assert.equal(backup.strategy, 'full')
      assert.equal(JSON.parse(await ok(['--json', 'backup', 'list', 'app', '--target', target]))[0].id, backup.id)
      assert.match(await ok(['backup', 'verify', backup.id, '--target', target]), /: ok/)
      assert.match(await ok(['backup', 'adopt', backup.id, '--target', target]), /nothing to adopt \(its chain is tagged already, or plain\)/)
      assert.match(await ok(['backup', 'restore', backup.id, '--name', 'app-restored', '--target', target]), /into volume app-restored/)
      assert.match(await ok(['snapshot', 'restore', 'app', 'first']), /reverted to snapshot first/)
      await ok(['volume', 'delete', 'app-copy'])
      assert.match(await ok(['snapshot', 'delete', 'app', 'first']), /deleted snapshot first/)
      // Backup policies: created, listed, run now, deleted.
      assert.match(await ok(['backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--volumes', 'app', '--strategy', 'incremental', '--daily', '7', '--target', target]), /created backup policy nightly; next run 20/)
      assert.deepEqual(JSON.parse(await ok(['--json', 'backup', 'policy', 'list'])).map((p: { name: string }) => p.name), ['nightly'])
      assert.match(await ok(['backup', 'policy', 'run', 'nightly']), /policy nightly: 1 backup\(s\)/)
      assert.equal(JSON.parse(await ok(['backup', 'policy', 'get', 'nightly'])).retention.daily, 7)
      const badPolicy = await cli(daemon.address, ['backup', 'policy', 'create', 'broken', '--schedule', 'whenever', '--volumes', 'app', '--daily', '7', '--target', target])
      assert.equal(badPolicy.code, 1)
      assert.match(badPolicy.stderr, /INVALID_ARGUMENT/)
      await ok(['backup', 'policy', 'delete', 'nightly'])
      // Storage classes from JSON and YAML files; a broken file is refused clearly.
      await writeFile(join(root, 'bulk.yaml'), 'name: bulk-hdd\nprovisioner: galleonfs.io/local\nreclaim_policy: Delete\nparameters:\n  disk_type: hdd\n')
      await writeFile(join(root, 'fast.json'), JSON.stringify({ name: 'fast-2', parameters: { encryption: 'false' } }))
      await ok(['storage-class', 'create', join(root, 'bulk.yaml')])
      await ok(['storage-class', 'create', join(root, 'fast.json')])
      assert.match(await ok(['storage-class', 'list']), /bulk-hdd/)
      await writeFile(join(root, 'broken.json'), '{ nope')
      const broken = await cli(daemon.address, ['storage-class', 'create', join(root, 'broken.json')])
      assert.equal(broken.code, 1)
      assert.match(broken.stderr, /is not valid JSON/)
      // One node: healthy and the leader; joining needs the cluster secret, leaving a cluster.
      const status = JSON.parse(await ok(['--json', 'cluster', 'status']))
      assert.equal(status.clustering, false)
      assert.deepEqual(status.members.map((n: { healthy: boolean, leader: boolean }) => [n.healthy, n.leader]), [[true, true]])
      assert.match(await ok(['cluster', 'peers']), /single node/)
      const join6 = await cli(daemon.address, ['cluster', 'join', '10.0.0.1:8081'])
      assert.equal(join6.code, 1)
      assert.match(join6.stderr, /NO_CLUSTER_SECRET: clustering needs the cluster's shared secret/)
      const leave6 = await cli(daemon.address, ['cluster', 'leave'])
      assert.equal(leave6.code, 1)
      assert.match(leave6.stderr, /INVALID_ARGUMENT: this instance is not in a cluster/)
      // Mounts through FUSE where the machine has it (the daemon was given --mount-point).
      const mounted = await cli(daemon.address, ['--json', 'volume', 'mount', 'app-restored', '--options', 'ro'])
      if (existsSync('/dev/fuse')) {
        assert.equal(mounted.code, 0, mounted.stderr)
        const mount = JSON.parse(mounted.stdout)
        assert.equal(mount.path, join(mounts, 'app-restored'))
        assert.equal(mount.readOnly, true)
        assert.match(await ok(['volume', 'unmount', 'app-restored']), /unmounted/)
      } else {
        assert.equal(mounted.code, 1)
      }
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})

describe('daemon: saved mounts', () => {
  it('keeps every mount of concurrent mount requests for a restart, and drops the mount of a volume deleted with --force', async () => {
    const storage = join(root, 'node-mounts')
    const config = join(root, 'mounts.toml')
    await writeFile(config, `[daemon]\nstorage_path = "${storage}"\nmount_point = "${join(root, 'mnt-virtual')}"\n\n[drivers]\nmount_driver = "virtual"\n`)
    const daemon = await startDaemon(['--config', config])
    const saved = async (): Promise<string[]> => (JSON.parse(await readFile(join(storage, 'daemon-mounts.json'), 'utf8')) as Array<{ path: string }>).map((m) => m.path.split('/').pop() as string).sort()
    try {
      const names = Array.from({ length: 8 }, (_, i) => `m${i}`)
      for (const name of names) assert.equal((await cli(daemon.address, ['volume', 'create', '-n', name, '-s', '1M', '-c', 'fast-local-ssd'])).code, 0)
      const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
      const mounted = await Promise.all(names.map(async (name) => (await fetch(`http://${daemon.address}/v1/volumes/${name}/mount`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })).status))
      assert.deepEqual(mounted, names.map(() => 200))
      assert.deepEqual(await saved(), names)
      const deleted = await cli(daemon.address, ['volume', 'delete', 'm3', '--force'])
      assert.equal(deleted.code, 0, deleted.stderr)
      assert.deepEqual(await saved(), names.filter((name) => name !== 'm3'))
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})

describe('CLI against a daemon that is slow, silent or cuts connections', () => {
  /** A stand-in daemon on a free loopback port; `answer` handles its requests. */
  async function fakeDaemon (answer: (request: IncomingMessage, response: ServerResponse) => void): Promise<{ address: string, close: () => Promise<void> }> {
    const server = createHttpServer(answer)
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, close: async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) } }
  }

  it('a long operation waits for its result however long after --timeout it comes; with --json too', async () => {
    const timeout = 0.5
    const daemon = await fakeDaemon((request, response) => {
      // The result comes well after the CLI's answer timeout (a slow backup target).
      const result = JSON.stringify({ id: 'b1', strategy: 'full', blocks: 1, storedBytes: 4096 })
      const streamed = (request.headers.accept ?? '').includes('application/x-ndjson')
      if (streamed) response.writeHead(200, { 'content-type': 'application/x-ndjson', 'x-galleonfs': '1' }).flushHeaders()
      setTimeout(() => {
        if (streamed) response.end(`{"result":${result}}\n`)
        else response.writeHead(200, { 'content-type': 'application/json', 'x-galleonfs': '1' }).end(result)
      }, timeout * 3000)
    })
    try {
      const made = await cli(daemon.address, ['--json', '--timeout', String(timeout), 'backup', 'create', 'db'])
      assert.equal(made.code, 0, made.stderr)
      assert.equal(JSON.parse(made.stdout).id, 'b1')
      assert.equal(made.stderr, '')
    } finally {
      await daemon.close()
    }
  })

  it('gives up on a daemon that accepts connections but does not answer, within --timeout and daemon status --wait', { timeout: 60_000 }, async () => {
    const held: Socket[] = []
    const silent = createNetServer((socket) => { held.push(socket) })
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const address = `127.0.0.1:${(silent.address() as { port: number }).port}`
    try {
      const listed = await cli(address, ['--timeout', '1', 'volume', 'list'])
      assert.equal(listed.code, 1)
      assert.match(listed.stderr, /^galleonfs: the daemon at 127\.0\.0\.1:\d+ accepted the connection but did not answer within 1 s/)
      const status = await cli(address, ['daemon', 'status', '--wait', '1'])
      assert.equal(status.code, 1)
      // The wait the user gave (its last attempt had only what was left of it: 999 ms or less).
      assert.match(status.stderr, /did not answer within 1 s; .* wait longer with --wait <seconds>/)
    } finally {
      for (const socket of held) socket.destroy()
      await new Promise((resolve) => silent.close(resolve))
    }
  })

  it('says a daemon cut the connection, not that none runs', async () => {
    const daemon = await fakeDaemon((request, response) => {
      if (request.url === '/v1/backups') {
        // A long operation cut after its first progress line.
        response.writeHead(200, { 'content-type': 'application/x-ndjson', 'x-galleonfs': '1' })
        response.write('{"progress":{"bytesDone":0,"bytesTotal":4096}}\n', () => { request.socket.destroy() })
      } else {
        request.socket.destroy()
      }
    })
    try {
      const listed = await cli(daemon.address, ['volume', 'list'])
      assert.equal(listed.code, 1)
      assert.match(listed.stderr, /^galleonfs: the daemon at [\d.:]+ closed the connection without answering; see its log/)
      const made = await cli(daemon.address, ['--json', 'backup', 'create', 'db'])
      assert.equal(made.code, 1)
      assert.match(made.stderr, /^galleonfs: the daemon at [\d.:]+ ended the answer before the operation finished; see its log/)
    } finally {
      await daemon.close()
    }
  })
})

describe('storage pools through the daemon and CLI', () => {
  it('pool create, list, get and delete, with --json and tables; a full pool refuses a volume with NO_SPACE', async () => {
    const daemon = await startDaemon(['--storage-path', join(root, 'pools')])
    const ok = async (args: string[]): Promise<string> => {
      const result = await cli(daemon.address, args)
      assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    try {
      assert.match(await ok(['pool', 'create', 'gold', '--capacity', '8M', '--overcommit', '1.5', '--nodes', 'n1,n2', '--node-labels', 'disk=ssd', '--zones', 'z1', '--description', 'fast shelf', '--labels', 'tier=gold']), /created storage pool gold: 8M \(up to 12M provisioned\)/)
      const plain = JSON.parse(await ok(['--json', 'pool', 'create', 'plain', '-s', '1M']))
      assert.deepEqual([plain.name, plain.capacityBytes, plain.overcommitRatio, plain.freeBytes], ['plain', 1 << 20, 1, 1 << 20])
      await ok(['volume', 'create', '-n', 'in-gold', '-s', '10M', '-c', 'fast-local-ssd', '--pool', 'gold'])
      const pools = JSON.parse(await ok(['--json', 'pool', 'list']))
      assert.deepEqual(pools.map((p: { name: string }) => p.name), ['gold', 'plain'])
      const gold = pools[0]
      assert.equal(gold.provisionedBytes, 10 << 20)
      assert.equal(gold.freeBytes, 2 << 20)
      assert.equal(gold.volumes, 1)
      assert.deepEqual(gold.nodes, ['n1', 'n2'])
      assert.deepEqual(gold.nodeSelector, { labels: { disk: 'ssd' }, zones: ['z1'] })
      assert.deepEqual(gold.labels, { tier: 'gold' })
      const table = (await ok(['pool', 'list'])).split('\n')
      assert.match(table[0] ?? '', /^NAME\s+CAPACITY\s+OVERCOMMIT\s+PROVISIONED\s+ALLOCATED\s+FREE\s+VOLUMES\s+NODES$/)
      assert.match(table[1] ?? '', /^gold\s+8M\s+1\.5\s+10M\s+0\s+2M\s+1\s+n1,n2$/)
      assert.match(table[2] ?? '', /^plain\s+1M\s+1\s+0\s+0\s+1M\s+0\s+\*$/)
      assert.equal(JSON.parse(await ok(['--json', 'pool', 'get', 'gold'])).description, 'fast shelf')
      // Full: refused in one line with the daemon's code, nothing created.
      const full = await cli(daemon.address, ['volume', 'create', '-n', 'too-big', '-s', '4M', '-c', 'fast-local-ssd', '--pool', 'gold'])
      assert.equal(full.code, 1)
      assert.match(full.stderr, /^galleonfs: NO_SPACE: storage pool gold is full: volume too-big needs 4194304 bytes/)
      assert.equal(JSON.parse(await ok(['--json', 'volume', 'list'])).length, 1)
      // Bad input and missing pools: exit 1 with the code; a bad flag value: exit 2.
      const bad = await cli(daemon.address, ['pool', 'create', 'Bad_Name', '-s', '1M'])
      assert.equal(bad.code, 1)
      assert.match(bad.stderr, /INVALID_ARGUMENT: pool name/)
      assert.equal((await cli(daemon.address, ['pool', 'create', 'x', '-s', '1M', '--overcommit', '0.5'])).code, 2)
      assert.equal((await cli(daemon.address, ['pool', 'create', 'x'])).code, 2, '--capacity is required')
      // Resized through PATCH: not below what is provisioned.
      const shrink = await cli(daemon.address, ['pool', 'update', 'gold', '--capacity', '4M'])
      assert.equal(shrink.code, 1)
      assert.match(shrink.stderr, /BUSY: pool gold has 10485760 bytes .*provisioned/)
      assert.match(await ok(['pool', 'update', 'gold', '--capacity', '16M', '--overcommit', '1']), /storage pool gold: 16M, up to 16M provisioned, 6M free/)
      assert.equal(JSON.parse(await ok(['--json', 'pool', 'update', 'gold', '--description', 'bigger'])).description, 'bigger')
      const busy = await cli(daemon.address, ['pool', 'delete', 'gold'])
      assert.equal(busy.code, 1)
      assert.match(busy.stderr, /BUSY: pool gold holds 1 volume\(s\) \(in-gold\)/)
      const missing = await cli(daemon.address, ['pool', 'delete', 'nope'])
      assert.equal(missing.code, 1)
      assert.match(missing.stderr, /POOL_NOT_FOUND/)
      assert.deepEqual(JSON.parse(await ok(['--json', 'pool', 'delete', 'plain'])), { deleted: 'plain' })
      await ok(['volume', 'delete', 'in-gold'])
      assert.match(await ok(['pool', 'delete', 'gold']), /deleted storage pool gold/)
      assert.deepEqual(JSON.parse(await ok(['--json', 'pool', 'list'])), [])
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})

describe('daemon restart', () => {
  it('daemon restart re-executes on the same address; acknowledged writes and mounts come back', async () => {
    const { createServer } = await import('node:net')
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const address = probe.address() as { port: number }
        probe.close(() => resolve(address.port))
      })
    })
    const storage = join(root, 'node8')
    const mounts = join(root, 'mnt8')
    const fuse = existsSync('/dev/fuse')
    const first = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', '--storage-path', storage, '--ipc-address', `127.0.0.1:${port}`, ...(fuse ? ['--mount-point', mounts] : [])], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
    const firstExited = new Promise((resolve) => first.once('exit', resolve))
    let log = ''
    first.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
    const address = `127.0.0.1:${port}`
    for (let i = 0; i < 200 && !log.includes('"ready"'); i++) await new Promise((resolve) => setTimeout(resolve, 50))
    const ok = async (args: string[]): Promise<string> => {
      const result = await cli(address, args)
      assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    try {
      await ok(['volume', 'create', '-n', 'kept', '-s', '4M', '-c', 'fast-local-ssd'])
      const data = join(root, 'restart.bin')
      await writeFile(data, Buffer.alloc(1 << 20, 0x5a))
      if (fuse) {
        await ok(['volume', 'mount', 'kept'])
        await new Promise<void>((resolve, reject) => execFile('dd', [`if=${data}`, `of=${join(mounts, 'kept', 'data')}`, 'bs=1M', 'conv=notrunc,fsync', 'status=none'], (err) => err === null ? resolve() : reject(err)))
      }
      const firstPid = JSON.parse(await ok(['--json', 'daemon', 'status'])).pid
      assert.match(await ok(['daemon', 'restart']), /the daemon restarted \(pid \d+\)/)
      assert.equal(await firstExited, 0)
      const status = JSON.parse(await ok(['--json', 'daemon', 'status']))
      assert.notEqual(status.pid, firstPid)
      assert.deepEqual(JSON.parse(await ok(['--json', 'volume', 'list'])).map((v: { name: string }) => v.name), ['kept'])
      if (fuse) {
        assert.equal(status.mounts, 1, 'the mount came back')
        const back = await new Promise<Buffer>((resolve, reject) => execFile('dd', [`if=${join(mounts, 'kept', 'data')}`, 'bs=1M', 'count=1', 'status=none'], { encoding: 'buffer', maxBuffer: 4 << 20 }, (err, stdout) => err === null ? resolve(stdout) : reject(err)))
        assert.deepEqual(back, Buffer.alloc(1 << 20, 0x5a))
      }
    } finally {
      await cli(address, ['daemon', 'stop'])
      // The restarted daemon is not our child: wait until its address is free again.
      for (let i = 0; i < 200; i++) {
        if ((await cli(address, ['daemon', 'status'])).code !== 0) break
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
  })
})


describe('daemon and CLI: progress, reload, KMS, legacy forms', () => {
  it('draws progress of a backup and a restore from the daemon\'s streamed progress; --json and plain calls get the result alone', { skip: NBDCOPY }, async () => {
    const storage = join(root, 'node9')
    const target = join(root, 'backups9')
    const daemon = await startDaemon(['--storage-path', storage, '--nbd-address', '127.0.0.1:0'])
    try {
      assert.equal((await cli(daemon.address, ['volume', 'create', '-n', 'big', '-s', '64M', '-c', 'fast-local-ssd'])).code, 0)
      const image = join(root, 'big.img')
      await writeFile(image, randomBytes(48 << 20))
      await nbdcopy(image, `nbd://${nbdAddressOf(daemon)}/big`)
      // --progress draws the bar on stderr although it is not a terminal here.
      const made = await cli(daemon.address, ['--progress', 'backup', 'create', 'big', '--target', target])
      assert.equal(made.code, 0, made.stderr)
      assert.match(made.stdout, /^backup [0-9a-f-]+ \(full\): 12288 blocks/)
      assert.match(made.stderr, /backup of big \[.*\] 100% \| 48M of 48M/)
      const id = /^backup ([0-9a-f-]+)/.exec(made.stdout)?.[1] as string
      const restored = await cli(daemon.address, ['--progress', 'backup', 'restore', id, '--name', 'big-2', '--target', target])
      assert.equal(restored.code, 0, restored.stderr)
      assert.match(restored.stderr, /restore of [0-9a-f]{8} \[.*\] 100% \| 48M of 48M/)
      const copy = join(root, 'big-2.img')
      await nbdcopy(`nbd://${nbdAddressOf(daemon)}/big-2`, copy)
      assert.ok((await readFile(copy)).subarray(0, 48 << 20).equals(await readFile(image)))
      // Without a terminal and without --progress: no bar, the same answer.
      const plain = await cli(daemon.address, ['--json', 'backup', 'create', 'big', '--strategy', 'incremental', '--target', target])
      assert.equal(plain.code, 0, plain.stderr)
      assert.equal(JSON.parse(plain.stdout).strategy, 'incremental')
      assert.equal(plain.stderr, '')
      // A client that goes away mid-backup cancels it: nothing is recorded.
      const before = JSON.parse((await cli(daemon.address, ['--json', 'backup', 'list', 'big', '--target', target])).stdout).length
      const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
      const controller = new AbortController()
      const streamed = await fetch(`http://${daemon.address}/v1/backups`, { method: 'POST', signal: controller.signal, headers: { authorization: `Bearer ${token}`, accept: 'application/x-ndjson', 'content-type': 'application/json' }, body: JSON.stringify({ volume: 'big', strategy: 'full', target }) })
      const reader = (streamed.body as ReadableStream<Uint8Array>).getReader()
      await reader.read() // the first progress line: the backup has started
      controller.abort()
      // Backups to one target run one at a time: this one starts when the cancelled one has ended.
      assert.equal((await cli(daemon.address, ['backup', 'create', 'big', '--target', target])).code, 0)
      assert.equal(JSON.parse((await cli(daemon.address, ['--json', 'backup', 'list', 'big', '--target', target])).stdout).length, before + 1, 'the cancelled backup is not recorded, the next one is')
      // An error in a streamed operation reaches the user as one line.
      const missing = await cli(daemon.address, ['--progress', 'backup', 'restore', '00000000-0000-0000-0000-000000000000', '--name', 'x', '--target', target])
      assert.equal(missing.code, 1)
      assert.match(missing.stderr, /^galleonfs: BACKUP_NOT_FOUND: /)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('reloads the configuration on SIGHUP and `daemon reload`: live settings change, the rest waits for a restart, a bad file changes nothing', async () => {
    const config = join(root, 'reload.conf')
    const storage = join(root, 'node10')
    const write = async (extra: string): Promise<void> => { await writeFile(config, `[daemon]\nstorage_path = "${storage}"\n${extra}`) }
    await write('nbd_address = "127.0.0.1:0"\n')
    const daemon = await startDaemon(['--config', config])
    try {
      const before = JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'status'])).stdout).nbdAddress as string
      assert.match(before, /^127\.0\.0\.1:\d+$/)
      await write('log_level = "debug"\nblock_size = 8192\n')
      daemon.child.kill('SIGHUP')
      for (let i = 0; i < 100 && !daemon.logs.some((line) => line.includes('configuration reloaded')); i++) await new Promise((resolve) => setTimeout(resolve, 50))
      const reloaded = daemon.logs.map((line) => JSON.parse(line) as { message?: string, applied?: string[], needsRestart?: string[] }).find((entry) => entry.message === 'configuration reloaded')
      assert.deepEqual(reloaded?.applied?.sort(), ['logLevel', 'nbdAddress'])
      assert.deepEqual(reloaded?.needsRestart, ['blockSize'])
      const status = JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'status'])).stdout)
      assert.equal(status.nbdAddress, null, 'NBD stopped: the file no longer asks for it')
      assert.equal(JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'config'])).stdout).blockSize, 4096, 'the block size in effect is still the old one')
      // Debug level is live: requests are now logged.
      assert.ok(daemon.logs.some((line) => /"level":"debug","message":"request"/.test(line)))
      // A broken file: refused with the reason, everything stays as it was.
      await write('colour = "red"\n')
      const refused = await cli(daemon.address, ['daemon', 'reload'])
      assert.equal(refused.code, 1)
      assert.match(refused.stderr, /INVALID_CONFIG: .*unknown key colour in \[daemon\].*keeps the configuration it had/)
      daemon.child.kill('SIGHUP')
      for (let i = 0; i < 100 && !daemon.logs.some((line) => line.includes('was not reloaded')); i++) await new Promise((resolve) => setTimeout(resolve, 50))
      assert.ok(daemon.logs.some((line) => line.includes('was not reloaded')))
      assert.equal(JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'status'])).stdout).state, 'running')
      await write('nbd_address = "127.0.0.1:0"\n')
      assert.match((await cli(daemon.address, ['daemon', 'reload'])).stdout, /applied .*nbdAddress/)
      assert.match(JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'status'])).stdout).nbdAddress, /^127\.0\.0\.1:\d+$/)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('a reload racing a stop: the daemon still exits, with no NBD listener left behind', async () => {
    const config = join(root, 'race.conf')
    const storage = join(root, 'node14')
    await writeFile(config, `[daemon]\nstorage_path = "${storage}"\nnbd_address = "127.0.0.1:0"\n`)
    for (let round = 0; round < 3; round++) {
      const daemon = await startDaemon(['--config', config])
      await writeFile(config, `[daemon]\nstorage_path = "${storage}"\nnbd_address = "127.0.0.1:0"\nlog_level = "${round % 2 === 0 ? 'debug' : 'info'}"\n`)
      daemon.child.kill('SIGHUP')
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0, daemon.logs.join('\n'))
    }
  })

  it('wraps data keys with a KMS command named in the configuration file; a key provider without its settings is refused', async () => {
    const storage = join(root, 'node11')
    const keyFile = join(root, 'kms11.key')
    const kmsLog = join(root, 'kms11.log')
    await writeFile(keyFile, randomBytes(32).toString('hex'))
    const config = join(root, 'kms.conf')
    await writeFile(config, `[daemon]\nstorage_path = "${storage}"\nnbd_address = "127.0.0.1:0"\n\n[security]\nkey_provider = "command"\nkms_key_id = "prod-kek"\nkms_command = ${JSON.stringify([process.execPath, KMS_COMMAND])}\n`)
    const env = { ...process.env, KMS_KEY_FILE: keyFile, KMS_LOG: kmsLog }
    let daemon = await startDaemon(['--config', config], env)
    const secret = Buffer.from('KMS-GUARDED-TEXT-'.repeat(4096).slice(0, 1 << 16))
    const image = join(root, 'kms.img')
    await writeFile(image, secret)
    try {
      const created = await cli(daemon.address, ['--json', 'volume', 'create', '-n', 'vault', '-s', '1M', '-r', '1'])
      assert.equal(created.code, 0, created.stderr)
      assert.equal(JSON.parse(created.stdout).encrypted, true)
      if (NBDCOPY === undefined) await nbdcopy(image, `nbd://${nbdAddressOf(daemon)}/vault`)
      assert.match(await readFile(kmsLog, 'utf8'), /^wrap prod-kek volume:[0-9a-f-]+:dek:1$/m)
      // The program is shown, not its arguments (they may hold secrets).
      const shown = JSON.parse((await cli(daemon.address, ['--json', 'daemon', 'config'])).stdout)
      assert.deepEqual(shown.kmsCommand, [process.execPath, '(1 argument(s) not shown)'])
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
    daemon = await startDaemon(['--config', config], env)
    try {
      if (NBDCOPY === undefined) {
        const back = join(root, 'kms-back.img')
        await nbdcopy(`nbd://${nbdAddressOf(daemon)}/vault`, back)
        assert.ok((await readFile(back)).subarray(0, secret.byteLength).equals(secret))
      } else {
        assert.equal((await cli(daemon.address, ['backup', 'create', 'vault', '--target', join(root, 'kms-backups')])).code, 0)
      }
      assert.match(await readFile(kmsLog, 'utf8'), /^unwrap prod-kek volume:[0-9a-f-]+:dek:1$/m)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
    // KMS settings checked at start: a program that is not there, a command string with arguments in it.
    for (const [security, message] of [
      ['kms_command = "/nonexistent/kms"', /KMS command \/nonexistent\/kms is not an executable program/],
      ['kms_command = "/usr/bin/kms --profile prod"', /holds spaces; give the program and its arguments as a list/],
      ['kms_command = "kms"\nkms_url = "https://u:p@kms.example/"', /must not carry credentials/]
    ] as const) {
      await writeFile(config, `[daemon]\nstorage_path = "${join(root, 'node11b')}"\n\n[security]\nkey_provider = "command"\nkms_key_id = "k"\n${security}\n`)
      const bad = await galleonfs(['-d', '--config', config, '--ipc-address', '127.0.0.1:0'])
      assert.equal(bad.code, 2, bad.stderr)
      assert.match(bad.stderr, message)
    }
    const refused = await galleonfs(['-d', '--storage-path', join(root, 'node12'), '--ipc-address', '127.0.0.1:0', '--key-provider', 'http'])
    assert.equal(refused.code, 2, refused.stderr)
    assert.match(refused.stderr, /key provider http needs kms_key_id in \[security\]/)
  })

  it('derives the key from a passphrase (GALLEONFS_PASSPHRASE); a wrong one keeps the daemon from starting, a missing one is a configuration error', async () => {
    const storage = join(root, 'node13')
    const daemon = await startDaemon(['--storage-path', storage, '--key-provider', 'passphrase'], { ...process.env, GALLEONFS_PASSPHRASE: 'correct horse battery staple' })
    try {
      assert.equal((await cli(daemon.address, ['volume', 'create', '-n', 'locked', '-s', '1M', '-r', '1'])).code, 0)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
    const wrong = await galleonfs(['-d', '--storage-path', storage, '--ipc-address', '127.0.0.1:0', '--key-provider', 'passphrase'], { GALLEONFS_PASSPHRASE: 'incorrect' })
    assert.equal(wrong.code, 1, wrong.stderr)
    assert.match(wrong.stderr, /could not start: .*passphrase/)
    const missing = await galleonfs(['-d', '--storage-path', storage, '--ipc-address', '127.0.0.1:0', '--key-provider', 'passphrase'], { GALLEONFS_PASSPHRASE: '' })
    assert.equal(missing.code, 2, missing.stderr)
    assert.match(missing.stderr, /passphrase_file in \[security\] or the GALLEONFS_PASSPHRASE/)
    const again = await startDaemon(['--storage-path', storage, '--key-provider', 'passphrase'], { ...process.env, GALLEONFS_PASSPHRASE: 'correct horse battery staple' })
    try {
      assert.equal(JSON.parse((await cli(again.address, ['--json', 'volume', 'get', 'locked'])).stdout).encrypted, true)
    } finally {
      again.child.kill('SIGTERM')
      assert.equal(await again.exited, 0)
    }
  })

  it('runs the legacy forms: --demo-mode --setup-defaults, --test-replication, and the daemon without -d', async () => {
    const demo = await galleonfs(['--demo-mode', '--setup-defaults'])
    assert.equal(demo.code, 0, demo.stderr)
    assert.match(demo.stdout, /Set up defaults\n.*storage class demo-bulk/)
    assert.match(demo.stdout, /Backed up and restored\n/)
    assert.match(demo.stdout, /galleonfs_volume_write_bytes_total\{.*volume_name="demo-web",namespace="default"\} \d+/)
    assert.match(demo.stdout, /All \d+ steps passed\.\n$/)
    // With a storage path the results stay; a second run picks names that do not clash.
    const kept = join(root, 'demo-kept')
    assert.equal((await galleonfs(['--demo-mode', '--storage-path', kept])).code, 0)
    const again = await galleonfs(['--demo-mode', '--storage-path', kept])
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stdout, /demo-web-2: 64M/)
    // The replication self-test needs a running daemon (the cluster self-test itself is in replication-daemons.test.ts).
    const replication = await galleonfs(['--test-replication', '--daemon-address', '127.0.0.1:1'])
    assert.equal(replication.code, 1)
    assert.match(replication.stderr, /replication self-test: no GalleonFS daemon answers at 127\.0\.0\.1:1/)
    // `galleonfs --storage-path ... --ipc-address ...` with no command runs the daemon.
    const child = spawn(process.execPath, [...scriptArgs(ENTRY), '--storage-path', join(root, 'legacy'), '--ipc-address', '127.0.0.1:0'], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
    const exited = new Promise((resolve) => child.once('exit', resolve))
    try {
      let log = ''
      child.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
      for (let i = 0; i < 200 && !log.includes('"ready"'); i++) await new Promise((resolve) => setTimeout(resolve, 50))
      assert.match(log, /"message":"ready"/)
      child.kill('SIGTERM')
      assert.equal(await exited, 0)
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
    // Legacy flags with other forms: routed to the right program, or a usage error.
    assert.equal((await galleonfs(['--setup-defaults'])).code, 2)
    const replicationWithPath = await galleonfs(['--test-replication', '--storage-path', join(root, 'legacy')])
    assert.equal(replicationWithPath.code, 2)
    assert.match(replicationWithPath.stderr, /--test-replication checks a running cluster/)
    assert.match((await galleonfs(['--version'])).stdout, /^\d+\.\d+\.\d+\n$/)
  })
})
