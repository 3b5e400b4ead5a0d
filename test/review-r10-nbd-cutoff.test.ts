// Review r10 of commit 5cff52e (setTls turning TLS on ends the connections accepted in clear that
// are still in their handshake): a clear session whose NBD_OPT_GO or NBD_OPT_EXPORT_NAME is claiming
// its export when TLS is turned on is ended, is served nothing, and lets go of the export's writer;
// a session secured with TLS in the middle of its own handshake is not touched.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { NbdClient, OPT_EXPORT_NAME, OPT_GO, OPT_STARTTLS, REP_ACK, infoRequestData } from './support/nbd-client.js'
import { until } from './support/wait.js'

const pskKey = randomBytes(32).toString('hex')
let g: GalleonFS

before(async () => {
  g = await GalleonFS.open({ inMemory: true })
  await g.createVolume({ name: 'disk', sizeBytes: '1M' })
})
after(async () => { await g?.close() })

/** Holds the NBD server's claims of a writer (mounts.openVolumeFile) until released. */
function holdClaims (): { hit: Promise<void>, release: () => void, restore: () => void } {
  const mounts = g.mounts as unknown as { openVolumeFile: (...args: unknown[]) => Promise<unknown> }
  const original = mounts.openVolumeFile
  let hit!: () => void
  let release!: () => void
  const hitPromise = new Promise<void>((resolve) => { hit = resolve })
  const held = new Promise<void>((resolve) => { release = resolve })
  mounts.openVolumeFile = async (...args: unknown[]) => {
    hit()
    await held
    return await original.apply(g.mounts, args)
  }
  return { hit: hitPromise, release, restore: () => { delete (mounts as { openVolumeFile?: unknown }).openVolumeFile } }
}

/** Whether the volume's writer's place is free: a read-write mount (refused while an NBD client may write) is taken; it is let go again. */
async function writerFree (): Promise<boolean> {
  try {
    await g.mounts.mountVolume('disk', '/mnt/r10-writer-check')
  } catch (err) {
    if ((err as { code?: string }).code === 'BUSY') return false
    throw err
  }
  await g.mounts.unmountVolume('/mnt/r10-writer-check')
  return true
}

describe('review r10: setTls cut-off of clear sessions claiming an export', () => {
  for (const option of ['NBD_OPT_GO', 'NBD_OPT_EXPORT_NAME'] as const) {
    it(`a clear session whose ${option} is claiming the writer is ended, served nothing, and lets the writer go`, { timeout: 30_000 }, async () => {
      const server = await NbdServer.listen(g, { port: 0 })
      assert.equal(await writerFree(), true, 'nobody holds the writer before')
      const claims = holdClaims()
      try {
        const client = await NbdClient.connect(server.port)
        await client.hello()
        if (option === 'NBD_OPT_GO') client.option(OPT_GO, infoRequestData('disk'))
        else client.option(OPT_EXPORT_NAME, Buffer.from('disk'))
        await claims.hit
        server.setTls({ psk: { alice: pskKey } })
        claims.release()
        claims.restore()
        assert.equal(await client.closedByServer(), true, 'the clear session is ended')
        // Nothing of the export was told: the read of any reply finds the connection closed.
        assert.equal(await client.read(1, 200), undefined, 'no option reply and no export flags went out')
        await until('the session let the writer go', writerFree, 10_000)
        await until('the connection is gone', () => server.connections === 0, 10_000)
      } finally {
        claims.release()
        claims.restore()
        await server.close()
      }
    })
  }

  it('a TLS session in the middle of its handshake is not cut off when TLS is turned on again', { timeout: 30_000 }, async () => {
    const server = await NbdServer.listen(g, { port: 0, tls: { psk: { alice: pskKey } } })
    try {
      const client = await NbdClient.connect(server.port)
      await client.hello()
      client.option(OPT_STARTTLS)
      const ack = await client.optionReply()
      assert.equal(ack.type, REP_ACK)
      // Credentials replaced while the session is still in its handshake (a FORCEDTLS one).
      server.setTls({ psk: { alice: pskKey } })
      const secured = await client.startTls({ pskCallback: () => ({ identity: 'alice', psk: Buffer.from(pskKey, 'hex') }), checkServerIdentity: () => undefined })
      const { flags } = await secured.go('disk')
      assert.equal(flags & (1 << 1), 0, 'served writable over TLS')
      secured.socket.destroy()
    } finally {
      await server.close()
    }
  })
})
