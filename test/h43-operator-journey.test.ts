// An operator who has read only the README drives `galleonfs -d` and the CLI as real processes: the
// documented journey (create, list, inspect, write and read data, snapshot, clone, backup, restore,
// expand, QoS, metrics, delete), then the mistakes people make (typos, missing or empty arguments,
// sizes and names the README does not allow, an unknown class, a duplicate, deleting what others
// depend on), each answered with the documented exit code and a message naming the problem and
// the fix, with nothing stored lost. Finally the README's "Daemon and CLI" block runs as shown.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { ENTRY, ROOT, runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { scriptArgs } from './support/child-script.js'
import { freePort } from './support/net.js'
import { GalleonFS } from '../src/index.js'

let root: string
let storage: string
let daemon: RunningDaemon
let token: string

interface Run { code: number, stdout: string, stderr: string }

async function cli (args: string[]): Promise<Run> {
  return await runCli(daemon.address, args, { cwd: root, env: { XDG_RUNTIME_DIR: join(root, 'run') } })
}

/** Runs the CLI expecting exit 0; its stdout. */
async function ok (args: string[]): Promise<string> {
  const result = await cli(args)
  assert.equal(result.code, 0, `galleonfs ${args.join(' ')} exited ${result.code}: ${result.stderr}`)
  assert.equal(result.stderr, '', `galleonfs ${args.join(' ')} wrote to stderr: ${result.stderr}`)
  return result.stdout
}

/** Runs the CLI with --json expecting exit 0; its output parsed (it must be JSON). */
async function json<T = unknown> (args: string[]): Promise<T> {
  const out = await ok(['--json', ...args])
  try {
    return JSON.parse(out) as T
  } catch {
    assert.fail(`galleonfs --json ${args.join(' ')} printed something that is not JSON: ${out}`)
  }
}

/** Runs the CLI expecting `code`, a one-line message on stderr (no stack trace) matching `message`. */
async function fails (args: string[], code: 1 | 2, message: RegExp): Promise<Run> {
  const result = await cli(args)
  const what = `galleonfs ${args.map((a) => JSON.stringify(a)).join(' ')}`
  assert.equal(result.code, code, `${what}: exit ${result.code}, stdout ${result.stdout.slice(0, 300)}, stderr ${result.stderr.slice(0, 300)}`)
  assert.match(result.stderr, message, what)
  assert.doesNotMatch(result.stderr, /\n\s+at /, `${what}: stack trace`)
  assert.doesNotMatch(result.stderr, /Cannot read properties|is not a function|undefined/, `${what}: a JavaScript error, not a message`)
  return result
}

async function api (method: string, path: string, body?: unknown): Promise<{ status: number, answer: Record<string, unknown> }> {
  const response = await fetch(`http://${daemon.address}${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
  const text = await response.text()
  return { status: response.status, answer: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}

async function writeText (volume: string, offset: number, text: string): Promise<void> {
  const { status, answer } = await api('POST', `/v1/volumes/${volume}/write`, { offset, data: Buffer.from(text).toString('base64'), concern: 'WriteDurable' })
  assert.equal(status, 204, JSON.stringify(answer))
}

async function readText (volume: string, offset: number, length: number): Promise<string> {
  const { status, answer } = await api('POST', `/v1/volumes/${volume}/read`, { offset, length })
  assert.equal(status, 200, JSON.stringify(answer))
  return Buffer.from(answer.data as string, 'base64').toString()
}

interface VolumeView { id: string, name: string, sizeBytes: number, storageClass: string }
const names = async (): Promise<string[]> => (await json<VolumeView[]>(['volume', 'list'])).map((v) => v.name).sort()

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-h43-'))
  storage = join(root, 'node1')
  await mkdir(join(root, 'run'))
  daemon = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0'], { cwd: root, env: { ...process.env, XDG_RUNTIME_DIR: join(root, 'run') } })
  token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
})

after(async () => {
  daemon.child.kill('SIGTERM')
  assert.equal(await daemon.exited, 0)
  await rm(root, { recursive: true, force: true })
})

describe('h43: the documented journey, with exit 0 and valid --json everywhere', () => {
  it('create, list, get, write/read, snapshot, clone, backup, verify, restore, expand, QoS, metrics, revert, delete', async () => {
    assert.match(await ok(['volume', 'create', '--name', 'web-data', '--size', '16M', '--storage-class', 'fast-local-ssd']), /^created volume web-data \(/)
    const db = await json<VolumeView>(['volume', 'create', '-n', 'db-data', '-s', '8M', '-r', '1'])
    assert.equal(db.storageClass, 'encrypted-storage', 'the README: the default class is encrypted-storage')
    assert.match((await ok(['volume', 'list'])).split('\n')[0] ?? '', /^NAME\s+ID\s+SIZE\s+CLASS\s+REPLICAS\s+STATE$/)
    assert.deepEqual(await names(), ['db-data', 'web-data'])
    assert.equal((await json<VolumeView>(['volume', 'get', 'web-data'])).sizeBytes, 16 << 20)
    // By id as well as by name.
    assert.equal((await json<VolumeView>(['volume', 'get', db.id])).name, 'db-data')

    await writeText('web-data', 4096, 'before the upgrade')
    await writeText('db-data', 0, 'secret rows')
    assert.match(await ok(['snapshot', 'create', 'web-data', 'before-upgrade']), /^snapshot before-upgrade of web-data taken/)
    await writeText('web-data', 4096, 'AFTER THE UPGRADE!')
    assert.match(await ok(['volume', 'clone', 'web-data', 'web-data-test', '--snapshot', 'before-upgrade']), /^cloned web-data as web-data-test/)
    assert.equal(await readText('web-data-test', 4096, 18), 'before the upgrade')
    assert.deepEqual((await json<Array<{ name: string }>>(['snapshot', 'list', 'web-data'])).map((s) => s.name), ['before-upgrade'])

    const made = await json<{ id: string }>(['backup', 'create', 'web-data', '--target', './backups'])
    const listed = await json<Array<{ id: string }>>(['backup', 'list', 'web-data', '--target', './backups'])
    assert.deepEqual(listed.map((b) => b.id), [made.id])
    assert.match(await ok(['backup', 'verify', made.id, '--target', './backups']), /: ok \(/)
    assert.match(await ok(['backup', 'restore', made.id, '--name', 'web-data-restored', '--target', './backups']), /restored backup .* into volume web-data-restored/)
    assert.equal(await readText('web-data-restored', 4096, 18), 'AFTER THE UPGRADE!')

    assert.equal((await json<VolumeView>(['volume', 'expand', 'web-data', '32M'])).sizeBytes, 32 << 20)
    assert.equal(await readText('web-data', 4096, 18), 'AFTER THE UPGRADE!')

    await ok(['qos', 'set', 'web-data', '--limit-iops', '1000'])
    assert.deepEqual((await json<{ policy?: { limits?: { iops?: number } } }>(['qos', 'get', 'web-data'])).policy?.limits?.iops, 1000)
    await ok(['qos', 'clear', 'web-data'])
    assert.equal((await json<{ policy?: unknown }>(['qos', 'get', 'web-data'])).policy, undefined)

    const metrics = await fetch(`http://${daemon.address}/metrics`, { headers: { authorization: `Bearer ${token}` } })
    assert.equal(metrics.status, 200)
    assert.match(await metrics.text(), /galleonfs_volumes 4/)

    assert.match(await ok(['snapshot', 'restore', 'web-data', 'before-upgrade']), /reverted to snapshot before-upgrade/)
    assert.equal(await readText('web-data', 4096, 18), 'before the upgrade')

    for (const args of [['storage-class', 'list'], ['pool', 'list'], ['cluster', 'status'], ['cluster', 'peers'], ['daemon', 'status'], ['daemon', 'config'], ['mount', 'list'], ['backup', 'policy', 'list'], ['volume', 'replication', 'web-data']]) await json(args)

    assert.match(await ok(['volume', 'delete', 'web-data-restored']), /^deleted volume web-data-restored/)
    assert.deepEqual(await names(), ['db-data', 'web-data', 'web-data-test'])
    assert.equal(await readText('db-data', 0, 11), 'secret rows')
  })
})

describe('h43: the mistakes an operator makes', () => {
  it('typos and missing arguments exit 2 with "Did you mean" or the missing argument named', async () => {
    await fails(['volum', 'list'], 2, /unknown command 'volum'[\s\S]*Did you mean volume\?/)
    await fails(['volume', 'lst'], 2, /unknown command 'lst'[\s\S]*Did you mean list\?/)
    await fails(['volume', 'create', '--nmae', 'x', '--size', '1M'], 2, /unknown option '--nmae'[\s\S]*Did you mean --name\?/)
    await fails(['volume', 'get'], 2, /missing required argument 'volume'/)
    await fails(['volume', 'expand', 'web-data'], 2, /missing required argument 'size'/)
    await fails(['snapshot', 'create', 'web-data'], 2, /missing required argument 'name'/)
    await fails(['volume', 'create', '-n', 'x', '-t', 'forever'], 2, /Allowed choices are ephemeral, persistent, shared/)
  })

  it('sizes: 10g, 10GiB and 1.5G are binary units; -1 and abc exit 2 naming the forms that work; nothing is created by a refusal', async () => {
    for (const [size, bytes] of [['10g', 10 * 2 ** 30], ['10GiB', 10 * 2 ** 30], ['1.5G', 1.5 * 2 ** 30]] as const) {
      const made = await json<VolumeView>(['volume', 'create', '-n', `size-${size.replace('.', '-')}`, '-s', size, '-c', 'fast-local-ssd'])
      assert.equal(made.sizeBytes, bytes, size)
      await ok(['volume', 'delete', made.name])
    }
    const before = await names()
    for (const size of ['-1', 'abc', '0']) await fails(['volume', 'create', '-n', 'bad-size', '-s', size, '-c', 'fast-local-ssd'], 2, /--size <size>' argument .* is invalid\. .*(512K|above 0)/)
    await fails(['volume', 'create', '-n', 'bad-size', '-s', '1.5K', '-c', 'fast-local-ssd'], 1, /INVALID_ARGUMENT: volume size must be a positive multiple of the block size \(4096 bytes\), got 1536; try 4096/)
    await fails(['volume', 'expand', 'web-data', '1M'], 1, /INVALID_ARGUMENT: .*shrinking .* is not supported/)
    assert.deepEqual(await names(), before)
    assert.equal((await json<VolumeView>(['volume', 'get', 'web-data'])).sizeBytes, 32 << 20)
  })

  it('names with a space, a slash or 300 characters, an unknown class and a duplicate name exit 1 naming the rule or the fix', async () => {
    const before = await names()
    for (const name of ['my vol', 'a/b', '../etc', 'x'.repeat(300)]) {
      await fails(['volume', 'create', '-n', name, '-s', '1M', '-c', 'fast-local-ssd'], 1, /INVALID_ARGUMENT: volume name must be 1-63 letters, digits, '-', '_' or '\.'/)
    }
    await fails(['volume', 'create', '-n', 'new', '-s', '1M', '-c', 'fast-locl-ssd'], 1, /STORAGE_CLASS_NOT_FOUND: .*`galleonfs storage-class list`/)
    await fails(['volume', 'create', '-n', 'web-data', '-s', '1M', '-c', 'fast-local-ssd'], 1, /VOLUME_EXISTS: a volume named "web-data" already exists/)
    await fails(['volume', 'create', '-n', 'new', '-s', '1M', '-c', 'fast-local-ssd', '-r', '3'], 1, /--replicas 1/)
    await fails(['volume', 'get', 'my vol'], 1, /VOLUME_NOT_FOUND: .*`galleonfs volume list`/)
    assert.deepEqual(await names(), before)
    assert.equal(await readText('web-data', 4096, 18), 'before the upgrade')
  })

  it('deleting a volume with clones, a snapshot with clones or a Retain volume is refused naming --force; nothing is lost', async () => {
    await fails(['volume', 'delete', 'web-data'], 1, /BUSY: volume web-data has clones .*--force/)
    await fails(['snapshot', 'delete', 'web-data', 'before-upgrade'], 1, /BUSY: snapshot before-upgrade .*--force/)
    await fails(['volume', 'delete', 'db-data'], 1, /BUSY: .*Retain; pass --force/)
    assert.deepEqual(await names(), ['db-data', 'web-data', 'web-data-test'])
    assert.equal(await readText('web-data-test', 4096, 18), 'before the upgrade')
    assert.equal(await readText('db-data', 0, 11), 'secret rows')
  })

  it('--help of each command group lists the subcommands the README documents', async () => {
    const documented: Record<string, string[]> = {
      volume: ['create', 'list', 'get', 'delete', 'expand', 'clone', 'mount', 'unmount', 'replication', 'migrate'],
      mount: ['list'],
      snapshot: ['create', 'list', 'delete', 'restore'],
      backup: ['create', 'list', 'restore', 'verify', 'policy'],
      'storage-class': ['list', 'create', 'delete'],
      cluster: ['status', 'peers', 'join', 'leave', 'forget'],
      daemon: ['status', 'config', 'reload', 'stop', 'restart'],
      pool: ['list', 'get', 'create', 'update', 'delete'],
      qos: ['set', 'get', 'clear']
    }
    const top = await ok(['--help'])
    for (const [group, subcommands] of Object.entries(documented)) {
      assert.match(top, new RegExp(`^\\s+${group}\\b`, 'm'), `galleonfs --help lists ${group}`)
      const help = await ok([group, '--help'])
      for (const sub of subcommands) assert.match(help, new RegExp(`^\\s+${sub}\\b`, 'm'), `galleonfs ${group} --help lists ${sub}`)
    }
    const policy = await ok(['backup', 'policy', '--help'])
    for (const sub of ['create', 'list', 'get', 'delete', 'run']) assert.match(policy, new RegExp(`^\\s+${sub}\\b`, 'm'), `backup policy --help lists ${sub}`)
  })
})

describe('h43: an empty argument (an unset shell variable) is a usage error, never another call', () => {
  it('`qos clear ""` does not delete the volume named "qos"; `volume get ""` does not print the volume list', async () => {
    await ok(['volume', 'create', '-n', 'qos', '-s', '1M', '-c', 'fast-local-ssd'])
    await writeText('qos', 0, 'keep me')
    const result = await cli(['qos', 'clear', ''])
    const after = await api('POST', '/v1/volumes/qos/read', { offset: 0, length: 7 })
    assert.equal(after.status, 200, `\`galleonfs qos clear ""\` (exit ${result.code}: ${result.stderr.trim()}) deleted the volume named "qos": ${JSON.stringify(after.answer)}`)
    assert.equal(Buffer.from(after.answer.data as string, 'base64').toString(), 'keep me')
    assert.equal(result.code, 2, result.stderr)
    const get = await cli(['--json', 'volume', 'get', ''])
    assert.equal(get.code, 2, `\`galleonfs --json volume get ""\` exited ${get.code} printing ${get.stdout.slice(0, 80)}`)
    for (const args of [['volume', 'get', ''], ['pool', 'get', ''], ['snapshot', 'list', ''], ['volume', 'delete', ''], ['snapshot', 'create', '', 's1'], ['backup', 'verify', '', '--target', './backups']]) {
      await fails(args, 2, /empty/i)
    }
    assert.ok((await names()).includes('qos'))
  })
})

describe('h43: the API refuses an empty name in a path instead of dropping it', () => {
  it('DELETE /v1/volumes//qos (a script\'s unset variable) is 400 INVALID_ARGUMENT and leaves the volume "qos" alone', async () => {
    await ok(['volume', 'create', '-n', 'snapshots', '-s', '1M', '-c', 'fast-local-ssd'])
    if (!(await names()).includes('qos')) await ok(['volume', 'create', '-n', 'qos', '-s', '1M', '-c', 'fast-local-ssd'])
    await writeText('qos', 0, 'keep me')
    const deleted = await api('DELETE', '/v1/volumes//qos')
    const after = await api('POST', '/v1/volumes/qos/read', { offset: 0, length: 7 })
    assert.equal(after.status, 200, `DELETE /v1/volumes//qos answered ${deleted.status} and deleted the volume named "qos"`)
    assert.deepEqual([deleted.status, (deleted.answer.error as { code?: string } | undefined)?.code], [400, 'INVALID_ARGUMENT'])
    // GET /v1/volumes//snapshots is not GET /v1/volumes/snapshots (the volume named "snapshots").
    const listed = await api('GET', '/v1/volumes//snapshots')
    assert.deepEqual([listed.status, (listed.answer.error as { code?: string } | undefined)?.code], [400, 'INVALID_ARGUMENT'])
    assert.ok((await names()).includes('snapshots'))
  })
})

describe('h43: sizes in Kubernetes notation', () => {
  it('--size 16Mi is 16 MiB, as 16M and 16MiB are (Longhorn and Kubernetes users write Mi and Gi)', async () => {
    const made = await json<VolumeView>(['volume', 'create', '-n', 'kube-size', '-s', '16Mi', '-c', 'fast-local-ssd'])
    assert.equal(made.sizeBytes, 16 << 20)
    await ok(['volume', 'delete', 'kube-size'])
  })
})

/** Runs bash on `script` in its own process group; whatever it leaves running is killed when it ends. */
async function runScript (script: string, cwd: string, env: NodeJS.ProcessEnv): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env }
  delete childEnv.NODE_TEST_CONTEXT
  return await new Promise<Run>((resolve, reject) => {
    const child = spawn('bash', ['-e', '-o', 'pipefail', '-c', script], { cwd, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const killGroup = (): void => { try { process.kill(-(child.pid as number), 'SIGKILL') } catch {} }
    const timer = setTimeout(killGroup, 60_000)
    child.once('exit', () => { clearTimeout(timer); killGroup() })
    child.on('error', reject)
    child.on('close', (code) => { resolve({ code: code ?? -1, stdout, stderr }) })
  })
}

const FUSE = existsSync('/dev/fuse') && process.getuid?.() === 0 ? undefined : 'the block mounts through FUSE: needs /dev/fuse and root'

describe('h43: the README\'s "Daemon and CLI" block', () => {
  it('waits for a daemon it starts in the background (`daemon status --wait`) before its first CLI command', () => {
    // Otherwise the first command races the daemon's start and fails with "no GalleonFS daemon
    // answers" whenever the daemon is slower to listen than the CLI is to start.
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
    for (const [, block] of readme.matchAll(/```(?:sh|bash)\n([\s\S]*?)```/g)) {
      const lines = (block as string).split('\n').map((line) => line.replace(/#.*$/, '').trim()).filter((line) => line.startsWith('galleonfs '))
      const started = lines.findIndex((line) => /^galleonfs (-d|--daemon)\b.*&$/.test(line))
      if (started === -1 || started === lines.length - 1) continue
      assert.match(lines[started + 1] as string, /^galleonfs daemon status --wait \d+/, `README: after \`${lines[started]}\` the next command is \`${lines[started + 1]}\`, which races the daemon's start`)
    }
  })

  it('runs as shown, as a script, in a fresh directory', { skip: FUSE, timeout: 90_000 }, async () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
    const section = readme.slice(readme.indexOf('\n## Daemon and CLI\n'))
    const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1]
    assert.ok(block !== undefined && block.startsWith('galleonfs -d '), 'the section opens with a sh block starting the daemon')
    const dir = await mkdtemp(join(tmpdir(), 'galleon-h43-readme-'))
    try {
      await mkdir(join(dir, 'bin'))
      await mkdir(join(dir, 'run'))
      await writeFile(join(dir, 'bin', 'galleonfs'), `#!/bin/sh\nexec ${[process.execPath, ...scriptArgs(ENTRY)].map((word) => JSON.stringify(word)).join(' ')} "$@"\n`, { mode: 0o755 })
      // The storage class file the block names, as the README's storage-class example defines one.
      await writeFile(join(dir, 'bulk.yaml'), 'name: bulk-hdd\nprovisioner: galleonfs.io/local\nparameters:\n  disk_type: hdd\nreclaim_policy: Retain\n')
      // Only what a test must change: a free port for the default 8090 (the CLI finds it through
      // GALLEONFS_DAEMON_ADDRESS) and a backup directory of its own instead of /backups.
      const port = await freePort()
      const script = block.split('127.0.0.1:8090').join(`127.0.0.1:${port}`).split('--target /backups').join(`--target ${join(dir, 'backups')}`) + 'wait\n'
      const result = await runScript(script, dir, { PATH: `${join(dir, 'bin')}:${process.env.PATH ?? ''}`, XDG_RUNTIME_DIR: join(dir, 'run'), GALLEONFS_DAEMON_ADDRESS: `127.0.0.1:${port}` })
      assert.equal(result.code, 0, `the block exited ${result.code}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`)
      for (const expected of ['created volume web-data', 'created volume db-data', 'mounted web-data at', 'snapshot nightly of web-data taken', 'created storage class bulk-hdd', 'created storage pool fast', 'the daemon is stopping']) {
        assert.ok(result.stdout.includes(expected), `the block did not print ${expected}\n${result.stdout}\n${result.stderr}`)
      }
    } finally {
      await rm(join(dir, 'bin'), { recursive: true, force: true })
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('h43: refusals in the CLI\'s terms', () => {
  it('a volume with writers is refused without naming the library call openVolumeFile', async () => {
    const { inCliTerms } = await import('../examples/cli-client.js')
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'held', sizeBytes: '1M' })
      const file = await g.mounts.openVolumeFile('held')
      const refusal = await g.deleteVolume('held').then(() => undefined, (err: Error) => err)
      await file.close()
      assert.ok(refusal !== undefined, 'a volume with a writable file open is refused')
      assert.match(refusal.message, /openVolumeFile/, 'the library names its call')
      const cli = inCliTerms(refusal.message)
      assert.doesNotMatch(cli, /openVolumeFile/)
      assert.match(cli, /writable files open on it or NBD clients connected read-write/)
    } finally {
      await g.close()
    }
  })
})
