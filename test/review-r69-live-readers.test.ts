// Review r69: readers of a volume's live data (a read-only VolumeFile opened straight on it, an NBD
// client of a read-only export: a ReadOnlyMany volume, or a second client when the writer's place
// is taken) hold off a plain deleteVolume, as a read-only mount does, and a restoreBackup over the
// volume; a forced deletion goes on and their reads fail. A revert goes on under them, as under a
// read-only mount, and they read the reverted bytes.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { AccessMode, GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { CMD_READ, NbdClient } from './support/nbd-client.js'

const exec = promisify(execFile)
const nbdinfoMissing = ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, 'nbdinfo'))) ? undefined : 'nbdinfo is not installed (see .ci/run)'
/** NBD_FLAG_READ_ONLY among the transmission flags. */
const TFLAG_READ_ONLY = 2
const MiB = 1 << 20
const clientTimeouts = { closeTimeoutMs: 3_000 }

let root: string
let g: GalleonFS
let server: NbdServer

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-r69-readers-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage'), backupTarget: join(root, 'backups') })
  server = await NbdServer.listen(g, { host: '127.0.0.1', port: 0 })
})
after(async () => {
  await server?.close()
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

/** The error a call rejects with, as `CODE: message`. */
async function refusal (call: Promise<unknown>): Promise<string> {
  return await call.then(() => 'resolved', (err: Error & { code?: string }) => `${err.code ?? ''}: ${err.message}`)
}

/** Retries `call` while it is refused with BUSY (the server lets a session's file go once it sees the disconnect). */
async function onceFree (call: () => Promise<unknown>): Promise<void> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const outcome = await refusal(call())
    if (outcome === 'resolved') return
    assert.match(outcome, /^BUSY: /)
    assert.ok(Date.now() < deadline, `still refused after the client went: ${outcome}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** A raw NBD client connected (NBD_OPT_GO) to `name`, with its transmission flags. */
async function connected (name: string, structured = false): Promise<{ client: NbdClient, flags: number }> {
  const client = await NbdClient.connect(server.port, clientTimeouts)
  await client.hello()
  if (structured) await client.structuredReplies()
  const { flags } = await client.go(name)
  return { client, flags }
}

const READER_REFUSAL = /^BUSY: volume (\S+) has 1 reader\(s\): files open on it read-only \(openVolumeFile\) or NBD clients connected read-only; close or disconnect them first, or pass \{ force: true \}/

describe('readers of a volume\'s live data and deleteVolume', () => {
  it('a read-only VolumeFile on the volume refuses a plain deleteVolume (BUSY naming it and what to do) and goes on reading; closed, the deletion goes on', async () => {
    await g.createVolume({ name: 'file-read', sizeBytes: 1 * MiB })
    await g.write('file-read', 0, new Uint8Array(4096).fill(3))
    const file = await g.mounts.openVolumeFile('file-read', { readOnly: true })
    assert.match(await refusal(g.deleteVolume('file-read')), READER_REFUSAL)
    const buffer = new Uint8Array(4096)
    assert.equal(await file.pread(buffer, 0), 4096)
    assert.ok(buffer.every((b) => b === 3), 'the reader still reads the volume')
    await file.close()
    await g.deleteVolume('file-read')
    await assert.rejects(g.getVolume('file-read'), { code: 'VOLUME_NOT_FOUND' })
  })

  it('forced, deleteVolume deletes under a read-only VolumeFile: its next read fails with VOLUME_NOT_FOUND naming the volume, and close() succeeds', async () => {
    await g.createVolume({ name: 'file-forced', sizeBytes: 1 * MiB })
    const file = await g.mounts.openVolumeFile('file-forced', { readOnly: true })
    await g.deleteVolume('file-forced', { force: true })
    await assert.rejects(g.getVolume('file-forced'), { code: 'VOLUME_NOT_FOUND' })
    await assert.rejects(file.pread(new Uint8Array(4096), 0), (err: Error & { code?: string }) => err.code === 'VOLUME_NOT_FOUND' && /^volume default\/file-forced was deleted while this file or mount was open on it/.test(err.message))
    await file.close()
  })

  it('an NBD client of a ReadOnlyMany volume (a read-only export) refuses a plain deleteVolume; once it disconnects the deletion goes on', async () => {
    await g.createVolume({ name: 'shelf', sizeBytes: 1 * MiB, accessModes: [AccessMode.ReadOnlyMany] })
    const { client, flags } = await connected('shelf')
    assert.ok((flags & TFLAG_READ_ONLY) !== 0, 'served read-only')
    assert.match(await refusal(g.deleteVolume('shelf')), READER_REFUSAL)
    assert.ok((await client.readBlock(0, 4096))?.every((b) => b === 0), 'the client goes on reading')
    client.socket.destroy()
    await onceFree(async () => await g.deleteVolume('shelf'))
    await assert.rejects(g.getVolume('shelf'), { code: 'VOLUME_NOT_FOUND' })
  })

  it('an NBD client served read-only because a read-write mount holds the ReadWriteOnce volume\'s writer place is a reader too; forced, its next read gets an error saying the export\'s volume was deleted', async () => {
    await g.createVolume({ name: 'second', sizeBytes: 1 * MiB })
    const mountId = await g.mounts.mountVolume('second', join(root, 'second-rw'))
    const { client, flags } = await connected('second', true)
    assert.ok((flags & TFLAG_READ_ONLY) !== 0, 'the writer\'s place is taken: served read-only')
    await g.mounts.unmountVolume(mountId)
    assert.match(await refusal(g.deleteVolume('second')), READER_REFUSAL)
    await g.deleteVolume('second', { force: true })
    client.request(CMD_READ, 7, 0, 4096)
    const chunk = await client.chunk()
    assert.notEqual(chunk.error, 0, 'after a forced delete its reads fail')
    const message = chunk.body.subarray(6, 6 + chunk.body.readUInt16BE(4)).toString()
    assert.match(message, /^export second is gone: its volume was deleted \(deleteVolume with \{ force: true \}\) while this client was connected; disconnect/, message)
    client.socket.destroy()
  })

  it('nbdinfo (NBD_OPT_INFO) of a read-only export holds nothing once it has its answer', { skip: nbdinfoMissing }, async () => {
    await g.createVolume({ name: 'asked', sizeBytes: 1 * MiB, accessModes: [AccessMode.ReadOnlyMany] })
    const info = JSON.parse((await exec('nbdinfo', ['--json', `nbd://127.0.0.1:${server.port}/asked`])).stdout) as { exports: Array<{ is_read_only: boolean }> }
    assert.equal(info.exports[0]?.is_read_only, true)
    await g.deleteVolume('asked')
  })
})

describe('readers of a volume\'s live data and the calls that replace its data', () => {
  it('restoreBackup over a volume is refused (BUSY) while a read-only VolumeFile or an NBD client reads it, as while it is mounted read-only', async () => {
    await g.createVolume({ name: 'restored', sizeBytes: 1 * MiB })
    await g.write('restored', 0, new Uint8Array(4096).fill(1))
    const backup = await g.createBackup('restored', { strategy: 'full' })
    await g.write('restored', 0, new Uint8Array(4096).fill(2))
    const file = await g.mounts.openVolumeFile('restored', { readOnly: true })
    assert.match(await refusal(g.restoreBackup(backup.id, { volume: 'restored' })), /^BUSY: volume restored has 1 reader\(s\): files open on it read-only/)
    await file.close()
    const mountId = await g.mounts.mountVolume('restored', join(root, 'restored-rw'))
    const { client } = await connected('restored')
    await g.mounts.unmountVolume(mountId)
    assert.match(await refusal(g.restoreBackup(backup.id, { volume: 'restored' })), /^BUSY: volume restored has 1 reader\(s\): .*NBD clients connected read-only/)
    assert.ok((await g.read('restored', 0, 4096)).every((b) => b === 2), 'nothing was restored')
    client.socket.destroy()
    await onceFree(async () => await g.restoreBackup(backup.id, { volume: 'restored' }))
    assert.ok((await g.read('restored', 0, 4096)).every((b) => b === 1), 'restored once the readers are gone')
  })

  it('restoreSnapshot reverts a volume under a read-only VolumeFile, as under a read-only mount: the reader reads the reverted bytes', async () => {
    await g.createVolume({ name: 'reverted', sizeBytes: 1 * MiB })
    await g.write('reverted', 0, new Uint8Array(4096).fill(4))
    await g.createSnapshot('reverted', 'before')
    await g.write('reverted', 0, new Uint8Array(4096).fill(5))
    const file = await g.mounts.openVolumeFile('reverted', { readOnly: true })
    await g.restoreSnapshot('reverted', 'before')
    const buffer = new Uint8Array(4096)
    await file.pread(buffer, 0)
    assert.ok(buffer.every((b) => b === 4))
    await file.close()
  })
})
