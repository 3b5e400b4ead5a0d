// Edges of the daemon's API, the CLI and mounts: request bodies with missing, wrongly typed or
// malformed fields (400 naming the field, never 500), relative paths given to the CLI (resolved in
// the caller's working directory, not the daemon's), CLI usage errors (exit 2), and VolumeFiles
// opened straight on volumes when the instance closes.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { connect } from 'node:net'
import { join } from 'node:path'
import { GalleonFS, isGalleonError } from '../src/index.js'
import { runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { observed } from './support/observed.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-daemon-mount-edges-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** A daemon whose mounts use the virtual driver (no FUSE needed), started in `root`. */
async function startDaemon (name: string): Promise<{ daemon: RunningDaemon, token: string, storage: string, mountPoint: string }> {
  const storage = join(root, name)
  const mountPoint = join(root, `${name}-mnt`)
  const config = join(root, `${name}.toml`)
  await writeFile(config, `[daemon]\nstorage_path = "${storage}"\nmount_point = "${mountPoint}"\n\n[drivers]\nmount_driver = "virtual"\n`)
  const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--config', config], { cwd: root })
  const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
  return { daemon, token, storage, mountPoint }
}

async function stopDaemon (daemon: RunningDaemon): Promise<void> {
  daemon.child.kill('SIGTERM')
  assert.equal(await daemon.exited, 0)
}

describe('daemon API: request bodies', () => {
  let daemon: RunningDaemon
  let token: string
  let mountPoint: string
  before(async () => { ({ daemon, token, mountPoint } = await startDaemon('api')) })
  after(async () => { await stopDaemon(daemon) })

  /** One API request; its status and decoded answer. */
  const api = async (method: string, path: string, body?: unknown): Promise<{ status: number, answer: { error?: { code: string, message: string } } & Record<string, unknown> }> => {
    const sent = await fetch(`http://${daemon.address}${path}`, { method, headers: { authorization: `Bearer ${token}` }, ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }) })
    const text = await sent.text()
    return { status: sent.status, answer: text === '' ? {} : JSON.parse(text) }
  }
  /** Log lines of requests that failed with 500. */
  const internalErrors = (): string[] => daemon.logs.filter((line) => /"request failed"/.test(line))

  it('POST /v1/unmount without a target, or with one that is not a string, answers 400 naming target while volumes are mounted; the daemon keeps running', async () => {
    assert.equal((await api('POST', '/v1/volumes', { name: 'u1', sizeBytes: '1M', storageClass: 'fast-local-ssd' })).status, 200)
    assert.equal((await api('POST', '/v1/volumes/u1/mount')).status, 200)
    for (const body of [undefined, {}, { target: 5 }, { target: null }, { target: '' }, { force: true }]) {
      const { status, answer } = await api('POST', '/v1/unmount', body)
      assert.equal(status, 400, `${JSON.stringify(body)}: ${JSON.stringify(answer)}`)
      assert.equal(answer.error?.code, 'INVALID_ARGUMENT')
      assert.match(answer.error?.message ?? '', /target/)
    }
    assert.deepEqual(internalErrors(), [])
    const status = await api('GET', '/v1/status')
    assert.equal(status.status, 200)
    assert.equal(status.answer.mounts, 1, 'the mount is still there')
    assert.equal((await api('POST', '/v1/unmount', { target: 'u1' })).status, 204)
    assert.equal((await api('GET', '/v1/status')).answer.mounts, 0)
  })

  it('answers a missing, wrongly typed or malformed body field of any route with 400 INVALID_ARGUMENT naming the field, never 500', async () => {
    assert.equal((await api('POST', '/v1/volumes', { name: 'b1', sizeBytes: '1M', storageClass: 'fast-local-ssd' })).status, 200)
    const target = join(root, 'api-backups')
    const backup = await api('POST', '/v1/backups', { volume: 'b1', target })
    assert.equal(backup.status, 200, JSON.stringify(backup.answer))
    const id = backup.answer.id as string
    // [method, path, body, what the message must name]
    const cases: Array<[string, string, unknown, RegExp]> = [
      ['POST', '/v1/unmount', '"u1"', /JSON object/],
      ['POST', '/v1/unmount', '[1]', /JSON object/],
      ['POST', '/v1/volumes', 'null', /JSON object/],
      ['POST', '/v1/unmount', { target: 'b1', force: 'yes' }, /force/],
      ['POST', '/v1/unmount', { target: 'b1', path: 5 }, /path/],
      ['POST', '/v1/unmount', { target: 'b1', path: 'relative/dir' }, /path.*absolute/],
      ['POST', '/v1/volumes/b1/mount', { path: 5 }, /path/],
      ['POST', '/v1/volumes/b1/mount', { path: 'relative/dir' }, /path.*absolute/],
      ['POST', '/v1/volumes/b1/mount', { options: 5 }, /options/],
      ['POST', '/v1/volumes/b1/mount', { options: [5] }, /options/],
      ['POST', '/v1/volumes/b1/migrate', { storageClass: 5 }, /storageClass/],
      ['POST', '/v1/volumes/b1/migrate', { pool: 5 }, /pool/],
      ['POST', '/v1/volumes/b1/migrate', { node: 5 }, /node/],
      ['POST', '/v1/volumes/b1/clone', { name: 'c1', snapshot: 5 }, /snapshot/],
      ['POST', '/v1/volumes/b1/write', { offset: 0 }, /data/],
      ['POST', '/v1/volumes/b1/write', { offset: '0', data: 'AAAA' }, /offset/],
      ['POST', '/v1/volumes/b1/read', { offset: 0 }, /length/],
      ['POST', '/v1/backups', { target }, /volume/],
      ['POST', '/v1/backups', { volume: 5, target }, /volume/],
      ['POST', '/v1/backups', { volume: 'b1', target: 5 }, /target/],
      ['POST', '/v1/backups', { volume: 'b1', target: 'relative/backups' }, /target.*absolute/],
      ['GET', '/v1/backups?target=relative/backups', undefined, /target.*absolute/],
      ['POST', `/v1/backups/${id}/restore`, { name: 5, target }, /name/],
      ['POST', `/v1/backups/${id}/restore`, { volume: 5, target }, /volume/],
      ['POST', `/v1/backups/${id}/restore`, { name: 'r1', pool: 5, target }, /pool/],
      ['POST', `/v1/backups/${id}/verify`, { target: {} }, /target/],
      ['POST', '/v1/backup-policies', { name: 'p1', schedule: '0 2 * * *', volumes: ['b1'], retention: { daily: 1 }, target: 'relative/backups' }, /target.*absolute/],
      ['POST', '/v1/cluster/leave', { force: 'yes' }, /force/],
      ['DELETE', '/v1/volumes/b1?force=yes', undefined, /force/]
    ]
    const wrong: string[] = []
    for (const [method, path, body, names] of cases) {
      const { status, answer } = await api(method, path, body)
      if (status !== 400 || answer.error?.code !== 'INVALID_ARGUMENT' || !names.test(answer.error.message)) wrong.push(`${method} ${path} ${typeof body === 'string' ? body : JSON.stringify(body)}: ${status} ${JSON.stringify(answer)}`)
    }
    assert.deepEqual(wrong, [])
    assert.deepEqual(internalErrors(), [])
    // Nothing was done by the refused requests.
    assert.equal((await api('GET', '/v1/status')).answer.mounts, 0)
    assert.equal((await api('GET', '/v1/volumes/b1')).status, 200)
    assert.equal(existsSync(join(root, 'relative')), false)
    assert.equal(existsSync(join(mountPoint, 'b1')), false)
  })

  it('answers a request target that is no URL with 400, not 500', async () => {
    const [host, port] = daemon.address.split(':') as [string, string]
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), host, () => { socket.write(`GET http://[ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`) })
      let text = ''
      socket.on('data', (chunk: Buffer) => { text += chunk.toString() })
      socket.once('close', () => resolve(text))
      socket.once('error', reject)
    })
    assert.match(answer, /^HTTP\/1\.1 400 /)
    assert.match(answer, /"code":"INVALID_ARGUMENT"/)
    assert.deepEqual(internalErrors(), [])
    assert.equal((await api('GET', '/v1/status')).status, 200)
  })
})

describe('CLI: relative paths are the caller\'s', () => {
  let daemon: RunningDaemon
  let storage: string
  before(async () => { ({ daemon, storage } = await startDaemon('paths')) })
  after(async () => { await stopDaemon(daemon) })

  /** Runs the CLI in `cwd` (not the daemon's working directory); asserts it succeeded. */
  const ok = async (cwd: string, args: string[]): Promise<string> => {
    const result = await runCli(daemon.address, args, { cwd })
    assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`)
    return result.stdout
  }

  it('volume unmount resolves a relative mount point against the CLI\'s working directory', async () => {
    const cwd = join(root, 'caller-unmount')
    await mkdir(cwd, { recursive: true })
    await ok(cwd, ['volume', 'create', '-n', 'rel', '-s', '1M', '-c', 'fast-local-ssd'])
    const mounted = JSON.parse(await ok(cwd, ['--json', 'volume', 'mount', 'rel', 'mnt/rel']))
    assert.equal(mounted.path, join(cwd, 'mnt/rel'))
    assert.match(await ok(cwd, ['volume', 'unmount', 'mnt/rel']), /unmounted mnt\/rel/)
    assert.deepEqual(JSON.parse(await ok(cwd, ['--json', 'daemon', 'status'])).mounts, 0)
    // ./ and ../ forms too, from another directory.
    await ok(cwd, ['volume', 'mount', 'rel', 'mnt/rel'])
    // The virtual driver makes no directories: the caller's are made here.
    const below = join(cwd, 'mnt')
    await mkdir(below, { recursive: true })
    assert.match(await ok(below, ['volume', 'unmount', './rel']), /unmounted/)
    await ok(cwd, ['volume', 'mount', 'rel', 'mnt/rel'])
    await mkdir(join(cwd, 'elsewhere'), { recursive: true })
    assert.match(await ok(join(cwd, 'elsewhere'), ['volume', 'unmount', '../mnt/rel']), /unmounted/)
    // By volume name, still.
    await ok(cwd, ['volume', 'mount', 'rel', 'mnt/rel'])
    assert.match(await ok(root, ['volume', 'unmount', 'rel']), /unmounted rel/)
    const saved = JSON.parse(await readFile(join(storage, 'daemon-mounts.json'), 'utf8')) as unknown[]
    assert.deepEqual(saved, [], 'no saved mount is left for a restart to mount again')
  })

  it('backup create, list, verify, restore and policy create resolve a relative --target against the CLI\'s working directory', async () => {
    const cwd = join(root, 'caller-backups')
    await mkdir(cwd, { recursive: true })
    await ok(cwd, ['volume', 'create', '-n', 'bk', '-s', '1M', '-c', 'fast-local-ssd'])
    const made = JSON.parse(await ok(cwd, ['--json', 'backup', 'create', 'bk', '--target', 'backups']))
    assert.equal(existsSync(join(cwd, 'backups')), true, 'the backup is in the caller\'s directory')
    assert.equal(existsSync(join(root, 'backups')), false, 'not in the daemon\'s')
    assert.deepEqual(JSON.parse(await ok(cwd, ['--json', 'backup', 'list', 'bk', '--target', './backups'])).map((b: { id: string }) => b.id), [made.id])
    assert.match(await ok(cwd, ['backup', 'verify', made.id, '--target', 'backups']), /: ok/)
    assert.match(await ok(cwd, ['backup', 'restore', made.id, '--name', 'bk-back', '--target', 'backups']), /into volume bk-back/)
    await ok(cwd, ['backup', 'policy', 'create', 'rel-policy', '--schedule', '0 2 * * *', '--volumes', 'bk', '--daily', '1', '--target', 'backups'])
    assert.equal(JSON.parse(await ok(cwd, ['backup', 'policy', 'get', 'rel-policy'])).target, join(cwd, 'backups'))
    assert.equal(existsSync(join(root, 'backups')), false)
  })
})

describe('CLI: usage errors exit with 2', () => {
  let daemon: RunningDaemon
  before(async () => { ({ daemon } = await startDaemon('usage')) })
  after(async () => { await stopDaemon(daemon) })

  it('a command missing what it needs, or a malformed flag value, exits 2 with one line and sends nothing that changes anything', async () => {
    const policyFile = join(root, 'usage-policy.yaml')
    await writeFile(policyFile, 'limits:\n  iops: 100\n')
    const cases: Array<[string[], RegExp]> = [
      [['volume', 'migrate', 'v'], /needs --storage-class, --pool or --node/],
      [['pool', 'update', 'p'], /needs --capacity, --overcommit or --description/],
      [['qos', 'set', 'v'], /needs a policy/],
      [['qos', 'set', 'v', '--file', policyFile, '--weight', '2'], /either as --file or as flags/],
      [['pool', 'create', 'p', '-s', '1M', '--labels', 'novalue'], /--labels/],
      [['pool', 'create', 'p', '-s', '1M', '--node-labels', '=x'], /--node-labels/],
      [['backup', 'policy', 'create', 'p', '--schedule', '0 2 * * *', '--labels', 'novalue'], /--labels/],
      [['daemon', 'status', '--wait', ''], /--wait/]
    ]
    for (const [args, message] of cases) {
      const result = await runCli(daemon.address, args, { cwd: root })
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`)
      assert.match(result.stderr, message)
      assert.doesNotMatch(result.stderr, /\n\s+at /)
    }
    const pools = await runCli(daemon.address, ['--json', 'pool', 'list'], { cwd: root })
    assert.deepEqual(JSON.parse(pools.stdout), [])
  })
})

describe('VolumeFiles opened straight on a volume, and close()', () => {
  it('close() waits for their reads and writes in flight, flushes them, and closes them: later calls reject with NOT_OPEN', async () => {
    const storagePath = join(root, 'direct-files')
    const g = await GalleonFS.open({ storagePath })
    const big = new Uint8Array(24 << 20).fill(0x5a)
    let pending: Promise<unknown> | undefined
    try {
      await g.createVolume({ name: 'v', sizeBytes: '32M' })
      await g.createSnapshot('v', 's')
      const writer = await g.mounts.openVolumeFile('v')
      const reader = await g.mounts.openVolumeFile('v', { readOnly: true })
      const snapshot = await g.mounts.openVolumeFile({ volume: 'v', snapshot: 's' })
      // Larger than one piece: written in several calls, which close() must not cut short.
      pending = writer.pwrite(big, 4096).then((n) => n, (err: unknown) => err)
      // Observed at once: it may be refused (NOT_OPEN) while close() is awaited.
      const opening = observed(g.mounts.openVolumeFile('v', { readOnly: true }))
      await g.close()
      assert.equal(await pending, big.byteLength, 'the write in flight finished')
      const late = await opening.then((file) => file, (err: unknown) => err)
      for (const file of [writer, reader, snapshot, ...(isGalleonError(late) ? [] : [late as typeof writer])]) {
        assert.equal(file.closed, true)
        await assert.rejects(file.pread(new Uint8Array(16), 0), (err: Error & { code?: string }) => err.code === 'NOT_OPEN' && /volume file is closed/.test(err.message))
        await assert.rejects(file.pwrite(new Uint8Array(16), 0), { code: 'NOT_OPEN' })
        assert.throws(() => file.seek(0), { code: 'NOT_OPEN' })
        await assert.rejects(file.flush(), { code: 'NOT_OPEN' })
        await file.close()
      }
      if (isGalleonError(late)) assert.equal(late.code, 'NOT_OPEN')
    } finally {
      await pending
      await g.close()
    }
    const again = await GalleonFS.open({ storagePath })
    try {
      const back = await again.read('v', 4096, big.byteLength)
      assert.equal(Buffer.from(back).equals(Buffer.from(big)), true, 'every byte the write was acknowledged for is stored')
    } finally {
      await again.close()
    }
  })
})

describe('VolumeFiles opened on a mount that is being unmounted', () => {
  it('are refused (or closed), never left open on a mount that is gone: a ReadWriteOnce volume would have a writer outside any mount', async () => {
    // A mount driver whose unmount waits until the test lets it finish.
    let reached!: () => void
    const unmounting = new Promise<void>((resolve) => { reached = resolve })
    let finish!: () => void
    const finished = new Promise<void>((resolve) => { finish = resolve })
    const driver = {
      name: 'gated',
      async mount (): Promise<void> {},
      async unmount (): Promise<void> { reached(); await finished }
    }
    const g = await GalleonFS.open({ inMemory: true, mount: driver })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.mounts.mountVolume('v', '/mnt/gated')
      const unmounted = g.mounts.unmountVolume('/mnt/gated', { force: true })
      await unmounting
      // The unmount has closed the mount's files and waits for the driver: a file opened now...
      const opened = await g.mounts.openVolumeFile('/mnt/gated').then((file) => file, (err: unknown) => err)
      finish()
      await unmounted
      assert.deepEqual(g.mounts.listMounts(), [])
      if (isGalleonError(opened)) assert.equal(opened.code, 'INVALID_ARGUMENT')
      else assert.equal((opened as { closed: boolean }).closed, true, 'a file opened on the mount being unmounted is not left open')
      // The volume has no writer left: a read-write mount is allowed again.
      await g.mounts.mountVolume('v', '/mnt/again')
    } finally {
      finish()
      await g.close()
    }
  })
})
