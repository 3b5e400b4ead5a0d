#!/usr/bin/env node
// Builds the optional native AES-256-GCM addon (native/aead) with node-gyp and checks that the
// result produces the same bytes as node:crypto. Run by `npm install` (an install that cannot build
// it only prints why: GalleonFS then encrypts with node:crypto) and by `npm run build:native`
// (--required: a failed build is an error, as CI wants).
//
// Needs what node-gyp needs: Python 3, make and a C compiler, and Node.js's headers (npm's
// `nodedir` setting, the headers next to this Node.js, or a download by node-gyp).
// GALLEONFS_NATIVE_AEAD=0 skips the build.

import { spawnSync } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const required = process.argv.includes('--required')
const root = dirname(dirname(fileURLToPath(import.meta.url)))
const directory = join(root, 'native', 'aead')
const built = join(directory, 'build', 'Release', 'galleonfs_aead.node')

function give (reason, output = '') {
  // node-gyp says why it failed in its own output ("Could not find any Python installation to
  // use", a missing compiler): the warning carries that line, not only the exit code.
  const cause = /gyp ERR! stack Error: (.+)/.exec(output)?.[1]?.trim()
  if (cause !== undefined) reason = `${reason}: ${cause}`
  if (required) {
    if (output !== '') process.stderr.write(output)
    console.error(`galleonfs: the native AES-GCM addon was not built: ${reason}`)
    process.exit(1)
  }
  console.warn(`galleonfs: the native AES-GCM addon was not built (${reason}); encryption uses node:crypto, which is several times slower on large reads and writes of encrypted volumes. To build it later: install python3, make and a C compiler, then run npm rebuild galleonfs (or npm run build:native in its directory).`)
  process.exit(0)
}

const setting = process.env.GALLEONFS_NATIVE_AEAD
if (setting === '0' || setting === 'false' || setting === 'off') give(`GALLEONFS_NATIVE_AEAD=${setting}`)

// node-gyp: the one npm puts on PATH for its scripts, else the copy bundled with npm.
const prefix = dirname(dirname(process.execPath))
const candidates = [
  process.env.npm_execpath === undefined ? undefined : join(dirname(dirname(process.env.npm_execpath)), 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')
].filter((path) => path !== undefined && existsSync(path))
const onPath = spawnSync('node-gyp', ['--version'], { stdio: 'ignore' }).status === 0
if (!onPath && candidates.length === 0) give('node-gyp was not found (it comes with npm)')
const command = onPath ? 'node-gyp' : process.execPath
const args = onPath ? ['rebuild'] : [candidates[0], 'rebuild']
// Node's own headers when npm does not name them (npm passes its nodedir setting in the environment).
if (process.env.npm_config_nodedir === undefined && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`)

const build = spawnSync(command, args, { cwd: directory, encoding: 'utf8', stdio: required ? 'inherit' : 'pipe' })
if (build.error !== undefined) give(`node-gyp could not run (${build.error.message})`)
if (build.status !== 0 || !existsSync(built)) give(`node-gyp exited with code ${build.status}`, `${build.stdout ?? ''}${build.stderr ?? ''}`)

// The build must give standard AES-256-GCM: checked in a fresh process (a broken addon could crash it).
const check = `
const { createCipheriv, randomBytes } = require('node:crypto')
const addon = require(${JSON.stringify(built)})
for (const size of [1, 4096, 65536]) {
  const key = randomBytes(32), nonce = randomBytes(12), aad = randomBytes(28), plain = randomBytes(size)
  const c = createCipheriv('aes-256-gcm', key, nonce); c.setAAD(aad)
  const expected = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()])
  const out = new Uint8Array(size + 16)
  addon.seal(key, nonce, aad, plain, out)
  if (!expected.equals(out)) throw new Error('ciphertext differs from node:crypto at ' + size + ' bytes')
  const back = new Uint8Array(size)
  if (!addon.open(key, nonce, aad, out, back) || !plain.equals(back)) throw new Error('open failed at ' + size + ' bytes')
  out[size >> 1] ^= 1
  if (addon.open(key, nonce, aad, out, back) || back.some((b) => b !== 0)) throw new Error('an altered ciphertext was accepted at ' + size + ' bytes')
}`
const verified = spawnSync(process.execPath, ['-e', check], { encoding: 'utf8' })
if (verified.status !== 0) {
  rmSync(built, { force: true })
  const lines = (verified.stderr ?? '').split('\n')
  const why = lines.find((line) => /^\w*Error: /.test(line)) ?? `exit code ${verified.status}, signal ${verified.signal}`
  give(`the built addon failed its check (${why.trim()}); it was removed`)
}
console.log(`galleonfs: built the native AES-GCM addon (${built})`)
