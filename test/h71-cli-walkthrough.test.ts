// h71: what a storage engineer trying GalleonFS for the first time met in the README, the daemon and
// the CLI, as real processes: Ctrl-C while a progress bar is drawn ends the CLI and cancels the
// backup in the daemon (cli-progress's own SIGINT handler kept the process alive, so the backup ran
// to its end and the CLI exited 0); a backup policy's required flags are checked by the CLI (exit 2,
// named as flags); the library's fixes are said as commands and flags; a --mount-point that is a
// file and a missing cluster secret are refused naming the flag; and the README names every key of
// the seed's daemon.conf that the daemon only warns about.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { ENTRY, ROOT, runCli, runDaemonToExit, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { scriptArgs } from './support/child-script.js'
import { until } from './support/wait.js'
import { fuseMissing } from './support/fuse-available.js'

/**
 * The seed README's /etc/galleonfs/daemon.conf, but for peer_addresses (which would need a cluster
 * secret) and mount_point (/mnt/galleonfs, outside the test's directory).
 */
const SEED_CONF = `[daemon]
storage_path = "/var/lib/galleonfs"
block_size = 4096
bind_address = "0.0.0.0:8080"
ipc_address = "127.0.0.1:8090"

[cluster]
auto_join = true
health_check_interval = 30

[replication]
strategy = "synchronous"
min_replicas = 2
max_replicas = 5

[persistence]
level = "high"
journal_size = "256MB"
checkpoint_interval = 300

[security]
encryption_at_rest = true
tls_enabled = false
auth_required = false
`

const BIG_BYTES = 48 << 20

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h71-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

async function stopDaemon (daemon: RunningDaemon): Promise<void> {
  daemon.child.kill('SIGCONT')
  daemon.child.kill('SIGTERM')
  assert.equal(await daemon.exited, 0)
}

describe('h71: a first walk through the daemon and the CLI', () => {
  let daemon: RunningDaemon
  let storage: string
  const cli = async (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => await runCli(daemon.address, args, { cwd: root })

  before(async () => {
    storage = join(root, 'node1')
    // A volume with data enough that a backup of it is still running when the CLI is interrupted.
    const g = await GalleonFS.open({ storagePath: storage })
    try {
      const big = await g.createVolume({ name: 'big', sizeBytes: BIG_BYTES, storageClass: 'fast-local-ssd' })
      for (let offset = 0; offset < BIG_BYTES; offset += 4 << 20) await g.write(big, offset, randomBytes(4 << 20))
    } finally {
      await g.close()
    }
    const conf = join(root, 'daemon.conf')
    await writeFile(conf, SEED_CONF)
    // The seed's file as a user copies it; flags override where it would clash with this machine.
    daemon = await startDaemonProcess(['--config', conf, '--storage-path', storage, '--ipc-address', '127.0.0.1:0'], { cwd: root })
  })
  after(async () => { if (daemon !== undefined) await stopDaemon(daemon) })

  it('the README names every key of the seed\'s daemon.conf that the daemon warns it does not use', async () => {
    const warning = daemon.logs.map((line) => JSON.parse(line) as { message?: string, keys?: string[] }).find((entry) => entry.message === 'configuration keys not used by this release')
    assert.ok(warning?.keys !== undefined && warning.keys.length > 0, `no warning about unused keys: ${daemon.logs.join('\n')}`)
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8')
    const flags = readme.slice(readme.indexOf('- **Daemon flags**'), readme.indexOf('- **The API**'))
    for (const key of warning.keys) {
      const [section, name] = key.split('.') as [string, string]
      assert.match(flags, new RegExp(`\`${name}\`[^;]*in \`\\[${section}\\]\``), `README's daemon flags do not name ${name} in [${section}], which the daemon warns about`)
    }
  })

  it('Ctrl-C while the progress bar is drawn ends the CLI by the signal, and the daemon cancels the backup', async () => {
    const target = join(root, 'interrupted-backups')
    const child = spawn(process.execPath, [...scriptArgs(ENTRY), '--daemon-address', daemon.address, '--timeout', '1', '--progress', 'backup', 'create', 'big', '--target', target], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
    try {
      await until('the CLI draws its progress bar', () => stderr.includes('backup of big'))
      // The daemon is held still, so the backup cannot end before the interrupt whatever the machine's speed.
      daemon.child.kill('SIGSTOP')
      child.kill('SIGINT')
      const { code, signal } = await exited
      assert.equal(signal, 'SIGINT', `the CLI went on after Ctrl-C and exited with ${code}: ${stderr}`)
    } finally {
      daemon.child.kill('SIGCONT')
      child.kill('SIGKILL')
    }
    // Backups on one target run one after another: this one starts once the interrupted one has
    // ended, and is the only backup there, so the interrupted one left none.
    const next = await cli(['--json', 'backup', 'create', 'big', '--target', target])
    assert.equal(next.code, 0, next.stderr)
    const listed = await cli(['--json', 'backup', 'list', 'big', '--target', target])
    assert.deepEqual((JSON.parse(listed.stdout) as Array<{ id: string }>).map((b) => b.id), [(JSON.parse(next.stdout) as { id: string }).id])
  })

  it('backup policy create without --volumes/--labels or without any of --daily/--weekly/--monthly is a usage error naming them', async () => {
    const target = join(root, 'policy-backups')
    const noVolumes = await cli(['backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--daily', '7', '--target', target])
    assert.equal(noVolumes.code, 2, noVolumes.stderr)
    assert.match(noVolumes.stderr, /needs --volumes <names> or --labels/)
    const noRetention = await cli(['backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--volumes', 'big', '--target', target])
    assert.equal(noRetention.code, 2, noRetention.stderr)
    assert.match(noRetention.stderr, /needs --daily, --weekly or --monthly/)
    assert.deepEqual(JSON.parse((await cli(['--json', 'backup', 'policy', 'list'])).stdout), [])
  })

  it('refusals name the CLI command or flag that fixes them, not the library call', async () => {
    const expectRefusal = async (args: string[], says: RegExp, apiTerm: RegExp): Promise<void> => {
      const run = await cli(args)
      assert.equal(run.code, 1, `${args.join(' ')}: ${run.stderr}`)
      assert.match(run.stderr, says, args.join(' '))
      assert.doesNotMatch(run.stderr, apiTerm, `${args.join(' ')} names a library call: ${run.stderr}`)
    }
    const notTarget = join(root, 'not-a-target')
    await mkdir(notTarget)
    await expectRefusal(['backup', 'list', 'big', '--target', notTarget], /BACKUP_NOT_FOUND: .*`galleonfs backup create <volume> --target <dir>`/, /createBackup\(\)/)
    await expectRefusal(['volume', 'migrate', 'big', '--storage-class', 'encrypted-storage'], /not in a cluster; join one first \(`galleonfs cluster join <address>`\)/, /joinCluster/)
    await expectRefusal(['volume', 'unmount', 'nothing-here'], /nothing is mounted as "nothing-here".*a mount point \(`galleonfs mount list` shows the mounts\)/, /absolute/)
    const created = await cli(['backup', 'policy', 'create', 'orphan', '--schedule', '0 2 * * *', '--volumes', 'no-such-volume', '--daily', '1', '--target', join(root, 'orphan-backups')])
    assert.equal(created.code, 0, created.stderr)
    await expectRefusal(['backup', 'policy', 'run', 'orphan'], /replace the policy \(`galleonfs backup policy delete`, then `galleonfs backup policy create`\)/, /deleteBackupPolicy|createBackupPolicy/)
    assert.equal((await cli(['backup', 'policy', 'delete', 'orphan'])).code, 0)
  })

  it('a size written with its unit but not whole blocks is not said to have lost its unit', async () => {
    // The CLI sent the parsed bytes, so --size 2K came back as 'for 2048 GiB write "2048G"'.
    const withUnit = await cli(['volume', 'create', '--name', 'odd', '--size', '2K', '--storage-class', 'fast-local-ssd'])
    assert.equal(withUnit.code, 1, withUnit.stderr)
    assert.match(withUnit.stderr, /INVALID_ARGUMENT: .*try 4096/)
    assert.doesNotMatch(withUnit.stderr, /without a unit/, withUnit.stderr)
    const bare = await cli(['volume', 'create', '--name', 'odd', '--size', '10', '--storage-class', 'fast-local-ssd'])
    assert.equal(bare.code, 1, bare.stderr)
    assert.match(bare.stderr, /for 10 GiB write "10G"/)
  })
})

describe('h71: daemon settings refused naming the flag', () => {
  it('a --mount-point that is a file stops the daemon at start (exit 2) before the storage is created', async () => {
    const file = join(root, 'mount-point-file')
    await writeFile(file, '')
    const storage = join(root, 'mount-point-file-storage')
    const outcome = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0', '--mount-point', file], { cwd: root }).then(
      async (started) => { await stopDaemon(started); return 'the daemon started' },
      (err: Error) => err.message
    )
    assert.match(outcome, /exited with 2: .*the mount point .*mount-point-file is not a directory; give --mount-point \(mount_point in \[daemon\]\) a directory/)
    assert.equal(existsSync(storage), false)
  })

  it('a reload that makes the mount point a file is refused and changes nothing', async () => {
    const storage = join(root, 'reload-storage')
    const mounts = join(root, 'reload-mounts')
    const file = join(root, 'reload-mount-file')
    await writeFile(file, '')
    const conf = join(root, 'reload.toml')
    const write = async (mountPoint: string): Promise<void> => { await writeFile(conf, `[daemon]\nstorage_path = "${storage}"\nmount_point = "${mountPoint}"\n\n[drivers]\nmount_driver = "virtual"\n`) }
    await write(mounts)
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--config', conf], { cwd: root })
    try {
      await write(file)
      const reload = await runCli(daemon.address, ['daemon', 'reload'], { cwd: root })
      assert.equal(reload.code, 1, reload.stdout)
      assert.match(reload.stderr, /INVALID_CONFIG: the mount point .*reload-mount-file is not a directory/)
      const config = await runCli(daemon.address, ['daemon', 'config'], { cwd: root })
      assert.equal((JSON.parse(config.stdout) as { mountPoint?: string }).mountPoint, mounts)
    } finally {
      await stopDaemon(daemon)
    }
  })

  it('--peer-addresses without a cluster secret names --cluster-secret-file (exit 2)', async () => {
    const env = { ...process.env }
    delete env.GALLEONFS_CLUSTER_SECRET
    const { code, log } = await runDaemonToExit(['--storage-path', join(root, 'no-secret'), '--peer-addresses', '127.0.0.1:9'], { cwd: root, env })
    assert.equal(code, 2, log)
    assert.match(log, /shared secret: start the daemon with --cluster-secret-file <file>/)
  })
})


describe('h71: FUSE mounts through the CLI', { skip: fuseMissing() }, () => {
  it('unmounting while the data file is open says --force, not the library\'s { force: true }', async () => {
    const storage = join(root, 'fuse-storage')
    const mounts = join(root, 'fuse-mounts')
    const daemon = await startDaemonProcess(['--storage-path', storage, '--ipc-address', '127.0.0.1:0', '--mount-point', mounts], { cwd: root })
    try {
      const ok = async (args: string[]): Promise<string> => {
        const run = await runCli(daemon.address, args, { cwd: root })
        assert.equal(run.code, 0, `${args.join(' ')}: ${run.stderr}`)
        return run.stdout
      }
      await ok(['volume', 'create', '--name', 'small', '--size', '1M', '--storage-class', 'fast-local-ssd'])
      await ok(['volume', 'mount', 'small'])
      // Opened here, served by the daemon: a different process, so no deadlock.
      const file = await open(join(mounts, 'small', 'data'), 'r')
      try {
        const refused = await runCli(daemon.address, ['volume', 'unmount', 'small'], { cwd: root })
        assert.equal(refused.code, 1, refused.stdout)
        assert.match(refused.stderr, /BUSY: .*is open in 1 place\(s\).*or unmount with --force/)
        assert.doesNotMatch(refused.stderr, /\{ force: true \}/)
      } finally {
        await file.close()
      }
      await ok(['volume', 'unmount', 'small'])
    } finally {
      await stopDaemon(daemon)
    }
  })
})
