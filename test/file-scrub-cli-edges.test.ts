// Edge cases of the VolumeFile API, of scrub and checksum reporting, and of the example daemon and
// CLI: each test here failed before the fix it names.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ENTRY } from './support/daemon.js'
import { ConfigError, readConfigFile } from '../examples/daemon-config.js'
import { GalleonFS, GalleonError } from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { MemoryLevel } from 'memory-level'
import { scriptArgs } from './support/child-script.js'

const pattern = (seed: number, length: number): Uint8Array => {
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (seed * 31 + i * 7) & 0xff
  return out
}

describe('scrub', () => {
  it('reports a block the store finds damaged (CORRUPTION) once: one event, one checksum error', async () => {
    const store = new MemoryBlockStore()
    const g = await GalleonFS.open({ metadata: new MemoryLevel() as never, blockStore: store })
    try {
      const vol = await g.createVolume({ name: 'v', sizeBytes: '64K' })
      for (let i = 0; i < 4; i++) await g.writeBlock(vol, i, pattern(i, 4096))
      // A store that checks its own records (the file store) reports a damaged record header as CORRUPTION.
      const get = store.get.bind(store)
      store.get = (async (address, options) => {
        if (address.index === 2) throw new GalleonError('CORRUPTION', 'damaged record header (test)')
        return await get(address, options)
      }) as typeof store.get
      const reasons: string[] = []
      g.on('checksum:mismatch', (event) => reasons.push(event.reason))
      const report = await g.scrub(vol)
      assert.equal(report.blocksChecked, 4)
      assert.deepEqual(report.badBlocks.map((b) => [b.index, b.code]), [[2, 'CORRUPTION']])
      assert.equal(reasons.length, 1, `one event for one damaged block, got ${JSON.stringify(reasons)}`)
      assert.match(reasons[0]!, /damaged record header/)
      assert.equal((await g.getVolumeMetrics(vol)).checksumErrors, 1)
    } finally {
      await g.close()
    }
  })

  it('a scrub running when the instance closes ends with NOT_OPEN, not a report of every remaining block as bad', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    const vol = await g.createVolume({ name: 'v', sizeBytes: '16M' })
    await g.write(vol, 0, pattern(3, 16 << 20))
    const reasons: string[] = []
    g.on('checksum:mismatch', (event) => reasons.push(event.reason))
    const completed: number[] = []
    g.on('scrub:completed', (event) => completed.push(event.badBlocks))
    const scrub = g.scrub(vol).then((report) => `report with ${report.badBlocks.length} bad of ${report.blocksChecked}`, (err: { code?: string }) => `error:${err.code ?? String(err)}`)
    await new Promise((resolve) => setImmediate(resolve))
    await g.close()
    const outcome = await scrub
    assert.match(outcome, /^(report with 0 bad of 4096|error:NOT_OPEN)$/)
    assert.deepEqual(reasons, [])
    assert.ok(completed.every((bad) => bad === 0), `scrub:completed reported ${JSON.stringify(completed)} bad blocks`)
  })
})

describe('VolumeFile', () => {
  it('seek refuses a whence that only an Object.prototype member matches, and positions past the safe integers', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const file = await g.mounts.openVolumeFile('v')
      file.seek(100)
      for (const whence of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) {
        assert.throws(() => file.seek(0, whence as never), { code: 'INVALID_ARGUMENT' }, `whence ${whence}`)
        assert.equal(file.position, 100, `whence ${whence} left the position alone`)
      }
      assert.throws(() => file.seek(Number.MAX_SAFE_INTEGER, 'cur'), { code: 'INVALID_ARGUMENT' })
      assert.throws(() => file.seek(Number.MAX_SAFE_INTEGER, 'end'), { code: 'INVALID_ARGUMENT' })
      assert.equal(file.position, 100)
      // The largest position there is: reads there find the end, as past the end anywhere.
      assert.equal(file.seek(Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER)
      assert.equal(await file.read(new Uint8Array(4)), 0)
      await file.close()
    } finally {
      await g.close()
    }
  })

  it('createReadStream refuses an end before its start, like fs.createReadStream', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      const file = await g.mounts.openVolumeFile('v', { readOnly: true })
      assert.throws(() => file.createReadStream({ start: 10, end: 5 }), { code: 'INVALID_ARGUMENT' })
      // end is inclusive: start === end is one byte.
      const chunks: Buffer[] = []
      for await (const chunk of file.createReadStream({ start: 7, end: 7 })) chunks.push(chunk as Buffer)
      assert.equal(Buffer.concat(chunks).byteLength, 1)
      await file.close()
    } finally {
      await g.close()
    }
  })
})

/** A stand-in daemon: records each request and answers it with what `answer` gives (200 JSON). */
async function fakeDaemon (answer: (method: string, path: string, body: unknown) => unknown): Promise<{ address: string, requests: Array<{ method: string, path: string, body: unknown }>, server: Server }> {
  const requests: Array<{ method: string, path: string, body: unknown }> = []
  const server = createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      const body = text === '' ? undefined : JSON.parse(text) as unknown
      const entry = { method: request.method ?? '', path: request.url ?? '', body }
      requests.push(entry)
      const out = JSON.stringify(answer(entry.method, entry.path, body) ?? {})
      response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out), 'x-galleonfs': '1' })
      response.end(out)
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as { port: number }).port
  return { address: `127.0.0.1:${port}`, requests, server }
}

/** Runs the `galleonfs` CLI in `cwd`; resolves to its exit code and output. */
async function galleonfs (args: string[], cwd: string): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    const env = { ...process.env }
    delete env.GALLEONFS_DAEMON_ADDRESS
    delete env.GALLEONFS_TOKEN
    execFile(process.execPath, [...scriptArgs(ENTRY), ...args], { cwd, env }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, stdout, stderr })
    })
  })
}

describe('CLI command line', () => {
  let dir: string
  let daemon: Awaited<ReturnType<typeof fakeDaemon>>
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'galleon-cli-edges-'))
    daemon = await fakeDaemon((method, path, body) => {
      if (path.endsWith('/mount')) return { path: (body as { path?: string }).path ?? '/x', readOnly: false }
      if (path.startsWith('/v1/pools/')) return { name: 'p', capacityBytes: 1, overcommitRatio: 1, limitBytes: 1, provisionedBytes: 0, allocatedBytes: 0, freeBytes: 1, volumes: 0, nodes: [], nodeSelector: { labels: {}, zones: [] }, description: '' }
      if (path === '/v1/backup-policies') return { name: 'p', nextRunAt: null }
      return method === 'GET' ? [] : {}
    })
  })
  after(async () => {
    daemon.server.close()
    await rm(dir, { recursive: true, force: true })
  })
  const cli = async (args: string[], cwd = dir): Promise<{ code: number, stdout: string, stderr: string }> => await galleonfs(['--daemon-address', daemon.address, '--token', 't', ...args], cwd)

  it('backup policy create refuses retention counts that are not whole numbers (exit 2), instead of sending null', async () => {
    for (const bad of ['abc', '-1', '1.5', '']) {
      const before = daemon.requests.length
      const run = await cli(['backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--daily', bad, '--weekly', '4'])
      assert.equal(run.code, 2, `--daily ${JSON.stringify(bad)}: ${run.stderr}`)
      assert.match(run.stderr, /--daily/)
      assert.equal(daemon.requests.length, before, 'nothing was sent to the daemon')
    }
    const good = await cli(['--json', 'backup', 'policy', 'create', 'nightly', '--schedule', '0 2 * * *', '--volumes', 'data', '--daily', '7', '--monthly', '0'])
    assert.equal(good.code, 0, good.stderr)
    assert.deepEqual((daemon.requests.at(-1)?.body as { retention?: unknown }).retention, { daily: 7, monthly: 0 })
  })

  it('pool update refuses an overcommit ratio that is not a number of at least 1 (exit 2), as pool create does', async () => {
    for (const bad of ['abc', '0.5', '']) {
      const before = daemon.requests.length
      const run = await cli(['pool', 'update', 'p', '--overcommit', bad])
      assert.equal(run.code, 2, `--overcommit ${JSON.stringify(bad)}: ${run.stderr}`)
      assert.equal(daemon.requests.length, before, 'nothing was sent to the daemon')
    }
    const good = await cli(['pool', 'update', 'p', '--overcommit', '2'])
    assert.equal(good.code, 0, good.stderr)
    assert.deepEqual(daemon.requests.at(-1)?.body, { overcommitRatio: 2 })
  })

  it('a malformed --daemon-address is a command-line error: exit 2, one line, no stack trace', async () => {
    const run = await galleonfs(['--daemon-address', 'not an address', 'volume', 'list'], dir)
    assert.equal(run.code, 2, run.stderr)
    assert.match(run.stderr, /daemon-address/)
    assert.doesNotMatch(run.stderr, /\n\s+at /)
  })

  it('volume mount sends a relative mount point resolved against the CLI\'s working directory', async () => {
    const cwd = join(dir, 'work')
    await mkdir(cwd, { recursive: true })
    const run = await cli(['volume', 'mount', 'v', 'mnt/v'], cwd)
    assert.equal(run.code, 0, run.stderr)
    assert.equal((daemon.requests.at(-1)?.body as { path?: string }).path, join(cwd, 'mnt/v'))
  })
})

describe('daemon configuration file', () => {
  it('names an unknown section or key that happens to be an Object.prototype member, with what is allowed', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-config-edges-'))
    try {
      const cases: Array<[string, RegExp]> = [
        ['[daemon]\ntoString = "x"\n', /unknown key toString in \[daemon\]; allowed: storage_path/],
        ['[daemon]\nconstructor = 1\n', /unknown key constructor in \[daemon\]; allowed:/],
        ['[constructor]\nname = "x"\n', /unknown section \[constructor\]; sections are \[daemon\]/],
        ['[hasOwnProperty]\nx = 1\n', /unknown section \[hasOwnProperty\]/]
      ]
      for (const [index, [text, expected]] of cases.entries()) {
        const file = join(dir, `c${index}.toml`)
        await writeFile(file, text)
        await assert.rejects(readConfigFile(file), (err: Error) => err instanceof ConfigError && expected.test(err.message), text)
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
