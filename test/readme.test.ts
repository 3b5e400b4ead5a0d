// Runs the README's examples and examples/quickstart.ts the way a user would: as separate Node
// processes, each in a fresh temporary directory, checking the exit code and the printed output.
//
// Which README blocks run: every ```ts fence whose closest non-blank line above is an HTML comment
//
//     <!-- runnable expect="text" expect="more text" -->
//
// Each `expect` value must appear in the block's stdout (at least one is required, so a block cannot
// pass by printing nothing). Other ```ts blocks (signatures, fragments) are documentation only.
// A block is written to <tmp>/example.ts next to a package.json of type "module" and a symlink to
// this repository's node_modules (so third-party imports such as classic-level resolve as they
// would in an application), with `from 'galleonfs'` rewritten to src/index.ts and
// `from 'galleonfs/backends/<name>'` to backends/<name>/index.ts, then run with
// `node --import tsx example.ts` with the temporary directory as cwd.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { freePort } from './support/net.js'
import { scriptArgs } from './support/child-script.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const README = join(ROOT, 'README.md')
const QUICKSTART = join(ROOT, 'examples', 'quickstart.ts')
// Absolute, so that the loader is found from a cwd without node_modules of its own.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href
/** A child that has not exited by then is killed and its test fails. */
const CHILD_TIMEOUT_MS = 60_000

/** One runnable ```ts block of the README. */
interface RunnableBlock {
  /** 1-based line of the opening fence. */
  line: number
  /** Closest heading above the block, for the test name. */
  heading: string
  code: string
  expects: string[]
  /** `ts`: a program importing galleonfs; `sh`: a bash script using the galleonfs program. */
  lang: 'ts' | 'sh'
}

/** The runnable blocks of a markdown text (see the comment at the top of this file). */
function runnableBlocks (markdown: string): RunnableBlock[] {
  const lines = markdown.split(/\r?\n/)
  const blocks: RunnableBlock[] = []
  let heading = '(top)'
  let inFence = false
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string
    if (/^(```|~~~)/.test(line)) {
      if (inFence) { inFence = false; continue }
      inFence = true
      const lang = /^```(ts|typescript|sh|bash)\s*$/.exec(line)?.[1]
      if (lang === undefined) continue
      let above = i - 1
      while (above >= 0 && (lines[above] as string).trim() === '') above--
      const marker = /^<!--\s*runnable\b(.*?)-->\s*$/.exec((lines[above] ?? '').trim())
      if (marker === null) continue
      const expects = [...(marker[1] as string).matchAll(/expect="([^"]*)"/g)].map((match) => match[1] as string)
      const end = lines.findIndex((candidate, j) => j > i && /^```\s*$/.test(candidate))
      if (end === -1) throw new Error(`README.md:${i + 1}: the runnable block is never closed`)
      blocks.push({ line: i + 1, heading, code: lines.slice(i + 1, end).join('\n') + '\n', expects, lang: lang === 'sh' || lang === 'bash' ? 'sh' : 'ts' })
      i = end
      inFence = false
      continue
    }
    if (!inFence) {
      const title = /^#{1,6}\s+(.*)$/.exec(line)
      if (title !== null) heading = (title[1] as string).trim()
    }
  }
  return blocks
}

/** Points `galleonfs` imports (static, dynamic, side-effect) at this checkout's sources. */
function rewriteImports (code: string): string {
  return code.replace(/(\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])galleonfs(\/[^'"]*)?\2/g, (_match, prefix: string, quote: string, subpath: string | undefined) => {
    let target: string
    if (subpath === undefined) {
      target = join(ROOT, 'src', 'index.ts')
    } else {
      const backend = /^\/backends\/([a-z0-9-]+)$/.exec(subpath)
      if (backend === null) throw new Error(`README imports galleonfs${subpath}, which this test does not know how to map to a source file`)
      target = join(ROOT, 'backends', backend[1] as string, 'index.ts')
    }
    if (!existsSync(target)) throw new Error(`README imports galleonfs${subpath ?? ''}, but ${target} does not exist`)
    return `${prefix}${quote}${pathToFileURL(target).href}${quote}`
  })
}

interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs `node --import tsx ...args` and collects its output. */
async function runNode (args: string[], options: { cwd: string, env?: Record<string, string | undefined> }): Promise<ChildResult> {
  return await runProgram(process.execPath, ['--import', TSX, ...args], options)
}

/** A loopback port that was free a moment ago. */

/**
 * Runs a program in its own process group and collects its output; whatever it left running in
 * the background (a daemon a script started) is killed with the group when it ends.
 */
async function runProgram (command: string, args: string[], options: { cwd: string, env?: Record<string, string | undefined> }): Promise<ChildResult> {
  const env: Record<string, string | undefined> = { ...process.env, ...options.env }
  // The child is a plain program, not part of this test run.
  delete env.NODE_TEST_CONTEXT
  for (const [key, value] of Object.entries(env)) if (value === undefined) delete env[key]
  return await new Promise<ChildResult>((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    child.once('exit', () => { try { process.kill(-(child.pid as number), 'SIGKILL') } catch {} })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const timer = setTimeout(() => {
      stderr += `\n[test] killed after ${CHILD_TIMEOUT_MS} ms`
      child.kill('SIGKILL')
    }, CHILD_TIMEOUT_MS)
    child.on('error', (err) => { clearTimeout(timer); reject(err) })
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }) })
  })
}

function assertSucceeded (result: ChildResult, what: string): void {
  assert.equal(result.code, 0, `${what} exited with ${result.code ?? result.signal}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`)
}

function assertPrinted (result: ChildResult, expected: string, what: string): void {
  assert.ok(result.stdout.includes(expected), `${what} did not print ${JSON.stringify(expected)}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`)
}

async function withTempDir (prefix: string, work: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  try {
    await work(dir)
  } finally {
    // The node_modules symlink is removed, not followed.
    await rm(dir, { recursive: true, force: true })
  }
}

const blocks = runnableBlocks(readFileSync(README, 'utf8'))

describe('README examples', () => {
  it('has runnable blocks, each declaring the output it must print', () => {
    assert.ok(blocks.length > 0, 'README.md has no ```ts block marked <!-- runnable expect="..." -->')
    for (const block of blocks) {
      assert.ok(block.expects.length > 0, `README.md:${block.line} (${block.heading}) is runnable but has no expect="..." in its marker`)
      if (block.lang === 'ts') assert.match(block.code, /from\s*['"]galleonfs['"]/, `README.md:${block.line} (${block.heading}) does not import galleonfs`)
      else assert.match(block.code, /^galleonfs /m, `README.md:${block.line} (${block.heading}) does not run galleonfs`)
    }
    assert.ok(blocks.some((block) => /quick start/i.test(block.heading) && block.lang === 'ts'), 'the Quick start section has no runnable program')
    assert.ok(blocks.some((block) => /quick start/i.test(block.heading) && block.lang === 'sh' && /galleonfs -d /.test(block.code)), 'the Quick start has no runnable daemon and CLI script')
  })

  for (const block of blocks.filter((b) => b.lang === 'sh')) {
    it(`README.md:${block.line} (${block.heading}) runs as a bash script and prints what it promises`, async () => {
      await withTempDir('galleonfs-readme-sh-', async (dir) => {
        // `galleonfs` on PATH is this checkout's program; the script's loopback ports become free ones.
        await mkdir(join(dir, 'bin'))
        await writeFile(join(dir, 'bin', 'galleonfs'), `#!/bin/sh\nexec ${[process.execPath, ...scriptArgs(join(ROOT, 'examples', 'galleonfs.ts'))].map((word) => JSON.stringify(word)).join(' ')} "$@"\n`, { mode: 0o755 })
        let script = block.code
        for (const address of new Set(block.code.match(/127\.0\.0\.1:\d+/g) ?? [])) script = script.split(address).join(`127.0.0.1:${await freePort()}`)
        await writeFile(join(dir, 'script.sh'), script)
        const result = await runProgram('bash', ['-e', '-o', 'pipefail', 'script.sh'], { cwd: dir, env: { PATH: `${join(dir, 'bin')}:${process.env.PATH ?? ''}`, XDG_RUNTIME_DIR: join(dir, 'run') } })
        const what = `the README script at line ${block.line}`
        assertSucceeded(result, what)
        for (const expected of block.expects) assertPrinted(result, expected, what)
      })
    })
  }

  for (const block of blocks.filter((b) => b.lang === 'ts')) {
    it(`README.md:${block.line} (${block.heading}) runs and prints what it promises`, async () => {
      await withTempDir('galleonfs-readme-', async (dir) => {
        await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'readme-example', private: true, type: 'module' }) + '\n')
        await symlink(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'junction')
        await writeFile(join(dir, 'example.ts'), rewriteImports(block.code))
        const result = await runNode(['example.ts'], { cwd: dir, env: { GALLEONFS_STORAGE_PATH: undefined } })
        const what = `the README block at line ${block.line}`
        assertSucceeded(result, what)
        for (const expected of block.expects) assertPrinted(result, expected, what)
      })
    })
  }
})

describe('examples/quickstart.ts (npm start)', () => {
  it('runs twice on the same storage path, the second run finding the first run\'s data', async () => {
    await withTempDir('galleonfs-quickstart-', async (dir) => {
      const storagePath = join(dir, 'data')
      const env = { GALLEONFS_STORAGE_PATH: undefined }

      const first = await runNode([QUICKSTART, storagePath], { cwd: ROOT, env })
      assertSucceeded(first, 'the first run')
      for (const expected of ["created volume 'quickstart'", 'no previous run found', 'run #1: writing', 'scrub verified', 'galleonfs_volumes 1', 'quickstart: OK']) {
        assertPrinted(first, expected, 'the first run')
      }

      const second = await runNode([QUICKSTART, storagePath], { cwd: ROOT, env })
      assertSucceeded(second, 'the second run')
      for (const expected of ["reusing volume 'quickstart'", 'previous run #1: 8 blocks intact', 'previous run #1: byte range intact', 'run #2: writing', 'quickstart: OK']) {
        assertPrinted(second, expected, 'the second run')
      }

      // The embedded default layout: classic-level metadata and file-store segments.
      assert.ok(existsSync(join(storagePath, 'metadata', 'CURRENT')), 'no classic-level database in <storagePath>/metadata')
      const segments = (await readdir(join(storagePath, 'blocks'))).filter((name) => /^seg-[0-9a-f]{16}(-[0-9a-f]{8})?\.log$/.test(name))
      assert.ok(segments.length > 0, 'no segment file in <storagePath>/blocks')
    })
  })

  it('takes the storage path from GALLEONFS_STORAGE_PATH when no argument is given', async () => {
    await withTempDir('galleonfs-quickstart-', async (dir) => {
      const storagePath = join(dir, 'from-env')
      const result = await runNode([QUICKSTART], { cwd: dir, env: { GALLEONFS_STORAGE_PATH: storagePath } })
      assertSucceeded(result, 'the run')
      assertPrinted(result, `GalleonFS quickstart on ${storagePath}`, 'the run')
      assertPrinted(result, 'quickstart: OK', 'the run')
      assert.ok(existsSync(join(storagePath, 'metadata')), 'nothing was stored at GALLEONFS_STORAGE_PATH')
    })
  })
})
