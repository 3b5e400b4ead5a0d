#!/usr/bin/env node
// The `galleonfs` program: `galleonfs -d [flags]` runs the daemon, anything else is the CLI.

import { Command, CommanderError } from 'commander'
import { check, ConfigError, DEFAULTS, flagName, merge, readConfigFile, type DaemonConfig } from './daemon-config.js'
// The daemon and the demo open storage: loaded only when run, so that a CLI command starts without
// loading the library (about half of a command's start-up CPU).
import type { Daemon } from './daemon.js'
import { runCli, runReplicationSelfTest } from './cli.js'

async function daemonMain (argv: string[]): Promise<number> {
  const { createLogger, startDaemon } = await import('./daemon.js')
  const program = new Command('galleonfs -d')
    .option('-d, --daemon', 'run the daemon')
    .option('--config <file>', 'TOML configuration file (flags override it)')
    .option('--storage-path <path>', 'storage directory (default ./galleonfs_storage)')
    .option('--block-size <bytes>', 'block size of new storage (default 4096)')
    .option('--bind-address <host:port>', 'node-to-node address (default 127.0.0.1:8080)')
    .option('--ipc-address <host:port>', 'address of the CLI API (default 127.0.0.1:8090)')
    .option('--peer-addresses <list>', 'comma-separated peers')
    .option('--replication-strategy <strategy>', 'synchronous or asynchronous (default synchronous)')
    .option('--persistence-level <level>', 'persistence level: basic, enhanced, high or maximum (default enhanced; not used by this release)')
    .option('--mount-point <dir>', 'mount volumes here through FUSE')
    .option('--nbd-address <host:port>', 'serve NBD exports here')
    .option('--nbd-handshake-timeout-seconds <seconds>', 'seconds an NBD client has to finish its handshake; 0: no limit (default 10)')
    .option('--ipc-tls-cert-file <file>', 'PEM certificate of the API (with --ipc-tls-key-file): the API is then served over HTTPS')
    .option('--ipc-tls-key-file <file>', 'PEM key of the API\'s certificate (mode 0600)')
    .option('--nbd-tls-cert-file <file>', 'PEM certificate of the NBD server (with --nbd-tls-key-file): clients must then use TLS')
    .option('--nbd-tls-key-file <file>', 'PEM key of the NBD server\'s certificate (mode 0600)')
    .option('--nbd-tls-ca-file <file>', 'PEM of the CA that NBD clients\' certificates must chain to (clients must present one)')
    .option('--nbd-tls-psk-file <file>', 'NBD pre-shared keys, identity:hexkey lines as psktool writes them (mode 0600): clients must then use TLS')
    .option('--log-level <level>', 'error, warn, info, debug or trace (default: GALLEONFS_LOG or RUST_LOG, else info)')
    .option('--key-provider <provider>', 'internal, passphrase, command, http, or a key provider a module in [drivers] modules registers (KMS settings go in [security] of the config file)')
    .option('--etcd-endpoints <urls>', 'comma-separated etcd client URLs: start or join the cluster they coordinate')
    .option('--node-id <id>', 'this node\'s id in the cluster (default: host name and bind port)')
    .option('--zone <zone>', 'this node\'s failure domain (default "default")')
    .option('--labels <pairs>', 'this node\'s labels, comma-separated key=value')
    .option('--cluster-secret-file <file>', 'the cluster\'s shared secret (mode 0600; else GALLEONFS_CLUSTER_SECRET)')
    .option('--etcd-username <user>', 'etcd user, when etcd has authentication on (password: --etcd-password-file or GALLEONFS_ETCD_PASSWORD)')
    .option('--etcd-password-file <file>', 'the etcd user\'s password (mode 0600)')
    .option('--etcd-ca-file <file>', 'PEM of the CA that signed the certificate of https etcd endpoints')
    .option('--etcd-cert-file <file>', 'PEM client certificate for etcd (with --etcd-key-file), when etcd asks for one')
    .option('--etcd-key-file <file>', 'PEM key of the etcd client certificate (mode 0600)')
    .option('--advertise-address <host:port>', 'where peers reach this node (needed with a wildcard --bind-address)')
    .option('--lease-ttl-seconds <seconds>', 'seconds a silent node counts as alive; then its volumes fail over (default 10)')
    .option('--replica-replacement-delay-seconds <seconds>', 'seconds a failed node\'s copies wait before the cluster places new ones on other nodes (default 600)')
    .option('--failover-wait-seconds <seconds>', 'seconds a call on a node without its volume\'s primary keeps trying to reach one, through a failover, before it fails (default 30)')
    .option('--keepalive-interval-seconds <seconds>', 'seconds of silence on a connection to a peer before it sends a keepalive; 0: none (default 5)')
    .option('--keepalive-timeout-seconds <seconds>', 'seconds a peer may stay silent after a keepalive, taking none of our bytes, before its connection is closed (default 10)')
    .option('--peer-wait-seconds <seconds>', 'seconds a node joining through --peer-addresses (or cluster join) waits for a peer that is still starting, or, at its first start through --peer-addresses, not listening yet; 0: no wait (default 300)')
    .exitOverride()
  const log = createLogger()
  // A stop asked for while the daemon starts ends its wait for its peers (still starting, or not listening yet).
  const stopAsked = new AbortController()
  try {
    program.parse(argv, { from: 'user' })
    const flags = program.opts<Record<string, unknown>>()
    const { config: configFile, daemon: _d, ...rest } = flags
    // The file and the flags, read again on every reload (SIGHUP).
    const loadConfig = async (): Promise<DaemonConfig> => {
      const file = typeof configFile === 'string' ? await readConfigFile(configFile) : { settings: {}, ignored: [] }
      if (file.ignored.length > 0) log('warn', 'configuration keys not used by this release', { keys: file.ignored })
      return merge(file.settings, check(rest, 'command line', flagName))
    }
    const config = await loadConfig()
    // A setting this release does not use: said, not silently dropped.
    if (config.persistenceLevel !== DEFAULTS.persistenceLevel) log('warn', 'the persistence level (--persistence-level, level in [persistence]) is set but not used by this release', { persistenceLevel: config.persistenceLevel })
    // SIGHUP would end a process that has no handler: one is there from the start, and a reload
    // asked for while the daemon is starting runs once it has started.
    let daemon: Daemon | undefined
    let reloadWanted = false
    const reload = (): void => {
      if (daemon === undefined) { reloadWanted = true; return }
      daemon.reload().catch((err: Error) => log('error', `the configuration was not reloaded; the daemon keeps the one it had: ${err.message}`))
    }
    process.on('SIGHUP', () => {
      log('info', 'signal received', { signal: 'SIGHUP' })
      reload()
    })
    // SIGTERM and SIGINT likewise: one that arrives while the daemon is starting (it may already
    // have said "ready") stops it as soon as it has started; one that arrives while it waits for
    // peers (still starting, or not listening yet: --peer-wait-seconds), before anything is open, ends the wait
    // and the daemon exits at once (0). A second one (Ctrl-C pressed again, a
    // script's kill after `daemon stop`) is logged and changes nothing: with no handler left it would
    // kill the process in the middle of its stop, losing writes acknowledged but not yet flushed.
    // SIGKILL is the way to force an exit.
    let stopWanted = false
    const shutdown = (signal: string): void => {
      log('info', 'signal received', { signal })
      if (daemon === undefined) {
        stopWanted = true
        stopAsked.abort()
      } else void daemon.stop()
    }
    process.on('SIGTERM', () => shutdown('SIGTERM'))
    process.on('SIGINT', () => shutdown('SIGINT'))
    daemon = await startDaemon(config, log, loadConfig, stopAsked.signal)
    if (stopWanted) void daemon.stop()
    if (reloadWanted) reload()
    await daemon.stopped
    return 0
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2
    if (err instanceof ConfigError) {
      log('error', err.message)
      return 2
    }
    if (stopAsked.signal.aborted && (err as { code?: string }).code === 'CANCELLED') {
      log('info', 'stopped before it started: the stop came while it waited for its peers (--peer-addresses) to tell where its cluster\'s coordinator is; nothing was opened', { reason: (err as Error).message })
      return 0
    }
    log('error', `the daemon could not start: ${(err as Error)?.message ?? String(err)}`, { code: (err as { code?: string }).code })
    return 1
  }
}

/** The seed's legacy forms: `--demo-mode [--setup-defaults]`, `--test-replication`. */
async function legacyMain (argv: string[]): Promise<number> {
  const program = new Command('galleonfs')
    .option('--demo-mode', 'a guided demo of volumes, snapshots, clones, backups, encryption and metrics')
    .option('--setup-defaults', 'with --demo-mode: also set up a storage class and a nightly backup policy')
    .option('--storage-path <path>', 'with --demo-mode: work here and keep the results (default: a temporary directory)')
    .option('--test-replication', 'the replication self-test, against the cluster of the running daemon')
    .option('--daemon-address <host:port>', 'with --test-replication: the daemon\'s IPC address (https://host:port for one serving HTTPS)', process.env.GALLEONFS_DAEMON_ADDRESS ?? '127.0.0.1:8090')
    .option('--daemon-ca-file <file>', 'with --test-replication and an https:// daemon address: PEM of the CA that signed the daemon\'s certificate (else GALLEONFS_DAEMON_CA_FILE)')
    .option('--token <token>', 'with --test-replication: the daemon\'s API token (else GALLEONFS_TOKEN or the runtime file)')
    .exitOverride()
  try {
    program.parse(argv, { from: 'user' })
  } catch (err) {
    return err instanceof CommanderError && err.exitCode === 0 ? 0 : 2
  }
  const options = program.opts<{ demoMode?: boolean, setupDefaults?: boolean, storagePath?: string, testReplication?: boolean, daemonAddress: string, daemonCaFile?: string, token?: string }>()
  if (options.demoMode !== true && options.testReplication !== true) {
    process.stderr.write('galleonfs: --setup-defaults and --storage-path here go with --demo-mode: galleonfs --demo-mode --setup-defaults\n')
    return 2
  }
  if (options.testReplication === true) {
    if (options.storagePath !== undefined || options.setupDefaults === true) {
      process.stderr.write('galleonfs: --test-replication checks a running cluster through its daemon (--daemon-address); --storage-path and --setup-defaults go with --demo-mode\n')
      return 2
    }
    return await runReplicationSelfTest({ daemonAddress: options.daemonAddress, ...(options.daemonCaFile === undefined ? {} : { daemonCaFile: options.daemonCaFile }), ...(options.token === undefined ? {} : { token: options.token }) })
  }
  try {
    const { runDemo } = await import('./demo.js')
    await runDemo({ ...(options.storagePath === undefined ? {} : { storagePath: options.storagePath }), setupDefaults: options.setupDefaults === true })
    return 0
  } catch (err) {
    process.stderr.write(`galleonfs: the demo stopped: ${(err as Error)?.message ?? String(err)}\n`)
    return 1
  }
}

const argv = process.argv.slice(2)
const COMMANDS = new Set(['volume', 'mount', 'snapshot', 'backup', 'cluster', 'daemon', 'storage-class', 'pool', 'qos', 'help'])
// `galleonfs --mount-point DIR --bind-address ...` without a command: the legacy way to run the daemon.
const DAEMON_FLAGS = /^--(mount-point|bind-address|storage-path|config|peer-addresses|ipc-address|block-size|nbd-address|replication-strategy|persistence-level|log-level|key-provider|etcd-endpoints|node-id|zone|labels|cluster-secret-file|etcd-username|etcd-password-file|etcd-ca-file|etcd-cert-file|etcd-key-file|advertise-address|lease-ttl-seconds|replica-replacement-delay-seconds|failover-wait-seconds|nbd-handshake-timeout-seconds|nbd-tls-cert-file|nbd-tls-key-file|ipc-tls-cert-file|ipc-tls-key-file|nbd-tls-ca-file|nbd-tls-psk-file|keepalive-interval-seconds|keepalive-timeout-seconds|peer-wait-seconds)(=|$)/
/** Options before the command that take the next argument as their value (the daemon's flags, the CLI's global options). */
const TAKES_VALUE = /^--(daemon-address|daemon-ca-file|token|timeout)$/
/**
 * Whether a command is given: the first argument that is neither an option nor an option's value
 * names one (`--storage-path backup` is a daemon flag with its value, not the backup command).
 */
const command = ((): boolean => {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--') return COMMANDS.has(argv[i + 1] ?? '')
    if (!arg.startsWith('-')) return COMMANDS.has(arg)
    if (!arg.includes('=') && (TAKES_VALUE.test(arg) || DAEMON_FLAGS.test(arg))) i++
  }
  return false
})()
// The seed's legacy forms, before anything else: `--demo-mode [--setup-defaults]`, `--test-replication`.
const legacy = !command && (argv.includes('--demo-mode') || argv.includes('--test-replication') || argv.includes('--setup-defaults'))
const daemon = argv.includes('-d') || argv.includes('--daemon') || (!command && !legacy && argv.some((a) => DAEMON_FLAGS.test(a)))
process.exitCode = legacy ? await legacyMain(argv) : daemon ? await daemonMain(argv) : await runCli(argv)
