// Runs the Transport conformance suite against every built-in transport.

import { MemoryNetwork, MemoryTransport } from '../../backends/memory/transport.js'
import { TcpTransport, parseAddress } from '../../backends/tcp/index.js'
import { transportSuite } from './index.js'

// One network for the whole file: the suite gives every test its own node ids.
const network = new MemoryNetwork({ seed: 1 })
transportSuite({ name: 'memory', factory: (nodeId) => new MemoryTransport({ network, nodeId }) })

const clusterSecret = 'conformance-secret'
transportSuite({
  name: 'tcp',
  factory: (nodeId, { address }) => new TcpTransport({ nodeId, clusterSecret, host: '127.0.0.1', port: address === undefined ? 0 : parseAddress(address).port })
})
