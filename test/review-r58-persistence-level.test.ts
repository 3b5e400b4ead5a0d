// Review r58: `--persistence-level` (`level` in `[persistence]`) took any string, so a typo such as
// "enhancd" started the daemon with only the "not used by this release" warning, where the README
// says a bad value stops it with exit code 2 naming the setting. The seed's four levels are taken.
// Real daemon processes (test/support/daemon.ts).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { ENTRY, startDaemonProcess } from './support/daemon.js'
import { scriptArgs } from './support/child-script.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'review-r58-level-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/**
 * Runs `galleonfs -d ...args`, expecting it to refuse to start; one still running after 30 s (it
 * took the value) is stopped, and its exit is then a SIGTERM's (0), failing the test.
 */
async function daemonExit (args: string[]): Promise<{ code: number | null, log: string }> {
  const child = spawn(process.execPath, [...scriptArgs(ENTRY), '-d', '--ipc-address', '127.0.0.1:0', ...args], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 })
  let log = ''
  child.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  // The log's JSON lines, as their messages (quotes unescaped).
  const messages = log.split('\n').filter((line) => line.startsWith('{')).map((line) => (JSON.parse(line) as { message: string }).message)
  return { code, log: messages.join('\n') }
}

const present = async (path: string): Promise<boolean> => await stat(path).then(() => true, () => false)

describe('review r58: the persistence level is checked', { timeout: 120_000 }, () => {
  it('a misspelt level on the command line or in the file: exit 2 naming the setting, nothing created', async () => {
    const storage = join(root, 'flag')
    const flag = await daemonExit(['--storage-path', storage, '--persistence-level', 'enhancd'])
    assert.equal(flag.code, 2, flag.log)
    assert.match(flag.log, /--persistence-level must be one of basic, enhanced, high, maximum, got "enhancd"/)
    assert.equal(await present(storage), false)

    const config = join(root, 'daemon.toml')
    await writeFile(config, '[persistence]\nlevel = "Hihg"\n')
    const file = await daemonExit(['--storage-path', join(root, 'file'), '--config', config])
    assert.equal(file.code, 2, file.log)
    assert.match(file.log, /level in \[persistence\] must be one of basic, enhanced, high, maximum, got "Hihg"/)
  })

  it('each of the seed\'s levels starts the daemon', async () => {
    for (const level of ['basic', 'enhanced', 'high', 'maximum']) {
      const daemon = await startDaemonProcess(['--storage-path', join(root, level), '--ipc-address', '127.0.0.1:0', '--persistence-level', level], { cwd: root })
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0, daemon.logs.join('\n'))
    }
  })
})
