// Key providers that reach a KMS outside the process: a real command (test/fixtures/kms-command.mjs,
// run as a child process for every wrap and unwrap) and a real HTTP endpoint on loopback.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern, commandKeyProvider, httpKeyProvider } from '../src/index.js'

const KMS_COMMAND = fileURLToPath(new URL('./fixtures/kms-command.mjs', import.meta.url))
const ENCRYPTED = { storageClass: 'encrypted-storage', replicas: 1 } as const
const BLOCK = 4096

let root: string
let counter = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-kms-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const fresh = (): string => join(root, `t${++counter}`)

const block = (fill: number): Uint8Array => new Uint8Array(BLOCK).fill(fill)

/** An HTTP KMS speaking GalleonFS's protocol, with its own key, a token, and a switch to fail. */
async function httpKms (token: string): Promise<{ server: Server, url: string, calls: string[], setDown: (down: boolean) => void }> {
  const key = randomBytes(32)
  const calls: string[] = []
  let down = false
  const server = createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      const reply = (status: number, body: unknown): void => { response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body)) }
      if (request.headers.authorization !== `Bearer ${token}`) { reply(401, { error: 'bad token' }); return }
      if (down) { reply(503, { error: 'KMS in maintenance' }); return }
      const { operation, keyId, context, data } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, string>
      calls.push(`${operation} ${keyId} ${context}`)
      const input = Buffer.from(data as string, 'base64')
      const aad = Buffer.from(`${keyId}\n${context}`)
      try {
        if (operation === 'wrap') {
          const nonce = randomBytes(12)
          const cipher = createCipheriv('aes-256-gcm', key, nonce).setAAD(aad)
          const body = Buffer.concat([cipher.update(input), cipher.final()])
          reply(200, { data: Buffer.concat([nonce, body, cipher.getAuthTag()]).toString('base64') })
        } else {
          const decipher = createDecipheriv('aes-256-gcm', key, input.subarray(0, 12)).setAAD(aad)
          decipher.setAuthTag(input.subarray(input.length - 16))
          reply(200, { data: Buffer.concat([decipher.update(input.subarray(12, input.length - 16)), decipher.final()]).toString('base64') })
        }
      } catch {
        reply(400, { error: 'cannot unwrap' })
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address() as { port: number }
  return { server, url: `http://127.0.0.1:${address.port}/kms`, calls, setDown: (value) => { down = value } }
}

describe('KMS key providers', () => {
  it('command: every data key is wrapped and unwrapped by the command; data survives a reopen; failures are named', async () => {
    const dir = fresh()
    const keyFile = join(root, `kms-${counter}.key`)
    const log = join(root, `kms-${counter}.log`)
    await writeFile(keyFile, randomBytes(32).toString('hex'))
    process.env.KMS_KEY_FILE = keyFile
    process.env.KMS_LOG = log
    try {
      const provider = (): ReturnType<typeof commandKeyProvider> => commandKeyProvider({ keyId: 'kek-a', command: process.execPath, args: [KMS_COMMAND] })
      let g = await GalleonFS.open({ storagePath: dir, keyProvider: provider() })
      const vol = await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock(vol, 3, block(7), WriteConcern.WriteDurable)
      await g.close()
      assert.match(await readFile(log, 'utf8'), new RegExp(`^wrap kek-a volume:${vol.id}:dek:1$`, 'm'))
      g = await GalleonFS.open({ storagePath: dir, keyProvider: provider() })
      try {
        assert.deepEqual(await g.readBlock('secret', 3), block(7))
        assert.equal((await g.getVolumeEncryption('secret')).kekId, 'kek-a')
      } finally {
        await g.close()
      }
      assert.match(await readFile(log, 'utf8'), new RegExp(`^unwrap kek-a volume:${vol.id}:dek:1$`, 'm'))
      // The KMS refusing: the volume is unavailable with the KMS's own words; the instance is fine.
      process.env.KMS_FAIL = 'key kek-a is disabled'
      g = await GalleonFS.open({ storagePath: dir, keyProvider: provider() })
      try {
        await assert.rejects(g.readBlock('secret', 3), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /exited with status 3: key kek-a is disabled/.test(err.message))
        await assert.rejects(g.createVolume({ name: 'more', sizeBytes: '1M', ...ENCRYPTED }), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && /key kek-a is disabled/.test(err.message))
        await g.createVolume({ name: 'plain', sizeBytes: '1M' })
      } finally {
        await g.close()
      }
    } finally {
      delete process.env.KMS_KEY_FILE
      delete process.env.KMS_LOG
      delete process.env.KMS_FAIL
    }
  })

  it('command: a missing program, a hung one, and garbage output each fail clearly', async () => {
    const missing = commandKeyProvider({ keyId: 'k', command: join(root, 'no-such-kms') })
    await assert.rejects(missing.wrap(new Uint8Array(32), 'ctx'), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && /could not be started/.test(err.message))
    const hung = commandKeyProvider({ keyId: 'k', command: process.execPath, args: ['-e', 'setTimeout(() => {}, 60000)'], timeoutMs: 300 })
    await assert.rejects(hung.wrap(new Uint8Array(32), 'ctx'), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && /did not answer within 300 ms and was killed/.test(err.message))
    const garbage = commandKeyProvider({ keyId: 'k', command: process.execPath, args: ['-e', 'process.stdout.write("not base64!")'] })
    await assert.rejects(garbage.wrap(new Uint8Array(32), 'ctx'), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && /did not answer with base64/.test(err.message))
    // A shell whose child holds the pipes: the whole process group goes at the timeout.
    const pidFile = join(root, `grandchild-${counter++}.pid`)
    const script = commandKeyProvider({ keyId: 'k', command: '/bin/sh', args: ['-c', `sleep 60 & echo $! > ${pidFile}; wait`], timeoutMs: 500 })
    await assert.rejects(script.wrap(new Uint8Array(32), 'ctx'), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && /did not answer within 500 ms and was killed/.test(err.message))
    const grandchild = Number((await readFile(pidFile, 'utf8')).trim())
    let gone = false
    for (let i = 0; i < 100 && !gone; i++) {
      try { process.kill(grandchild, 0); await new Promise((resolve) => setTimeout(resolve, 20)) } catch { gone = true }
    }
    assert.ok(gone, 'the command\'s own child was killed with it')
    // What a KMS answers is never quoted: for an unwrap it is a plaintext key.
    const key = randomBytes(32)
    const chatty = commandKeyProvider({ keyId: 'k', command: process.execPath, args: ['-e', `process.stdout.write(JSON.stringify({ Plaintext: ${JSON.stringify(key.toString('base64'))} }))`] })
    await assert.rejects(chatty.unwrap(new Uint8Array(60), 'ctx'), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /not plain base64/.test(err.message) && !err.message.includes(key.toString('base64').slice(0, 12)))
    // GalleonFS's own secrets stay out of the program's environment.
    process.env.GALLEONFS_CLUSTER_SECRET = 'a-secret-the-kms-must-not-see'
    try {
      const nosy = commandKeyProvider({ keyId: 'k', command: process.execPath, args: ['-e', 'process.stdout.write(Buffer.from(process.env.GALLEONFS_CLUSTER_SECRET ?? "none").toString("base64"))'] })
      assert.equal(Buffer.from(await nosy.wrap(new Uint8Array(32), 'ctx')).toString(), 'none')
    } finally {
      delete process.env.GALLEONFS_CLUSTER_SECRET
    }
    assert.throws(() => commandKeyProvider({ keyId: '', command: 'x' }), { code: 'INVALID_ARGUMENT', message: /keyId/ })
    assert.throws(() => commandKeyProvider({ keyId: 'k', command: '' }), { code: 'INVALID_ARGUMENT', message: /command/ })
    assert.throws(() => commandKeyProvider({ keyId: 'k', command: 'x', args: [1] as never }), { code: 'INVALID_ARGUMENT', message: /args/ })
    assert.throws(() => commandKeyProvider({ keyId: 'k', command: 'x', timeoutMs: -1 }), { code: 'INVALID_ARGUMENT', message: /timeoutMs/ })
  })

  it('http: a redirect is refused (the body holds a data key); a 200 answer is never quoted in errors', async () => {
    let elsewhere = 0
    const other = createServer((_request, response) => { elsewhere++; response.end('{}') })
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve))
    const key = randomBytes(32).toString('base64')
    const redirecting = createServer((request, response) => {
      if (request.url === '/leaky') { response.writeHead(200).end(`not json, but the key ${key}`); return }
      response.writeHead(307, { location: `http://127.0.0.1:${(other.address() as { port: number }).port}/kms` }).end()
    })
    await new Promise<void>((resolve) => redirecting.listen(0, '127.0.0.1', resolve))
    try {
      const base = `http://127.0.0.1:${(redirecting.address() as { port: number }).port}`
      await assert.rejects(httpKeyProvider({ keyId: 'k', url: `${base}/kms?api_key=SECRET` }).wrap(new Uint8Array(32), 'ctx'), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && !err.message.includes('SECRET'))
      assert.equal(elsewhere, 0, 'nothing was sent to where the redirect pointed')
      await assert.rejects(httpKeyProvider({ keyId: 'k', url: `${base}/leaky` }).unwrap(new Uint8Array(60), 'ctx'), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /not JSON/.test(err.message) && !err.message.includes(key.slice(0, 12)))
    } finally {
      redirecting.close()
      other.close()
    }
  })

  it('http: keys wrapped by an HTTP KMS with a token; the KMS down or a wrong token fail clearly', async () => {
    const kms = await httpKms('s3cret')
    try {
      const dir = fresh()
      let g = await GalleonFS.open({ storagePath: dir, keyProvider: httpKeyProvider({ keyId: 'kek-h', url: kms.url, token: 's3cret' }) })
      const vol = await g.createVolume({ name: 'secret', sizeBytes: '1M', ...ENCRYPTED })
      await g.writeBlock(vol, 0, block(9), WriteConcern.WriteDurable)
      await g.close()
      assert.ok(kms.calls.includes(`wrap kek-h volume:${vol.id}:dek:1`))
      g = await GalleonFS.open({ storagePath: dir, keyProvider: httpKeyProvider({ keyId: 'kek-h', url: kms.url, token: 's3cret' }) })
      try {
        assert.deepEqual(await g.readBlock('secret', 0), block(9))
      } finally {
        await g.close()
      }
      kms.setDown(true)
      g = await GalleonFS.open({ storagePath: dir, keyProvider: httpKeyProvider({ keyId: 'kek-h', url: kms.url, token: 's3cret' }) })
      try {
        await assert.rejects(g.readBlock('secret', 0), (err: Error & { code?: string }) => err.code === 'DECRYPTION_FAILED' && /answered 503: .*maintenance/.test(err.message))
      } finally {
        await g.close()
      }
      kms.setDown(false)
      const wrongToken = httpKeyProvider({ keyId: 'kek-h', url: kms.url, token: 'guess' })
      await assert.rejects(wrongToken.wrap(new Uint8Array(32), 'ctx'), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && /answered 401/.test(err.message))
      const nobody = httpKeyProvider({ keyId: 'k', url: 'http://127.0.0.1:1/kms', timeoutMs: 2000 })
      await assert.rejects(nobody.wrap(new Uint8Array(32), 'ctx'), (err: Error & { code?: string }) => err.code === 'BACKEND_UNAVAILABLE' && /did not answer/.test(err.message))
      assert.throws(() => httpKeyProvider({ keyId: 'k', url: 'ftp://kms' }), { code: 'INVALID_ARGUMENT', message: /http: or https:/ })
      assert.throws(() => httpKeyProvider({ keyId: 'k', url: 'https://user:pw@kms.example/wrap' }), { code: 'INVALID_ARGUMENT', message: /credentials/ })
      assert.throws(() => httpKeyProvider({ keyId: 'k', url: 'http://kms.example/wrap' }), { code: 'INVALID_ARGUMENT', message: /plain http to another host/ })
      assert.equal(httpKeyProvider({ keyId: 'k', url: 'http://kms.example/wrap', insecure: true }).name, 'external')
      assert.throws(() => httpKeyProvider({ keyId: 'k', url: 'not a url' }), { code: 'INVALID_ARGUMENT', message: /url/ })
    } finally {
      kms.server.close()
    }
  })
})
