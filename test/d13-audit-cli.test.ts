// `galleonfs audit query|verify|head` and GET /v1/audit, /v1/audit/verify, /v1/audit/head
// against a real daemon process (d13): filters, human and JSON output, exit codes, a head kept
// elsewhere, and the API's token and refusals. A call the daemon refused for its arguments is in
// the answer too.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, startDaemonProcess } from './support/daemon.js'

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-d13-audit-cli-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

interface Entry { seq: number, principal: string, action: string, object: string, result: string, code?: string }

describe('audit commands', () => {
  it('query filters the log, verify checks it (also against a saved head), head prints what to save', async () => {
    const storage = join(root, 'node')
    const daemon = await startDaemonProcess(['--ipc-address', '127.0.0.1:0', '--storage-path', storage], { cwd: root })
    const cli = async (args: string[], env?: Record<string, string>): Promise<{ code: number, stdout: string, stderr: string }> => await runCli(daemon.address, args, { cwd: root, ...(env === undefined ? {} : { env }) })
    const ok = async (args: string[], env?: Record<string, string>): Promise<string> => {
      const result = await cli(args, env)
      assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    try {
      const startedAt = Date.now()
      await ok(['volume', 'create', '-n', 'db', '-s', '4M', '-c', 'fast-local-ssd'])
      await ok(['snapshot', 'create', 'db', 'nightly'])
      // Refused by the library for its argument (1 KiB is no multiple of the block size): on the record.
      assert.equal((await cli(['volume', 'expand', 'db', '1K'])).code, 1)

      const table = await ok(['audit', 'query'])
      assert.match(table, /^SEQ\s+TIME\s+PRINCIPAL\s+ACTION\s+OBJECT\s+RESULT\s+DETAILS$/m)
      assert.match(table, /application\s+createVolume\s+volume:default\/db\s+ok/)
      assert.match(table, /application\s+createSnapshot\s+snapshot:default\/db@nightly\s+ok/)
      assert.match(table, /application\s+expandVolume\s+volume:default\/db\s+failed INVALID_ARGUMENT/)

      const json = async (args: string[], env?: Record<string, string>): Promise<Entry[]> => JSON.parse(await ok(['--json', 'audit', 'query', ...args], env)) as Entry[]
      assert.deepEqual((await json(['--action', 'createVolume'])).map((e) => [e.principal, e.object, e.result]), [['application', 'volume:default/db', 'ok']])
      assert.deepEqual((await json(['--result', 'failed'])).map((e) => [e.action, e.code]), [['expandVolume', 'INVALID_ARGUMENT']])
      assert.deepEqual((await json(['--object', 'snapshot:default/*'])).map((e) => e.action), ['createSnapshot'])
      const all = await json([])
      assert.ok(all.length >= 3)
      assert.deepEqual(await json(['--limit', '1']), all.slice(0, 1))
      assert.deepEqual(await json(['--principal', 'nobody']), [])
      // Times: a while ago, ISO-8601 and epoch milliseconds.
      assert.deepEqual(await json(['--from', '1h']), all)
      assert.deepEqual(await json(['--from', new Date(startedAt - 60_000).toISOString(), '--to', String(Date.now() + 60_000)]), all)
      assert.deepEqual(await json(['--to', String(startedAt - 60_000)]), [])
      assert.equal(await ok(['audit', 'query', '--to', String(startedAt - 60_000)]), 'no audit entries match\n')
      // A time without a zone is the CLI's local time, whatever the daemon's zone: a minute before
      // the start as a clock 14 hours ahead of UTC shows it (read as UTC, as the daemon would,
      // it lies 14 hours in the future and matches nothing).
      const kiritimati = new Date(startedAt - 60_000 + 14 * 3_600_000).toISOString().slice(0, 19)
      assert.deepEqual(await json(['--from', kiritimati], { TZ: 'Pacific/Kiritimati' }), all)
      assert.deepEqual(await json(['--to', kiritimati], { TZ: 'Pacific/Kiritimati' }), [])
      // The command line is checked before anything is sent (exit 2).
      assert.equal((await cli(['audit', 'query', '--from', 'yesterday'])).code, 2)
      // Not ISO-8601, or no such day: refused here, not read by the daemon's loose date parser.
      assert.equal((await cli(['audit', 'query', '--from', 'Jan 31 2026'])).code, 2)
      assert.equal((await cli(['audit', 'query', '--from', '2026-02-30'])).code, 2)
      assert.equal((await cli(['audit', 'query', '--to', '2026-01-31T24:30'])).code, 2)
      assert.equal((await cli(['audit', 'query', '--limit', '0'])).code, 2)
      assert.equal((await cli(['audit', 'query', '--result', 'maybe'])).code, 2)
      assert.equal((await cli(['audit', 'verify', '--head', 'abc'])).code, 2)

      // head, then verify: alone, and against the head saved.
      const head = (await ok(['audit', 'head'])).trim()
      assert.match(head, /^\d+:[0-9a-f]{64}$/)
      assert.deepEqual(JSON.parse(await ok(['--json', 'audit', 'head'])), { seq: Number(head.split(':')[0]), hash: head.split(':')[1] })
      assert.match(await ok(['audit', 'verify']), new RegExp(`^audit log intact: \\d+ entries, head ${head}\\n$`))
      assert.match(await ok(['audit', 'verify', '--head', head]), /^audit log intact/)
      const report = JSON.parse(await ok(['--json', 'audit', 'verify'])) as { ok: boolean, problems: unknown[] }
      assert.equal(report.ok, true)
      assert.deepEqual(report.problems, [])
      // A head that does not match the log (as after the log was rebuilt): reported, exit 1.
      const [seq] = head.split(':')
      const forged = await cli(['audit', 'verify', '--head', `${seq as string}:${'0'.repeat(64)}`])
      assert.equal(forged.code, 1, forged.stderr)
      assert.match(forged.stdout, /^audit log NOT intact: \d+ problem\(s\)/)
      assert.match(forged.stderr, /failed verification/)
      const forgedJson = await cli(['--json', 'audit', 'verify', '--head', `${seq as string}:${'0'.repeat(64)}`])
      assert.equal(forgedJson.code, 1)
      assert.equal((JSON.parse(forgedJson.stdout) as { ok: boolean }).ok, false)

      // The API itself: the same token as every route; a filter it does not know, or one given
      // twice, is refused naming it rather than ignored.
      const base = `http://${daemon.address}`
      const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
      const get = async (path: string, auth = true): Promise<{ status: number, error?: { code: string, message: string } }> => {
        const response = await fetch(base + path, { headers: auth ? { authorization: `Bearer ${token}` } : {} })
        return { status: response.status, error: (await response.json() as { error?: { code: string, message: string } }).error }
      }
      assert.equal((await get('/v1/audit', false)).status, 401)
      assert.equal((await get('/v1/audit/verify', false)).status, 401)
      const misspelt = await get('/v1/audit?princpal=bob')
      assert.equal(misspelt.status, 400)
      assert.equal(misspelt.error?.code, 'INVALID_ARGUMENT')
      assert.match(String(misspelt.error?.message), /princpal/)
      assert.equal((await get('/v1/audit?action=a&action=b')).status, 400)
      assert.equal((await get('/v1/audit?limit=many')).status, 400)
      assert.equal((await get('/v1/audit/verify?seq=1')).status, 400)
      assert.equal((await get('/v1/audit/verify?sek=1')).status, 400)
      assert.equal((await get('/v1/audit/nothing')).status, 404)
      assert.equal((await get(`/v1/audit?action=createVolume&from=${startedAt - 60_000}`)).status, 200)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })
})
