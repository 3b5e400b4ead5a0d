// README "Set-up" and "Requirements": what `npm start` opens, what `npm test`'s output ends with,
// and what an install does when the native AES-GCM addon cannot be built. Each runs the real program
// (examples/quickstart.ts, package.json's test runner and reporters, scripts/build-native.mjs on a
// copy of the native sources) in a temporary directory.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { isAbsolute, join } from 'node:path'
import { scriptArgs, ROOT } from './support/child-script.js'

interface Ran { code: number, stdout: string, stderr: string }

async function run (command: string, args: string[], options: { cwd: string, env?: NodeJS.ProcessEnv }): Promise<Ran> {
  const env = { ...(options.env ?? process.env) }
  delete env.NODE_TEST_CONTEXT
  return await new Promise((resolve) => {
    execFile(command, args, { cwd: options.cwd, env, maxBuffer: 16 << 20, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1, stdout, stderr })
    })
  })
}

let dir = ''
before(async () => { dir = await mkdtemp(join(tmpdir(), 'h56-setup-')) })
after(async () => { await rm(dir, { recursive: true, force: true }) })

describe('README Set-up: npm start (examples/quickstart.ts)', () => {
  it('opens ./galleonfs-data by default, and the first argument before GALLEONFS_STORAGE_PATH', async () => {
    const cwd = join(dir, 'quickstart')
    await mkdir(cwd)
    const quickstart = scriptArgs(join(ROOT, 'examples', 'quickstart.ts'))
    const plain = { ...process.env }
    delete plain.GALLEONFS_STORAGE_PATH
    const byDefault = await run(process.execPath, quickstart, { cwd, env: plain })
    assert.equal(byDefault.code, 0, byDefault.stderr)
    assert.match(byDefault.stdout, /quickstart: OK/)
    assert.ok(existsSync(join(cwd, 'galleonfs-data', 'metadata')), 'nothing stored in ./galleonfs-data')
    const both = await run(process.execPath, [...quickstart, join(cwd, 'from-argument')], { cwd, env: { ...plain, GALLEONFS_STORAGE_PATH: join(cwd, 'from-env') } })
    assert.equal(both.code, 0, both.stderr)
    assert.ok(existsSync(join(cwd, 'from-argument', 'metadata')), 'the argument was not used')
    assert.ok(!existsSync(join(cwd, 'from-env')), 'GALLEONFS_STORAGE_PATH was used although an argument was given')
  })
})

// "The output is TAP; its last lines are a `# failure summary` block naming each failed test with
// its file, line and error". Run as package.json's test script runs the suite (its bundler,
// test-bundles.mjs, with its node flags and reporters) on files that fail common ways: an
// assertion, a module that throws as it loads (a missing export, a syntax error), a process that
// exits under the test (a crash), and an assertion in a TypeScript test of the repository, which
// runs from its bundle and must still be named by its own file and line.
describe('README Set-up: npm test ends with a failure summary', () => {
  let output = ''
  let summary = ''
  const entries = new Map<string, string>()
  // Bundles must lie in the repository (they find node_modules there), and so must the files bundled.
  const inRepository = join(ROOT, '.test-js', `h56-${process.pid}-${Date.now()}`)
  const bundled = join(inRepository, 'bundled.test.ts')

  before(async () => {
    const script = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.test as string
    const words = script.split(/\s+/)
    const bundler = words.indexOf('test/support/test-bundles.mjs')
    const split = words.indexOf('--', bundler)
    assert.ok(bundler > 0 && words[bundler - 1] === 'node' && split > bundler, `package.json's test script does not run node test/support/test-bundles.mjs <files> -- <node flags>: ${script}`)
    // package.json's own node flags (loader, concurrency, reporters and their destinations), paths made absolute.
    const flags = words.slice(split + 1).map((word) => {
      const [flag, value] = word.split('=') as [string, string | undefined]
      if (value !== undefined && value.startsWith('.') && (flag === '--test-reporter' || flag === '--import')) return `${flag}=${join(ROOT, value)}`
      return word.startsWith('./') ? join(ROOT, word) : word
    })
    assert.ok(flags.includes('--test'), `package.json's test script runs no node --test: ${script}`)
    assert.ok(flags.some((flag) => flag.includes('failure-summary-reporter')), `package.json's test script has no failure summary reporter: ${script}`)
    const cwd = join(dir, 'summary')
    await mkdir(cwd)
    await mkdir(inRepository, { recursive: true })
    await writeFile(join(cwd, 'assertion.test.mjs'), "import { it } from 'node:test'\nimport assert from 'node:assert/strict'\nit('passes', () => {})\nit('compares (seed 42)', () => { assert.equal(1, 2) })\n")
    await writeFile(join(cwd, 'import.test.mjs'), "import { it } from 'node:test'\nthrow new Error('the module is broken: H56-IMPORT')\n")
    await writeFile(join(cwd, 'exit.test.mjs'), "import { it } from 'node:test'\nit('exits', async () => { await new Promise((resolve) => setTimeout(resolve, 20)); process.exit(3) })\n")
    await writeFile(bundled, "import { it } from 'node:test'\nimport assert from 'node:assert/strict'\n\nconst two: number = 2\nit('a bundled test fails', () => {\n  assert.equal(two, 3)\n})\n")
    const files = ['assertion.test.mjs', 'import.test.mjs', 'exit.test.mjs', bundled]
    const ran = await run(process.execPath, [join(ROOT, 'test', 'support', 'test-bundles.mjs'), `--outdir=${join(inRepository, 'out')}`, ...files, '--', ...flags], { cwd })
    assert.notEqual(ran.code, 0)
    output = ran.stdout
    const start = output.lastIndexOf('# failure summary')
    assert.ok(start >= 0, `no failure summary in:\n${output}\n${ran.stderr}`)
    summary = output.slice(start)
    // Entries: "# n. name" then "#    at file:line" and the error's lines.
    for (const entry of summary.split(/\n(?=# \d+\. )/).slice(1)) entries.set(entry.split('\n')[0]?.replace(/^# \d+\. /, '') ?? '', entry)
  })

  after(async () => { await rm(inRepository, { recursive: true, force: true }) })

  it('the summary is the last lines of the output, counts the failures and names each with its file and line', () => {
    assert.match(summary, /^# failure summary: 4 failed\n/)
    assert.ok(summary.trimEnd().split('\n').every((line) => line.startsWith('#')), `output after the summary:\n${summary}`)
    assert.ok(output.indexOf('# duration_ms') < output.lastIndexOf('# failure summary'), 'TAP totals after the summary')
    const assertion = entries.get('compares (seed 42)')
    assert.ok(assertion !== undefined, `no entry for the failed assertion in:\n${summary}`)
    assert.match(assertion, /assertion\.test\.mjs:4\b/)
    assert.match(assertion, /1 !== 2/)
    assert.ok([...entries.keys()].some((name) => name.endsWith('import.test.mjs')), summary)
    assert.ok([...entries.keys()].some((name) => name.endsWith('exit.test.mjs')), summary)
  })

  it('a TypeScript test run from its bundle is named by its own file and line', () => {
    const entry = entries.get('a bundled test fails')
    assert.ok(entry !== undefined, `no entry for the bundled test in:\n${summary}`)
    assert.ok(entry.includes(`at ${bundled}:5\n`), `the entry does not name ${bundled}:5:\n${entry}`)
    assert.match(entry, /2 !== 3/)
  })

  it('a file that throws while it loads is named with its error, not just "test failed"', () => {
    const entry = [...entries.entries()].find(([name]) => name.endsWith('import.test.mjs'))?.[1] ?? ''
    assert.match(entry, /H56-IMPORT/, `the summary entry does not say what went wrong:\n${entry}`)
  })

  it('a file whose process exits under a test is named with its exit code, not just "test failed"', () => {
    const entry = [...entries.entries()].find(([name]) => name.endsWith('exit.test.mjs'))?.[1] ?? ''
    assert.match(entry, /exit(ed)?( with)? code 3\b/i, `the summary entry does not say how the process ended:\n${entry}`)
  })
})

// "npm install / npm ci try to build it ... and go on without it if that fails, saying why; npm run
// build:native builds it and fails loudly." Run on a copy of the sources (node-gyp rebuild empties
// the build directory: the checkout's own addon stays untouched) with a PATH that has no Python.
describe('README Requirements: the optional native addon', () => {
  it('an install that cannot build it goes on (exit 0) saying why, in node-gyp\'s words; build:native fails (exit 1)', async (t) => {
    const copy = join(dir, 'native-copy')
    await mkdir(join(copy, 'scripts'), { recursive: true })
    await mkdir(join(copy, 'native', 'aead'), { recursive: true })
    await mkdir(join(copy, 'empty-path'))
    await copyFile(join(ROOT, 'scripts', 'build-native.mjs'), join(copy, 'scripts', 'build-native.mjs'))
    for (const file of ['binding.gyp', 'aead.c']) await copyFile(join(ROOT, 'native', 'aead', file), join(copy, 'native', 'aead', file))
    assert.ok(isAbsolute(process.execPath))
    // No python3, make or compiler on PATH; npm's own node-gyp is still found next to node.
    const env: NodeJS.ProcessEnv = { HOME: process.env.HOME, PATH: join(copy, 'empty-path') }
    const required = await run(process.execPath, [join(copy, 'scripts', 'build-native.mjs'), '--required'], { cwd: copy, env })
    assert.equal(required.code, 1, `build:native did not fail: ${required.stdout}${required.stderr}`)
    assert.match(required.stderr, /the native AES-GCM addon was not built/)
    assert.ok(!existsSync(join(copy, 'native', 'aead', 'build', 'Release', 'galleonfs_aead.node')))
    const cause = /gyp ERR! stack Error: (.+)/.exec(required.stdout + required.stderr)?.[1]?.trim()
    if (cause === undefined) {
      t.skip(`node-gyp did not fail with a stated cause here (its output: ${required.stderr.split('\n').slice(-3).join(' | ')})`)
      return
    }
    const install = await run(process.execPath, [join(copy, 'scripts', 'build-native.mjs')], { cwd: copy, env })
    assert.equal(install.code, 0, `the install step failed: ${install.stderr}`)
    assert.match(install.stderr, /not built .*encryption uses node:crypto/)
    assert.ok(install.stderr.includes(cause), `the install step says "${install.stderr.trim()}", not why node-gyp failed ("${cause}")`)
  })
})
