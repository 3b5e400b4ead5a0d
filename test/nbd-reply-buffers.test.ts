// The NBD server reads large requests into reply buffers it reuses (see ReplyBuffers in
// backends/nbd/transmission.ts). A buffer must come back only once the socket is done with the
// reply it holds: a client that stops reading while many large reads are in flight leaves replies
// queued in the server, while later reads complete; each reply must still carry its own bytes.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { CMD_READ, NbdClient } from './support/nbd-client.js'
import { seededRandom } from './conformance/fixtures.js'

const REGION = 256 * 1024
const REGIONS = 64

let root: string
let g: GalleonFS
let server: NbdServer

/** The byte region `r` of the volume holds. */
const fillOf = (r: number): number => (r * 3 + 1) & 0xff

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-nbd-reply-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
  await g.createVolume({ name: 'disk', sizeBytes: REGION * REGIONS })
  for (let r = 0; r < REGIONS; r++) await g.write('disk', r * REGION, new Uint8Array(REGION).fill(fillOf(r)))
  server = await NbdServer.listen(g, { port: 0 })
})
after(async () => {
  await server?.close()
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

describe('NBD reply buffers', () => {
  it('replies held back by a client that stopped reading keep their bytes while later reads reuse buffers', async () => {
    const random = seededRandom(42)
    for (let round = 0; round < 3; round++) {
      const client = await NbdClient.connect(server.port, { readTimeoutMs: 30_000 })
      try {
        await client.hello()
        await client.go('disk')
        // The client takes nothing off the socket for a while: the server's replies back up.
        client.socket.pause()
        const asked = new Map<number, number>()
        for (let handle = 1; handle <= 64; handle++) {
          const region = Math.floor(random() * REGIONS)
          asked.set(handle, region)
          client.socket.write(NbdClient.requestFrame(CMD_READ, handle, region * REGION, REGION))
        }
        await new Promise((resolve) => setTimeout(resolve, 300))
        client.socket.resume()
        for (let i = 0; i < asked.size; i++) {
          const reply = await client.reply(REGION)
          assert.equal(reply.error, 0)
          const region = asked.get(reply.handle) as number
          const want = fillOf(region)
          const wrong = reply.data.findIndex((byte) => byte !== want)
          assert.equal(wrong, -1, `round ${round}, handle ${reply.handle} (region ${region}): byte ${wrong} is ${reply.data[wrong]}, not ${want}`)
        }
      } finally {
        client.socket.destroy()
      }
    }
  })
})
