// FramedSocket (backends/tcp/framed-socket.ts) on a real loopback socket pair: frames sent in one
// tick are batched into the socket at the end of the tick, except that a frame with a large payload
// goes to the socket at once (with everything queued before it), so a replication batch is not held
// behind the rest of the tick's work. Order and authentication tags stay right either way.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, connect, type Socket, type AddressInfo } from 'node:net'
import { once } from 'node:events'
import { FramedSocket } from '../backends/tcp/framed-socket.js'
import { FrameMac, FrameType, newNonce, sessionKeys, type Frame } from '../backends/tcp/frames.js'

async function socketPair (): Promise<{ a: Socket, b: Socket, close: () => void }> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const accepted = once(server, 'connection')
  const a = connect((server.address() as AddressInfo).port, '127.0.0.1')
  await once(a, 'connect')
  const [b] = await accepted as [Socket]
  return { a, b, close: () => { a.destroy(); b.destroy(); server.close() } }
}

describe('FramedSocket', () => {
  it('sends a large payload at once, after the frames queued before it, and small ones at the end of the tick', async () => {
    const { a, b, close } = await socketPair()
    try {
      const keys = sessionKeys('secret', 'n1', 'n2', newNonce(), newNonce())
      const received: Frame[] = []
      let arrived: () => void = () => {}
      const sender = new FramedSocket(a, 64 << 20, () => {}, () => {})
      const receiver = new FramedSocket(b, 64 << 20, (frame) => { received.push(frame); if (received.length === 4) arrived() }, () => {})
      sender.authenticateSending(new FrameMac(keys.clientToServer))
      receiver.authenticateReceiving(new FrameMac(keys.clientToServer))
      const large = new Uint8Array(128 * 1024)
      for (let i = 0; i < large.length; i++) large[i] = (i * 7) & 0xff
      const done = new Promise<void>((resolve) => { arrived = resolve })
      const before = a.bytesWritten
      sender.send(FrameType.Request, 1, '{"n":1}', new Uint8Array([1, 2, 3]))
      assert.equal(a.bytesWritten, before, 'a small frame waits for the end of the tick')
      const written: number[] = []
      sender.send(FrameType.Request, 2, '{"n":2}', large, () => { written.push(2) })
      assert.ok(a.bytesWritten >= before + large.byteLength, `the large frame and the one before it were handed to the socket at once (${a.bytesWritten - before} bytes)`)
      assert.deepEqual(written, [2], 'its written callback ran')
      sender.send(FrameType.Request, 3, '{"n":3}', new Uint8Array([4]))
      sender.send(FrameType.Request, 4, '{"n":4}', large.subarray(0, 70 * 1024))
      await done
      assert.deepEqual(received.map((f) => f.id), [1, 2, 3, 4], 'in the order sent')
      assert.deepEqual(received.map((f) => f.header), [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }])
      assert.deepEqual(Buffer.from(received[1]?.payload ?? []), Buffer.from(large))
      assert.deepEqual(Buffer.from(received[3]?.payload ?? []), Buffer.from(large.subarray(0, 70 * 1024)))
      assert.equal(receiver.ended, false, 'every tag checked out')
    } finally {
      close()
    }
  })
})
