// A first-time operator's way through `galleonfs -d` and the CLI, as real processes: the commands the
// README documents with the mistakes people make on the way (a policy with nowhere to go, a
// malformed address, a broken definition file, a port or a storage directory that is taken), each
// answered with the right exit code, in one line that names the fix as a CLI command or flag.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { ENTRY, runCli, startDaemonProcess, type RunningDaemon } from './support/daemon.js'
import { until } from './support/wait.js'
import { scriptArgs } from './support/child-script.js'

let root: string
let daemon: RunningDaemon
let backups: string

/** Runs the CLI against the journey's daemon from `root` (the operator's working directory). */
async function cli (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await runCli(daemon.address, args, { cwd: root })
}

/** Runs the CLI and expects it to succeed; its output. */
async function ok (args: string[]): Promise<string> {
  const result = await cli(args)
  assert.equal(result.code, 0, `galleonfs ${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}

/** Runs `galleonfs -d ...args`, expecting it not to start; its exit code and what it logged. */
async function daemonThatFails (args: string[]): Promise<{ code: number | null, log: string }> {
  const child = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', ...args], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  child.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  return { code, log }
}

/** The messages of the journey daemon's log lines at `level`. */
function logged (level: string): Array<Record<string, unknown>> {
  return daemon.logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.level === level)
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-journey-'))
  backups = join(root, 'backups')
  daemon = await startDaemonProcess(['--storage-path', join(root, 'node1'), '--ipc-address', '127.0.0.1:0'], { cwd: root })
  await ok(['volume', 'create', '--name', 'web-data', '--size', '16M', '--storage-class', 'fast-local-ssd'])
})

after(async () => {
  // Every mistake below was answered, and the daemon is still the one that started, holding its volume.
  const status = JSON.parse(await ok(['--json', 'daemon', 'status'])) as { pid: number }
  assert.equal(status.pid, daemon.child.pid)
  assert.equal((JSON.parse(await ok(['--json', 'volume', 'get', 'web-data'])) as { sizeBytes: number }).sizeBytes, 16 << 20)
  daemon.child.kill('SIGTERM')
  assert.equal(await daemon.exited, 0)
  await rm(root, { recursive: true, force: true })
})

describe('CLI journey: backup policies', () => {
  it('refuses a policy without --target when the daemon has no default backup target (every run would fail), naming --target', async () => {
    const refused = await cli(['backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--volumes', 'web-data', '--daily', '7'])
    assert.equal(refused.code, 1)
    assert.match(refused.stderr, /^galleonfs: INVALID_ARGUMENT: .*--target <dir>/)
    assert.deepEqual(JSON.parse(await ok(['--json', 'backup', 'policy', 'list'])), [])
    assert.match(await ok(['backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--volumes', 'web-data', '--daily', '7', '--target', backups]), /created backup policy nightly/)
    await ok(['backup', 'policy', 'delete', 'nightly'])
  })

  it('logs every policy run, one with failures as a warning naming the volume; policy list shows the last run and how it went', async () => {
    await ok(['backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--volumes', 'web-data', '--daily', '7', '--target', backups])
    await ok(['backup', 'policy', 'create', 'broken', '--schedule', '0 3 * * *', '--volumes', 'no-such-volume', '--daily', '1', '--target', backups])
    assert.match(await ok(['backup', 'policy', 'run', 'nightly']), /policy nightly: 1 backup\(s\)/)
    const failed = await cli(['backup', 'policy', 'run', 'broken'])
    assert.equal(failed.code, 1)
    assert.match(failed.stderr, /policy broken failed for no-such-volume/)
    await until('the daemon logs the failed run', () => logged('warn').some((entry) => entry.policy === 'broken'))
    const warning = logged('warn').find((entry) => entry.policy === 'broken') as { message: string, errors: Array<{ volume: string }> }
    assert.match(warning.message, /backup policy run failed/)
    assert.deepEqual(warning.errors.map((e) => e.volume), ['no-such-volume'])
    await until('the daemon logs the good run', () => logged('info').some((entry) => entry.policy === 'nightly' && entry.backups === 1))
    // Runs by hand count as the last run (the policy's lastRunAt is only its last scheduled one).
    const table = (await ok(['backup', 'policy', 'list'])).trimEnd().split('\n')
    assert.match(table[0] ?? '', /^NAME\s+SCHEDULE\s+STRATEGY\s+NEXT RUN\s+LAST RUN\s+RESULT$/)
    assert.match(table.find((row) => row.startsWith('nightly')) ?? '', /\s20\d\d-\d\d-\d\dT[\d:.]+Z\s+1 backup\(s\)$/)
    assert.match(table.find((row) => row.startsWith('broken')) ?? '', /\s0 backup\(s\), 1 FAILED$/)
    await ok(['backup', 'policy', 'delete', 'broken'])
    await ok(['backup', 'policy', 'delete', 'nightly'])
  })
})

describe('CLI journey: usage errors exit with 2 before anything is sent', () => {
  it('cluster join with a malformed address, and backup restore with both --name and --volume', async () => {
    const join = await cli(['cluster', 'join', 'notanaddress'])
    assert.equal(join.code, 2)
    assert.match(join.stderr, /host:port/)
    const made = JSON.parse(await ok(['--json', 'backup', 'create', 'web-data', '--target', backups])) as { id: string }
    const both = await cli(['backup', 'restore', made.id, '--name', 'copy', '--volume', 'web-data', '--target', backups])
    assert.equal(both.code, 2)
    assert.match(both.stderr, /--volume.*cannot be used with.*--name/)
    assert.deepEqual((JSON.parse(await ok(['--json', 'volume', 'list'])) as Array<{ name: string }>).map((v) => v.name), ['web-data'])
  })
})

describe('CLI journey: errors name the fix as commands and flags', () => {
  it('says --replicas 1, --force, --target, `galleonfs volume list`, `galleonfs pool update` and `cluster join`, not API calls', async () => {
    const cases: Array<[string[], RegExp]> = [
      // The seed's default class asks for 3 copies: on a single node the first create fails.
      [['volume', 'create', '--name', 'db-data', '--size', '1M'], /create the volume with --replicas 1/],
      [['volume', 'get', 'nope'], /`galleonfs volume list` shows the existing ones/],
      [['snapshot', 'restore', 'web-data', 'nope'], /`galleonfs snapshot list <volume>` shows its snapshots/],
      [['backup', 'create', 'web-data'], /give --target <dir>/],
      [['cluster', 'leave'], /this instance is not in a cluster \(`galleonfs cluster join <address>` joins one\)/],
      [['cluster', 'forget', 'node-9'], /this instance is not in a cluster \(`galleonfs cluster join <address>` joins one\)/],
      [['pool', 'get', 'nope'], /`galleonfs pool list` shows the existing ones, `galleonfs pool create` makes one/]
    ]
    await ok(['volume', 'create', '--name', 'kept', '--size', '1M', '--replicas', '1'])
    cases.push([['volume', 'delete', 'kept'], /pass --force to delete its data anyway/])
    await ok(['pool', 'create', 'small', '--capacity', '1M'])
    cases.push([['volume', 'create', '--name', 'big', '--size', '2M', '-c', 'fast-local-ssd', '--pool', 'small'], /`galleonfs pool update small --capacity <size>`/])
    for (const [args, fix] of cases) {
      const result = await cli(args)
      assert.equal(result.code, 1, args.join(' '))
      assert.match(result.stderr, fix, args.join(' '))
      assert.doesNotMatch(result.stderr, /[a-z]\(\)|\{ \w+: |\{ \w+ \}/, args.join(' '))
    }
    await ok(['volume', 'delete', 'kept', '--force'])
    await ok(['pool', 'delete', 'small'])
  })
})

describe('CLI journey: storage classes', () => {
  it('a broken YAML file is reported in one line; a class of one\'s own can be deleted, a built-in one cannot', async () => {
    await writeFile(join(root, 'broken.yaml'), 'name: [\n')
    const broken = await cli(['storage-class', 'create', 'broken.yaml'])
    assert.equal(broken.code, 1)
    assert.match(broken.stderr, /^galleonfs: broken\.yaml is not valid YAML: .*line 2, column 1\n$/)
    await writeFile(join(root, 'bulk.yaml'), 'name: bulk\nreclaimPolicy: Delete\nparameters:\n  disk_type: hdd\n')
    assert.match(await ok(['storage-class', 'create', 'bulk.yaml']), /created storage class bulk/)
    const again = await cli(['storage-class', 'create', 'bulk.yaml'])
    assert.match(again.stderr, /STORAGE_CLASS_EXISTS/)
    assert.match(await ok(['storage-class', 'delete', 'bulk']), /deleted storage class bulk/)
    assert.doesNotMatch(await ok(['storage-class', 'list']), /bulk/)
    const builtIn = await cli(['storage-class', 'delete', 'fast-local-ssd'])
    assert.equal(builtIn.code, 1)
    assert.match(builtIn.stderr, /INVALID_ARGUMENT: .*built in/)
    const unknown = await cli(['storage-class', 'delete', 'bulk'])
    assert.equal(unknown.code, 1)
    assert.match(unknown.stderr, /STORAGE_CLASS_NOT_FOUND/)
  })
})

describe('CLI journey: a daemon that cannot start says why and what to do', () => {
  it('an IPC address in use names --ipc-address; a storage path held by the running daemon is refused; neither harms the running one', async () => {
    const taken = await daemonThatFails(['--storage-path', join(root, 'node2'), '--ipc-address', daemon.address])
    assert.equal(taken.code, 1)
    assert.match(taken.log, new RegExp(`the IPC address ${daemon.address} is in use .*another --ipc-address`))
    const held = await daemonThatFails(['--storage-path', join(root, 'node1'), '--ipc-address', '127.0.0.1:0'])
    assert.equal(held.code, 1)
    assert.match(held.log, /already open in (another GalleonFS instance or process|process \d+)/)
    // The runtime token file is still the running daemon's: the CLI gets in without --token.
    assert.match(await ok(['volume', 'list']), /web-data/)
  })

  it('a storage path that is a file, and a key above every [section] of the configuration file, exit 2 naming the fix', async () => {
    await writeFile(join(root, 'a-file'), 'not a directory\n')
    const file = await daemonThatFails(['--storage-path', join(root, 'a-file'), '--ipc-address', '127.0.0.1:0'])
    assert.equal(file.code, 2)
    assert.match(file.log, /the storage path .*a-file is not a directory; give --storage-path/)
    await mkdir(join(root, 'conf'), { recursive: true })
    await writeFile(join(root, 'conf', 'daemon.toml'), 'storage_path = "./node3"\n\n[daemon]\nipc_address = "127.0.0.1:0"\n')
    const outside = await daemonThatFails(['--config', join(root, 'conf', 'daemon.toml')])
    assert.equal(outside.code, 2)
    assert.match(outside.log, /storage_path stands outside any section; .*put it under \[daemon\]/)
  })
})

describe('CLI journey: mounts are listed by the CLI', () => {
  it('`mount list` shows what is mounted (table and --json), and unmounting nothing points to it', async () => {
    // The journey daemon has no mount point: one that mounts through the virtual driver (no FUSE needed).
    const mountPoint = join(root, 'mnt')
    await writeFile(join(root, 'mounting.toml'), `[daemon]\nstorage_path = "${join(root, 'node-mounts')}"\nmount_point = "${mountPoint}"\n\n[drivers]\nmount_driver = "virtual"\n`)
    const mounting = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--config', join(root, 'mounting.toml')], { cwd: root })
    try {
      const on = async (args: string[]): Promise<string> => {
        const result = await runCli(mounting.address, args, { cwd: root })
        assert.equal(result.code, 0, `galleonfs ${args.join(' ')}: ${result.stderr}`)
        return result.stdout
      }
      assert.equal((await on(['mount', 'list'])).trimEnd(), 'VOLUME  PATH  MODE  DRIVER  OPEN FILES  MOUNTED  ID')
      await on(['volume', 'create', '--name', 'logs', '--size', '1M', '-c', 'fast-local-ssd'])
      await on(['volume', 'mount', 'logs', '--options', 'ro'])
      const table = (await on(['mount', 'list'])).trimEnd().split('\n')
      assert.equal(table.length, 2)
      assert.match(table[1] ?? '', new RegExp(`^logs\\s+${join(mountPoint, 'logs')}\\s+ro\\s+virtual\\s+0\\s+20\\d\\d-`))
      const listed = JSON.parse(await on(['--json', 'mount', 'list'])) as Array<{ volumeName: string, path: string, readOnly: boolean }>
      assert.deepEqual(listed.map((m) => [m.volumeName, m.path, m.readOnly]), [['logs', join(mountPoint, 'logs'), true]])
      // Unmounting what is not mounted names the command that lists the mounts, not the API route.
      const wrong = await runCli(mounting.address, ['volume', 'unmount', 'nope'], { cwd: root })
      assert.equal(wrong.code, 1)
      assert.match(wrong.stderr, /nothing is mounted as "nope".*`galleonfs mount list` shows the mounts/)
      assert.doesNotMatch(wrong.stderr, /GET \/v1|listMounts/)
      await on(['volume', 'unmount', 'logs'])
      assert.deepEqual(JSON.parse(await on(['--json', 'mount', 'list'])), [])
    } finally {
      mounting.child.kill('SIGTERM')
      assert.equal(await mounting.exited, 0)
    }
  })
})

describe('CLI journey: a bad daemon setting is named as the user wrote it', () => {
  /** The message of the one error a daemon that did not start logged, the journey's directory shown as <root>. */
  async function refusal (args: string[]): Promise<string> {
    const failed = await daemonThatFails(['--storage-path', join(root, 'never'), ...args])
    assert.equal(failed.code, 2, failed.log)
    const errors = failed.log.trimEnd().split('\n').map((line) => JSON.parse(line) as { level: string, message: string }).filter((entry) => entry.level === 'error')
    assert.equal(errors.length, 1, failed.log)
    return (errors[0]?.message ?? '').split(root).join('<root>')
  }

  it('flags as --flags, file keys as key in [section]; never the daemon\'s field names', async () => {
    const file = async (name: string, text: string): Promise<string> => {
      await writeFile(join(root, name), text)
      return await refusal(['--config', join(root, name)])
    }
    const messages: Array<[string, RegExp]> = [
      [await refusal(['--ipc-address', 'localhost']), /^command line: --ipc-address must be host:port such as 127\.0\.0\.1:8090, got "localhost"$/],
      [await refusal(['--block-size', '3']), /^command line: --block-size must be a power of two/],
      [await refusal(['--peer-addresses', '10.0.0.1:8081,somewhere']), /^command line: --peer-addresses: each peer must be host:port .*got "somewhere"$/],
      [await refusal(['--key-provider', 'acme-kms']), /^--key-provider \(key_provider in \[security\]\) names "acme-kms", which no loaded module registered/],
      [await file('ipc.toml', '[daemon]\nipc_address = "localhost"\n'), /^<root>\/ipc\.toml: ipc_address in \[daemon\] must be host:port such as 127\.0\.0\.1:8090, got "localhost"$/],
      [await file('ttl.toml', '[cluster]\nlease_ttl = 0\n'), /^<root>\/ttl\.toml: lease_ttl in \[cluster\] must be a number of seconds from 1 to 3600, got 0$/],
      [await file('store.toml', '[drivers]\nblock_store = "acme/s3"\n'), /^<root>\/store\.toml: block_store in \[drivers\] must be the name of a registered driver/]
    ]
    for (const [message, expected] of messages) {
      assert.match(message, expected)
      // camelCase words are the daemon's own field names (ipcAddress, blockSize, leaseTtlSeconds).
      assert.doesNotMatch(message, /\b[a-z]+[A-Z]\w*/, message)
    }
  })
})

describe('CLI journey: sizes and counts the CLI can check itself exit 2 before anything is sent', () => {
  it('a size of 0, negative or not a size, a retention that keeps nothing or too much, a burst multiplier below 1', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['volume', 'create', '--name', 'empty', '--size', '0', '-c', 'fast-local-ssd'], /--size <size>' argument '0' is invalid\. a size above 0/],
      [['volume', 'create', '--name', 'empty', '--size', '-1M', '-c', 'fast-local-ssd'], /--size <size>' argument '-1M' is invalid/],
      [['volume', 'expand', 'web-data', '0'], /value '0' is invalid for argument 'size'\. a size above 0/],
      [['pool', 'update', 'none', '--capacity', '0K'], /--capacity <size>' argument '0K' is invalid\. a size above 0/],
      [['backup', 'policy', 'create', 'never', '--schedule', '0 2 * * *', '--volumes', 'web-data', '--daily', '0', '--weekly', '0', '--target', backups], /--daily 0 --weekly 0 keeps no backup.*--daily, --weekly or --monthly above 0/],
      [['backup', 'policy', 'create', 'never', '--schedule', '0 2 * * *', '--volumes', 'web-data', '--monthly', '20000', '--target', backups], /--monthly <n>' argument '20000' is invalid\. a whole number from 0 to 10000/],
      [['qos', 'set', 'web-data', '--limit-iops', '100', '--burst-seconds', '10', '--burst-iops-multiplier', '0.5'], /--burst-iops-multiplier <n>' argument '0\.5' is invalid\. a number from 1 to 100/]
    ]
    for (const [args, message] of cases) {
      const result = await cli(args)
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`)
      assert.match(result.stderr, message, args.join(' '))
    }
    // Nothing was sent: no volume, pool, policy or QoS policy came of them, and nothing changed.
    assert.deepEqual((JSON.parse(await ok(['--json', 'volume', 'list'])) as Array<{ name: string }>).map((v) => v.name), ['web-data'])
    assert.deepEqual(JSON.parse(await ok(['--json', 'pool', 'list'])), [])
    assert.deepEqual(JSON.parse(await ok(['--json', 'backup', 'policy', 'list'])), [])
    assert.equal((JSON.parse(await ok(['--json', 'qos', 'get', 'web-data'])) as { policy?: unknown }).policy, undefined)
  })
})

describe('CLI journey: backups of a name no volume has', () => {
  it('a deleted volume\'s backups are still listed by its name; a name no volume has lists none, exits 0 and says so on stderr', async () => {
    const target = join(root, 'gone-backups')
    await ok(['volume', 'create', '--name', 'gone', '--size', '1M', '-c', 'fast-local-ssd'])
    const made = JSON.parse(await ok(['--json', 'backup', 'create', 'gone', '--target', target])) as { id: string }
    await ok(['volume', 'delete', 'gone', '--force'])
    const kept = await cli(['backup', 'list', 'gone', '--target', target])
    assert.equal(kept.code, 0)
    assert.match(kept.stdout, new RegExp(`^${made.id}\\s+gone\\s+full\\s`, 'm'))
    assert.equal(kept.stderr, '')
    const typo = await cli(['backup', 'list', 'gnoe', '--target', target])
    assert.equal(typo.code, 0)
    assert.equal(typo.stdout.trimEnd(), 'ID  VOLUME  STRATEGY  CREATED  BYTES')
    assert.match(typo.stderr, /^galleonfs: no backups of gnoe on .*gone-backups, and no volume is named gnoe \(`galleonfs volume list` shows the volumes; a deleted volume's backups are listed by its name or id\)\n$/)
    // For scripts the answer stays an empty list, and a volume that exists but has no backups is no mistake.
    const json = await cli(['--json', 'backup', 'list', 'gnoe', '--target', target])
    assert.deepEqual([json.code, JSON.parse(json.stdout), json.stderr], [0, [], ''])
    const none = await cli(['backup', 'list', 'web-data', '--target', target])
    assert.deepEqual([none.code, none.stderr], [0, ''])
  })
})
