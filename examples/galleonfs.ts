#!/usr/bin/env node
// The `galleonfs` program: `galleonfs -d [flags]` runs the daemon, anything else is the CLI.

import { Command, CommanderError } from 'commander'
import { check, ConfigError, DEFAULTS, merge, readConfigFile } from './daemon-config.js'
import { createLogger, startDaemon } from './daemon.js'
import { runCli } from './cli.js'

async function daemonMain (argv: string[]): Promise<number> {
  const program = new Command('galleonfs -d')
    .option('-d, --daemon', 'run the daemon')
    .option('--config <file>', 'TOML configuration file (flags override it)')
    .option('--storage-path <path>', 'storage directory (default ./galleonfs_storage)')
    .option('--block-size <bytes>', 'block size of new storage (default 4096)')
    .option('--bind-address <host:port>', 'node-to-node address (default 127.0.0.1:8080)')
    .option('--ipc-address <host:port>', 'address of the CLI API (default 127.0.0.1:8090)')
    .option('--peer-addresses <list>', 'comma-separated peers')
    .option('--replication-strategy <strategy>', 'synchronous or asynchronous (default synchronous)')
    .option('--persistence-level <level>', 'persistence level (default enhanced)')
    .option('--mount-point <dir>', 'mount volumes here through FUSE')
    .option('--nbd-address <host:port>', 'serve NBD exports here')
    .exitOverride()
  const log = createLogger()
  try {
    program.parse(argv, { from: 'user' })
    const flags = program.opts<Record<string, unknown>>()
    const file = typeof flags.config === 'string' ? await readConfigFile(flags.config) : { settings: {}, ignored: [] }
    if (file.ignored.length > 0) log('warn', 'configuration keys not used by this release', { keys: file.ignored })
    const { config: _c, daemon: _d, ...rest } = flags
    const config = merge(file.settings, check(rest, 'command line'))
    if (config.peerAddresses.length > 0) log('warn', 'peer addresses are given but clustering is not in this release: running as a single node', { peers: config.peerAddresses })
    // Settings of clustering and replication, which this release does not have: said, not silently dropped.
    for (const key of ['bindAddress', 'replicationStrategy', 'persistenceLevel'] as const) {
      if (config[key] !== DEFAULTS[key]) log('warn', `${key} is set but not used by this release (single node, no replication)`, { [key]: config[key] })
    }
    const daemon = await startDaemon(config, log)
    const shutdown = (signal: string): void => {
      log('info', 'signal received', { signal })
      void daemon.stop()
    }
    process.once('SIGTERM', () => shutdown('SIGTERM'))
    process.once('SIGINT', () => shutdown('SIGINT'))
    await daemon.stopped
    return 0
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2
    if (err instanceof ConfigError) {
      log('error', err.message)
      return 2
    }
    log('error', `the daemon could not start: ${(err as Error)?.message ?? String(err)}`, { code: (err as { code?: string }).code })
    return 1
  }
}

const argv = process.argv.slice(2)
const code = argv.includes('-d') || argv.includes('--daemon') ? await daemonMain(argv) : await runCli(argv)
process.exitCode = code
