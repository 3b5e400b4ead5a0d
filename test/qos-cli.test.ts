// `galleonfs qos set|get|clear` against a real daemon process: flags and policy files, JSON and
// tables, errors with exit codes, and the policy surviving a daemon restart.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, startDaemonProcess } from './support/daemon.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-qos-cli-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('qos commands', () => {
  it('sets a policy from flags and from a YAML file, shows it with live figures, clears it, and keeps it across a restart', async () => {
    const storage = join(root, 'node')
    let daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage], { cwd: root })
    const ok = async (args: string[]): Promise<string> => {
      const result = await runCli(daemon.address, args, { cwd: root })
      assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    try {
      await ok(['volume', 'create', '-n', 'db', '-s', '4M', '-c', 'fast-local-ssd'])
      assert.match(await ok(['qos', 'get', 'db']), /has no QoS policy/)
      assert.match(await ok(['qos', 'set', 'db', '--limit-iops', '1000', '--guarantee-iops', '200', '--burst-seconds', '30', '--burst-iops-multiplier', '2']), /QoS policy of db set/)
      const shown = JSON.parse(await ok(['--json', 'qos', 'get', 'db']))
      assert.deepEqual(shown.policy, { limits: { iops: 1000 }, guarantees: { iops: 200 }, burstable: { enabled: true, durationSeconds: 30, iopsMultiplier: 2, throughputMultiplier: 1 } })
      assert.equal(shown.source, 'volume')
      assert.equal(shown.metrics.burstCredits.iops, 30_000)
      assert.match(await ok(['qos', 'get', 'db']), /burst credits/)

      await writeFile(join(root, 'gold.yaml'), 'name: gold\nlimits:\n  write_iops: 500\n  latency_ms: 5\nweight: 4\n')
      await ok(['qos', 'set', 'db', '--file', join(root, 'gold.yaml')])
      assert.deepEqual(JSON.parse(await ok(['--json', 'qos', 'get', 'db'])).policy, { name: 'gold', limits: { writeIops: 500, latencyMs: 5 }, weight: 4 })

      // Errors: a policy the API refuses (exit 1, code and field named), a flag that is no number
      // (usage error, exit 2), no policy at all, both file and flags.
      const refused = await runCli(daemon.address, ['qos', 'set', 'db', '--limit-iops', '10', '--guarantee-iops', '20'], { cwd: root })
      assert.equal(refused.code, 1)
      assert.match(refused.stderr, /INVALID_ARGUMENT.*ceiling/)
      assert.equal((await runCli(daemon.address, ['qos', 'set', 'db', '--limit-iops', 'fast'], { cwd: root })).code, 2)
      assert.match((await runCli(daemon.address, ['qos', 'set', 'db'], { cwd: root })).stderr, /needs a policy/)
      assert.match((await runCli(daemon.address, ['qos', 'set', 'db', '--file', join(root, 'gold.yaml'), '--weight', '2'], { cwd: root })).stderr, /either as --file or as flags/)
      const missing = await runCli(daemon.address, ['qos', 'get', 'nope'], { cwd: root })
      assert.equal(missing.code, 1)
      assert.match(missing.stderr, /VOLUME_NOT_FOUND/)
      assert.equal(JSON.parse(await ok(['--json', 'qos', 'get', 'db'])).policy.name, 'gold', 'refused changes left the policy alone')

      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
      daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage], { cwd: root })
      assert.equal(JSON.parse(await ok(['--json', 'qos', 'get', 'db'])).policy.name, 'gold')
      assert.match(await ok(['qos', 'clear', 'db']), /cleared; in force now: none/)
      assert.match(await ok(['qos', 'get', 'db']), /has no QoS policy/)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})
