// Review r69: the NBD server on a full disk (a small tmpfs, as h48 and h58), on both disk block
// stores. Writes a real client makes fail with ENOSPC (nbdcopy and qemu-img say "No space left on
// device"), never EIO or a dropped connection, and the server goes on serving: reads of the same
// connection, and new clients. NBD_OPT_INFO of a writable export answered NBD_REP_ERR_INVALID
// there (letting go of the writer's place it claims flushes the volume, which the full disk
// refuses) while NBD_OPT_GO of the same export succeeded: INFO tells what GO would get.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { tmpfs, unmountAll } from './support/tmpfs.js'
import { CMD, ERR, INFO, OPT, REP, WireClient } from './support/h58-wire.js'

const run = promisify(execFile)
const MiB = 1024 * 1024
const missing = ['nbdcopy', 'qemu-img'].find((tool) => !['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))))

after(async () => { await unmountAll() })

describe('review r69: NBD on a full disk', () => {
  for (const backend of ['file', 'level'] as const) {
    it(`${backend} store: real clients get ENOSPC, the server keeps serving, and NBD_OPT_INFO answers as NBD_OPT_GO does`, { skip: missing === undefined ? false : `${missing} is not installed (see .ci/run)` }, async (t) => {
      const mount = await tmpfs('16m', 'galleon-r69-')
      if ('skip' in mount) { t.skip(mount.skip); return }
      const g = await GalleonFS.open({ storagePath: join(mount.dir, 'store'), backend })
      const server = await NbdServer.listen(g, { port: 0 })
      try {
        await g.createVolume({ name: 'big', sizeBytes: 32 * MiB })
        await g.createVolume({ name: 'small', sizeBytes: MiB })
        const written = randomBytes(64 * 1024)
        await g.write('small', 0, written)
        // Incompressible bytes, more than the disk holds (LevelDB compresses repeated ones).
        const source = join(mount.dir, '..', `${mount.dir.split('/').pop() ?? 'r69'}-source.raw`)
        await writeFile(source, randomBytes(32 * MiB))
        try {
          for (const [tool, args] of [['nbdcopy', [source, `nbd://127.0.0.1:${server.port}/big`]], ['qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, `nbd://127.0.0.1:${server.port}/big`]]] as const) {
            await assert.rejects(run(tool, [...args]), (err: Error & { stderr?: string }) => /No space left on device/.test(err.stderr ?? '') && !/Input\/output|Connection|disconnect/i.test(err.stderr ?? ''), `${tool} reports ENOSPC`)
          }
        } finally {
          await import('node:fs/promises').then(async (fs) => { await fs.rm(source, { force: true }) })
        }
        // A new client is served: its reads work, its writes get ENOSPC, the connection stays.
        const { client } = await WireClient.open(server.port)
        await client.structuredReplies()
        const info = await client.go('small', [INFO.BLOCK_SIZE], OPT.INFO)
        assert.equal(info.final, REP.ACK, `NBD_OPT_INFO of a writable export on a full disk: ${info.replies.at(-1)?.data.toString() ?? ''}`)
        const flags = info.infos.get(INFO.EXPORT)?.[0]?.readUInt16BE(10)
        assert.equal(((flags ?? 0) & 2) === 0, true, 'INFO says writable, as GO will')
        const go = await client.go('small')
        assert.equal(go.final, REP.ACK)
        assert.equal(go.infos.get(INFO.EXPORT)?.[0]?.readUInt16BE(10), flags, 'GO gives the flags INFO told')
        assert.equal((await client.request(CMD.WRITE, 128 * 1024, 64 * 1024, 0, randomBytes(64 * 1024))).error, ERR.ENOSPC)
        const read = await client.request(CMD.READ, 0, 64 * 1024)
        assert.equal(read.error, 0)
        assert.ok(WireClient.readData(read, 0, 64 * 1024).equals(written), 'what was written before reads back')
        client.end()
        const size = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${server.port}/small`])
        assert.equal(size.stdout.trim(), String(MiB))
      } finally {
        await server.close()
        await g.close().catch(() => {}) // NO_SPACE: the store stopped on the full disk
      }
    })
  }
})
