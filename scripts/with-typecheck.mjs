// Runs a command (the test runner) and the TypeScript typecheck (`tsc -p tsconfig.json --noEmit`)
// side by side; exits non-zero when either fails.
//
// Usage: node scripts/with-typecheck.mjs <command> [args...]   (a leading `node` means this node)
//
// The typecheck is one process on one core for about 25 s; the test runner leaves a core idle now
// and then (while every running test file waits for a child, a timer or the disk). Run at a lower
// priority beside it, the typecheck takes those moments instead of running first on its own.
// Its errors go to stderr as soon as it ends, so the command's stdout (TAP, ending with the failure
// summary) stays whole and last.

import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import { setPriority } from 'node:os'

const [command, ...args] = process.argv.slice(2)
if (command === undefined) {
  process.stderr.write('usage: node scripts/with-typecheck.mjs <command> [args...]\n')
  process.exit(2)
}

const tscPath = createRequire(import.meta.url).resolve('typescript/bin/tsc')
const tsc = spawn(process.execPath, [tscPath, '-p', 'tsconfig.json', '--noEmit'], { stdio: ['ignore', 'pipe', 'pipe'] })
try { if (tsc.pid !== undefined) setPriority(tsc.pid, 10) } catch {} // not allowed here: it runs at the same priority
let tscOutput = ''
tsc.stdout.setEncoding('utf8').on('data', (chunk) => { tscOutput += chunk })
tsc.stderr.setEncoding('utf8').on('data', (chunk) => { tscOutput += chunk })
const typecheck = new Promise((resolve) => {
  tsc.once('error', (err) => { tscOutput += `cannot run tsc: ${err.message}\n`; resolve(1) })
  tsc.once('close', (code, signal) => {
    const failed = code !== 0
    if (failed) process.stderr.write(`\n== typecheck failed (tsc -p tsconfig.json --noEmit exited ${signal ?? code}):\n${tscOutput}\n`)
    resolve(failed ? 1 : 0)
  })
})

const main = spawn(command === 'node' ? process.execPath : command, args, { stdio: 'inherit' })
const forward = (signal) => { main.kill(signal); tsc.kill(signal) }
process.on('SIGINT', forward)
process.on('SIGTERM', forward)
const mainCode = await new Promise((resolve) => {
  main.once('error', (err) => { process.stderr.write(`cannot run ${command}: ${err.message}\n`); resolve(1) })
  main.once('close', (code, signal) => { resolve(signal !== null ? 1 : code ?? 1) })
})
const tscCode = await typecheck
if (tscCode !== 0) process.stderr.write('npm test: the typecheck failed (its errors are above)\n')
process.exit(mainCode !== 0 ? mainCode : tscCode)
