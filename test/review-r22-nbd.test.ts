// Review r22 of h58's NBD changes (FUA and FLUSH offered only where the store can make writes
// durable, g.durable, NOTLS refusals): real clients (nbdinfo, nbdcopy, qemu-img, all nobody here
// wrote) against a TLS server over an in-memory instance and over a durable one, each served
// through a principal's handle (g.as()), as index.ts recommends.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'

const exec = promisify(execFile)
const missing = (tool: string): string | undefined => ['/bin', '/usr/bin', '/usr/local/bin'].some((dir) => existsSync(join(dir, tool))) ? undefined : `${tool} is not installed (see .ci/run)`
const NO_CLIENTS = missing('nbdinfo') ?? missing('nbdcopy') ?? missing('qemu-img')
if (NO_CLIENTS !== undefined) process.stdout.write(`# SKIP review r22 NBD client tests: ${NO_CLIENTS}\n`)
const MiB = 1 << 20

let root: string
let pskDir: string
let pskFile: string
const pskKey = randomBytes(32).toString('hex')

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-r22-nbd-'))
  pskDir = join(root, 'psk')
  await mkdir(pskDir)
  pskFile = join(pskDir, 'keys.psk')
  await writeFile(pskFile, `alice:${pskKey}\n`, { mode: 0o600 })
})
after(async () => { await rm(root, { recursive: true, force: true }) })

const uri = (server: NbdServer, name: string): string => `nbds://alice@127.0.0.1:${server.port}/${name}?tls-psk-file=${pskFile}`

for (const kind of ['in memory', 'on disk'] as const) {
  describe(`review r22: NBD over TLS, through g.as(), ${kind}`, { skip: NO_CLIENTS }, () => {
    it('nbdinfo sees FLUSH and FUA exactly when the store is durable; nbdcopy and qemu-img copy in and out byte-exact', async () => {
      const g = await GalleonFS.open(kind === 'in memory' ? { inMemory: true } : { storagePath: join(root, 'storage') })
      try {
        assert.equal(g.durable, kind === 'on disk')
        await g.createVolume({ name: 'disk', sizeBytes: 4 * MiB })
        const handle = g.as({ id: 'alice' })
        assert.equal(handle.durable, g.durable, 'g.durable through a principal\'s handle')
        const server = await NbdServer.listen(handle, { port: 0, tls: { psk: { alice: pskKey } } })
        try {
          const info = JSON.parse((await exec('nbdinfo', ['--json', uri(server, 'disk')])).stdout)
          const exp = info.exports[0]
          assert.equal(info.TLS, true)
          assert.equal(exp['export-size'], 4 * MiB)
          assert.equal(exp.can_flush, g.durable, 'FLUSH offered only on a durable store')
          assert.equal(exp.can_fua, g.durable, 'FUA offered only on a durable store')
          assert.equal(exp.is_read_only, false)
          assert.equal(exp.can_trim, true)
          assert.equal(exp.can_zero, true)

          const input = join(root, `in-${kind.replace(' ', '-')}.raw`)
          const image = new Uint8Array(randomBytes(4 * MiB))
          image.fill(0, MiB, 2 * MiB) // a hole for the clients to zero or skip
          await writeFile(input, image)
          // --flush asks libnbd for NBD_CMD_FLUSH at the end, which it refuses itself where the
          // server does not offer FLUSH (the in-memory instance since h58): plain copy there.
          await exec('nbdcopy', [...(g.durable ? ['--flush'] : []), input, uri(server, 'disk')])
          assert.deepEqual(await g.read('disk', 0, 4 * MiB), image, 'nbdcopy wrote the image')
          const out = join(root, `out-${kind.replace(' ', '-')}.raw`)
          await exec('nbdcopy', [uri(server, 'disk'), out])
          assert.deepEqual(new Uint8Array(await readFile(out)), image, 'nbdcopy read it back')

          // qemu-img: writes with its own cache mode (it sends FLUSH only when offered), then reads back.
          const second = new Uint8Array(randomBytes(4 * MiB))
          await writeFile(input, second)
          const creds = ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir},username=alice`]
          const target = `driver=nbd,host=127.0.0.1,port=${server.port},export=disk,tls-creds=tls0`
          await exec('qemu-img', ['convert', '-n', '-f', 'raw', ...creds, '--target-image-opts', input, target])
          assert.deepEqual(await g.read('disk', 0, 4 * MiB), second, 'qemu-img wrote the image')
          const back = join(root, `back-${kind.replace(' ', '-')}.raw`)
          await exec('qemu-img', ['convert', '-O', 'raw', ...creds, '--image-opts', target, back])
          assert.deepEqual(new Uint8Array(await readFile(back)), second, 'qemu-img read it back')
          const qinfo = JSON.parse((await exec('qemu-img', ['info', '--output=json', ...creds, '--image-opts', target])).stdout)
          assert.equal(qinfo['virtual-size'], 4 * MiB)
        } finally {
          await server.close()
        }
      } finally {
        await g.close()
      }
    })
  })
}
