// h46: a limit must not fire while progress is made. A primary streams its changes to a copy in
// batches of up to 4 MiB, several in flight; each batch is a transport request that must be answered
// within APPLY_TIMEOUT_MS (5 s) of being sent. Over a link that moves steadily but slowly (here
// 1.25 MiB/s, a busy WAN link), the second batch waits behind the first: the link is declared down
// although every byte of it is moving, the copy leaves the in-sync list and is resynced, and under
// a steady write load this repeats. Real sockets throughout, through a relay that throttles what the
// primary sends.

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { MemoryCoordinatorCluster } from '../backends/memory/index.js'
import { TcpTransport, parseAddress } from '../backends/tcp/index.js'
import type { TransportMessage, TransportRequestOptions } from '../src/drivers.js'
import { allInSync, diskCluster } from './support/disk-cluster.js'
import { until } from './support/wait.js'
import { ThrottleRelay } from './support/h46-throttle-relay.js'

const { tempDir, track } = diskCluster('galleon-h46-slow-')
const MiB = 1024 * 1024
const SECRET = 'h46-slow-link-cluster-secret'

/** A tcp transport that dials some peers through another address (the relay in front of them). */
class ReroutingTransport extends TcpTransport {
  readonly routes = new Map<string, string>()
  override async request (address: string, message: TransportMessage, options?: TransportRequestOptions): Promise<TransportMessage> {
    return await super.request(this.routes.get(address) ?? address, message, options)
  }
}

it('a copy streamed over a slow but moving link is not declared down and resynced', async () => {
  const coordinators = new MemoryCoordinatorCluster()
  const open = async (id: string, transport: TcpTransport): Promise<GalleonFS> => track(await GalleonFS.open({
    storagePath: await tempDir(`galleon-h46-slow-${id}-`),
    cluster: { nodeId: id, transport, coordinator: coordinators.coordinator(), leaseTtlMs: 2000 }
  }))
  const replica = await open('r', new TcpTransport({ nodeId: 'r', clusterSecret: SECRET }))
  const replicaAddress = (replica.cluster?.members.find((m) => m.id === 'r'))?.address
  assert.ok(replicaAddress !== undefined)
  // 128 KiB every 100 ms: 1.25 MiB/s from the primary to the copy, answers back at once.
  const relay = new ThrottleRelay(parseAddress(replicaAddress), 128 * 1024, 100)
  const viaRelay = await relay.listen()
  const transport = new ReroutingTransport({ nodeId: 'p', clusterSecret: SECRET })
  transport.routes.set(replicaAddress, viaRelay)
  try {
    const primary = await open('p', transport)
    await until('both nodes see each other', () => [primary, replica].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    await primary.createVolume({ name: 'slow', sizeBytes: 64 * MiB, replicas: 2 })
    await until('both copies are in sync', async () => await allInSync(primary, 'slow', 2), 30_000)
    const downs: string[] = []
    primary.on('replication:link-down', (event) => { downs.push(event.message) })
    const before = relay.relayed
    // 12 MiB of acknowledged writes: three full batches for the stream.
    const data = new Uint8Array(MiB)
    for (let i = 0; i < 12; i++) {
      data.fill(i + 1)
      await primary.write('slow', i * MiB, data, WriteConcern.WriteAcknowledged)
    }
    // The copy catches up (the link moves 12 MiB in about 10 s); generous bound for a loaded machine.
    await until('the copy has every change and is in sync', async () => {
      const status = await primary.replicationStatus('slow')
      return status.inSync.length === 2 && status.links.length === 1 && status.links.every((link) => link.state === 'streaming' && link.lagChanges === 0)
    }, 50_000, 50)
    const link = (await primary.replicationStatus('slow')).links[0]
    assert.ok(relay.relayed - before >= 12 * MiB, `the link moved ${((relay.relayed - before) / MiB).toFixed(1)} MiB meanwhile`)
    assert.deepEqual(downs, [], `the link to the copy was declared down ${downs.length} time(s) while it moved every byte it was given (resyncs: ${link?.resyncs}): ${downs.slice(0, 3).join(' | ')}`)
  } finally {
    await relay.close()
  }
})
