// README "Daemon and CLI": the daemon's documented defaults, the persistence-level warning, the log
// level, the legacy way to run the daemon without -d, and what the CLI says of a server that is not
// a GalleonFS daemon.

import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createServer } from 'node:http'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ENTRY, runCli, startDaemonProcess } from './support/daemon.js'
import { scriptArgs } from './support/child-script.js'
import { fuseMissing } from './support/fuse-available.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'h54-daemon-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })


/** This process's environment without the variables that set the daemon's log level. */
function withoutLogLevel (): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.GALLEONFS_LOG
  delete env.RUST_LOG
  return env
}

const messages = (logs: string[]): Array<{ level: string, message: string } & Record<string, unknown>> =>
  logs.filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { level: string, message: string })

describe('README Daemon and CLI', () => {
  it('daemon flags default to the seed\'s values; a persistence level other than enhanced is shown and warned about; GALLEONFS_LOG=debug logs every API request', { timeout: 60_000 }, async () => {
    const cwd = await mkdtemp(join(root, 'defaults-'))
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0'], { cwd, env: withoutLogLevel() })
    try {
      const shown = JSON.parse((await runCli(daemon.address, ['--json', 'daemon', 'config'])).stdout) as Record<string, unknown>
      // "--storage-path (./galleonfs_storage)": relative to the daemon's working directory.
      assert.ok(existsSync(join(cwd, 'galleonfs_storage', 'ipc.token')), 'the default storage path is ./galleonfs_storage')
      assert.equal(shown.blockSize, 4096)
      assert.equal(shown.bindAddress, '127.0.0.1:8080')
      assert.equal(shown.replicationStrategy, 'synchronous')
      assert.equal(shown.persistenceLevel, 'enhanced')
      assert.equal(shown.leaseTtlSeconds, 10)
      assert.equal(shown.replicaReplacementDelaySeconds, 600)
      assert.equal(shown.failoverWaitSeconds, 30)
      assert.equal(shown.keepaliveIntervalSeconds, 5)
      assert.equal(shown.keepaliveTimeoutSeconds, 10)
      assert.equal(shown.nbdHandshakeTimeoutSeconds, 10)
      assert.equal(messages(daemon.logs).some((m) => /persistence/.test(m.message)), false, 'no warning for the default level')
      // The default level is info: no API request is logged.
      assert.equal(messages(daemon.logs).some((m) => m.level === 'debug'), false)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }

    const storage = join(root, 'fast')
    const fast = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0', '--persistence-level', 'high'], { cwd: root, env: { ...process.env, GALLEONFS_LOG: 'debug' } })
    try {
      const shown = JSON.parse((await runCli(fast.address, ['--json', 'daemon', 'config'])).stdout) as Record<string, unknown>
      assert.equal(shown.persistenceLevel, 'high', '`--persistence-level` is accepted and shown by `daemon config`')
      assert.ok(messages(fast.logs).some((m) => m.level === 'warn' && /persistence level/.test(m.message)), 'a level other than enhanced draws a warning')
      // debug "also logs every API request".
      assert.equal((await runCli(fast.address, ['volume', 'list'])).code, 0)
      const deadline = Date.now() + 10_000
      while (!messages(fast.logs).some((m) => m.level === 'debug' && JSON.stringify(m).includes('/v1/volumes')) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
      assert.ok(messages(fast.logs).some((m) => m.level === 'debug' && JSON.stringify(m).includes('/v1/volumes')), `the request is logged at debug: ${fast.logs.join('\n')}`)
    } finally {
      fast.child.kill('SIGTERM')
      assert.equal(await fast.exited, 0)
    }
  })

  it('`galleonfs --storage-path ... --mount-point ...` with no command runs the daemon, whatever the values are called', { timeout: 60_000 }, async () => {
    // A storage directory named like a CLI command ("backup", "volume") is an ordinary choice.
    const cwd = await mkdtemp(join(root, 'legacy-'))
    const child = spawn(process.execPath, [...scriptArgs(ENTRY), '--storage-path', 'backup', '--ipc-address', '127.0.0.1:0'], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let log = ''
    child.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
    child.stdout.on('data', (chunk: Buffer) => { log += chunk.toString() })
    let gone = false
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => { gone = true; resolve(code) }))
    while (!gone && !/"message":"ready"/.test(log)) await new Promise((resolve) => setTimeout(resolve, 50))
    const ready = /"message":"ready"/.test(log)
    if (ready) {
      child.kill('SIGTERM')
      await exited
    }
    assert.ok(ready, `the daemon did not start; the program said: ${log.trim()}`)
    assert.ok(existsSync(join(cwd, 'backup', 'ipc.token')))
  })

  it('an answer that is not a GalleonFS daemon\'s is reported in one line as such, exit 1', async () => {
    const wrong: string[] = []
    for (const [status, type, body] of [[200, 'text/html', '<html><body>Welcome to nginx!</body></html>'], [404, 'text/html', '<html>Not Found</html>'], [200, 'application/json', '{"hello":"world"}'], [500, 'text/plain', 'oops']] as const) {
      const server = createServer((_req, res) => { res.writeHead(status, { 'content-type': type }); res.end(body) })
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
      const port = (server.address() as { port: number }).port
      try {
        for (const args of [['volume', 'list'], ['volume', 'get', 'x'], ['daemon', 'status']]) {
          const result = await runCli(`127.0.0.1:${port}`, args, { env: { GALLEONFS_TOKEN: 't' } })
          const said = `${status} ${type} ${body} -> galleonfs ${args.join(' ')}: exit ${result.code}, stdout ${JSON.stringify(result.stdout)}, stderr ${JSON.stringify(result.stderr)}`
          if (result.code !== 1 || result.stderr.trim().split('\n').length !== 1 || !/not as a GalleonFS daemon does/.test(result.stderr)) wrong.push(said)
        }
      } finally {
        await new Promise((resolve) => server.close(resolve))
      }
    }
    assert.deepEqual(wrong, [], 'each answer is reported as not a GalleonFS daemon\'s, in one line, exit 1')
  })

  it('exits 2, sending nothing, for values the CLI can check itself: a size of 0, a retention of only zeros or above 10000, a burst multiplier outside 1 to 100', async () => {
    // Nothing listens at this address: a CLI that sent the request would exit 1 ("start it with galleonfs -d").
    const nobody = '127.0.0.1:9'
    const cases = [
      ['volume', 'create', '-n', 'x', '-s', '0'],
      ['volume', 'expand', 'x', '0'],
      ['backup', 'policy', 'create', 'p', '--schedule', '0 2 * * *', '--volumes', 'x', '--target', '/tmp', '--daily', '0'],
      ['backup', 'policy', 'create', 'p', '--schedule', '0 2 * * *', '--volumes', 'x', '--target', '/tmp', '--daily', '0', '--weekly', '0'],
      ['backup', 'policy', 'create', 'p', '--schedule', '0 2 * * *', '--volumes', 'x', '--target', '/tmp', '--daily', '10001'],
      ['qos', 'set', 'x', '--limit-iops', '100', '--burst-iops-multiplier', '0.5'],
      ['qos', 'set', 'x', '--limit-iops', '100', '--burst-iops-multiplier', '101'],
      ['qos', 'set', 'x', '--limit-mbps', '10', '--burst-mbps-multiplier', '0']
    ]
    const wrong: string[] = []
    for (const args of cases) {
      const result = await runCli(nobody, args, { env: { GALLEONFS_TOKEN: 't' } })
      // Its first line says what is wrong (the command's usage follows it).
      if (result.code !== 2 || !/^(error|galleonfs): .*(above 0|0 to 10000|keeps no backup|1 to 100)/.test(result.stderr)) wrong.push(`galleonfs ${args.join(' ')}: exit ${result.code}, ${JSON.stringify(result.stderr)}`)
    }
    assert.deepEqual(wrong, [])
  })

  it('daemon reload moves the mount point for mounts made from then on; existing mounts stay where they are', { skip: fuseMissing(), timeout: 60_000 }, async () => {
    const dir = await mkdtemp(join(root, 'reload-mounts-'))
    const config = join(dir, 'galleonfs.toml')
    const first = join(dir, 'mnt-a')
    const second = join(dir, 'mnt-b')
    await writeFile(config, `[daemon]\nstorage_path = "${join(dir, 'storage')}"\nmount_point = "${first}"\n`)
    const daemon = await startDaemonProcess(['--config', config, '--ipc-address', '127.0.0.1:0'], { cwd: dir })
    const ok = async (args: string[]): Promise<string> => {
      const result = await runCli(daemon.address, args)
      assert.equal(result.code, 0, `galleonfs ${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    try {
      await ok(['volume', 'create', '-n', 'one', '-s', '1M', '-c', 'fast-local-ssd'])
      await ok(['volume', 'create', '-n', 'two', '-s', '2M', '-c', 'fast-local-ssd'])
      await ok(['volume', 'mount', 'one'])
      assert.equal((await stat(join(first, 'one', 'data'))).size, 1 << 20)
      await writeFile(config, `[daemon]\nstorage_path = "${join(dir, 'storage')}"\nmount_point = "${second}"\n`)
      assert.match(await ok(['daemon', 'reload']), /mountPoint/)
      await ok(['volume', 'mount', 'two'])
      assert.equal((await stat(join(second, 'two', 'data'))).size, 2 << 20, 'a mount made after the reload goes under the new mount point')
      assert.equal((await stat(join(first, 'one', 'data'))).size, 1 << 20, 'the mount made before stays where it is')
      const mounts = JSON.parse(await ok(['--json', 'mount', 'list'])) as Array<{ volumeName: string, path: string }>
      assert.deepEqual(mounts.map((m) => [m.volumeName, m.path]).sort(), [['one', join(first, 'one')], ['two', join(second, 'two')]])
      await ok(['volume', 'unmount', 'one'])
      await ok(['volume', 'unmount', 'two'])
      assert.equal(JSON.parse(await ok(['--json', 'mount', 'list'])).length, 0)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})
