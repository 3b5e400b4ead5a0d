// A driver module for test/review-r36-daemon-listen.test.ts, loaded by the daemon from [drivers]
// modules (it registers nothing): it stretches the TLS handshake limit of the HTTPS servers the
// daemon creates from 10 s to 10 min, so that a client left in its TLS handshake is not ended by
// that timer within the test, only by what the daemon does itself. Modules load before the daemon
// creates its API server; syncBuiltinESMExports() carries the change to its `import { createServer }`.

import https from 'node:https'
import { syncBuiltinESMExports } from 'node:module'

const original = https.createServer
https.createServer = ((options: https.ServerOptions, listener?: Parameters<typeof original>[1]) => original({ ...options, handshakeTimeout: 600_000 }, listener)) as typeof https.createServer
syncBuiltinESMExports()
