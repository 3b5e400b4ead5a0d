// h91: a daemon joining its cluster through --peer-addresses listens on its --bind-address only
// once its peers have told where the coordinator is (so that two nodes started together never hold
// each other up), and so found that another process held that address only after the wait for its
// peers (--peer-wait-seconds, 300 s by default), which it then reported instead: "no peer told
// where the cluster's coordinator is", the busy address never named. Now a busy bind address fails
// the start at once, with BUSY naming it and --bind-address, before any peer is asked; its IPC and
// NBD ports are freed, nothing is created. Real daemon processes; no etcd is needed, as the daemon
// never gets past its peers.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { launchDaemon, type LaunchedDaemon, logEntries, portHolder, present, tryListen } from './support/gated-daemon.js'
import { freePort } from './support/net.js'
import { tempDirs } from './support/temp-dir.js'
import { within } from './support/wait.js'

const SECRET = 'h91-a-long-enough-cluster-secret'
const env = { ...process.env, GALLEONFS_CLUSTER_SECRET: SECRET }
const newDir = tempDirs('galleon-h91-')
const children = new Set<ChildProcess>()
const launch = (args: string[], cwd: string): LaunchedDaemon => launchDaemon(args, cwd, { env, children })
after(() => { for (const child of children) child.kill('SIGKILL') })



describe('h91: a busy --bind-address of a node joining through --peer-addresses', { timeout: 120_000 }, () => {
  it('fails the start at once with BUSY naming --bind-address, before the peers are asked; its ports are freed, nothing is created', async () => {
    const dir = await newDir()
    const { server, port } = await portHolder()
    const ipcPort = await freePort()
    const nbdPort = await freePort()
    const busy = `127.0.0.1:${port}`
    try {
      // Nothing listens at the peer's address: the daemon would wait for it (a node started together
      // with this one, not up yet) for --peer-wait-seconds before anything else.
      const daemon = launch(['--storage-path', join(dir, 'storage'), '--node-id', 'n-busy', '--bind-address', busy, '--ipc-address', `127.0.0.1:${ipcPort}`, '--nbd-address', `127.0.0.1:${nbdPort}`, '--peer-addresses', `127.0.0.1:${await freePort()}`, '--peer-wait-seconds', '5'], dir)
      const code = await within('the daemon exits', daemon.exited, 100_000)
      const failure = logEntries(daemon.log()).find((entry) => entry.message.startsWith('the daemon could not start'))
      assert.deepEqual(failure && { message: failure.message, code: failure.code }, {
        message: `the daemon could not start: the bind address (the cluster's) ${busy} is in use by another process (another galleonfs daemon?); stop that one, or give this daemon another --bind-address (bind_address in [daemon])`,
        code: 'BUSY'
      }, daemon.log())
      assert.equal(code, 1, daemon.log())
      // It never waited for the peer: the address is checked first.
      assert.ok(!daemon.log().includes('waiting for peers'), daemon.log())
      assert.equal(await tryListen(ipcPort), 'listening', 'the IPC port is free again')
      assert.equal(await tryListen(nbdPort), 'listening', 'the NBD port is free again')
      assert.equal(await present(join(dir, 'storage')), false, 'the storage path was not created')
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  })
})
