// Review r71 of `galleonfs audit query` (d13): an entry's fields hold what a caller passed, as far
// as it goes (a name refused for its characters is recorded as given, up to 256 of them), and the
// table printed them raw. A volume name holding a newline and terminal escape sequences, refused
// by the daemon, then forged a row of the table, and its escapes reached the operator's terminal.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, startDaemonProcess } from './support/daemon.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r71-audit-cli-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('review r71: audit query output', () => {
  it('prints the control characters of an entry escaped, one line per entry', async () => {
    const storage = join(root, 'node')
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage], { cwd: root })
    try {
      const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
      const forged = 'x\n9999  2026-01-01T00:00:00.000Z  root  deleteVolume  volume:default/db  ok\x1b]0;owned\x07\x1b[2J\x9b31m'
      const response = await fetch(`http://${daemon.address}/v1/volumes`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: forged, sizeBytes: 4 << 20 })
      })
      assert.equal(response.status, 400)
      const entries = JSON.parse((await runCli(daemon.address, ['--json', 'audit', 'query'], { cwd: root })).stdout) as Array<{ object: string }>
      // The JSON answer keeps the entry as recorded.
      assert.ok(entries.some((e) => e.object.includes('\x1b]0;owned')))
      const table = await runCli(daemon.address, ['audit', 'query'], { cwd: root })
      assert.equal(table.code, 0, table.stderr)
      assert.doesNotMatch(table.stdout, /[\x00-\x09\x0b-\x1f\x7f-\x9f]/, 'no control character but the line ends')
      assert.equal(table.stdout.trimEnd().split('\n').length, entries.length + 1, 'a header and one line per entry')
      assert.match(table.stdout, /createVolume\s+volume:default\/x\\n9999 .*\\u001b\]0;owned\\u0007/)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})
