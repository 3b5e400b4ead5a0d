// The package as a consumer gets it: packed by `npm pack` (its prepack script builds it) from a copy
// of this checkout, installed from the tarball into a new project, and used there the way an
// application does: JavaScript under plain node (no tsx), TypeScript checked by tsc against the
// package's own .d.ts files, the `galleonfs` program from node_modules/.bin. Every other test
// imports the sources through tsx, so only this one sees what `files`, `exports`, the build
// configuration and the emitted JavaScript and types really give a user.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { cp, mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { builtinModules } from 'node:module'
import { tmpdir } from 'node:os'
import { join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url)).replace(/[\\/]$/, '')
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
/** Paths of the checkout that are build output or local state, never in a fresh clone (.gitignore). */
const NOT_IN_A_CLONE = new Set(['node_modules', '.git', 'dist', '.test-js', '.tmp', 'galleonfs-data', join('native', 'aead', 'build'), join('docs', 'api')])
/** A child that has not exited by then is killed and its test fails. */
const CHILD_TIMEOUT_MS = 120_000

interface ChildResult { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string }

async function run (command: string, args: string[], cwd: string, env: Record<string, string | undefined> = {}): Promise<ChildResult> {
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env }
  // The children are plain programs, not part of this test run.
  delete childEnv.NODE_TEST_CONTEXT
  delete childEnv.NODE_OPTIONS
  for (const [key, value] of Object.entries(childEnv)) if (value === undefined) delete childEnv[key]
  return await new Promise<ChildResult>((resolve, reject) => {
    const child = spawn(command, args, { cwd, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const timer = setTimeout(() => { stderr += `\n[test] killed after ${CHILD_TIMEOUT_MS} ms`; child.kill('SIGKILL') }, CHILD_TIMEOUT_MS)
    child.on('error', (err) => { clearTimeout(timer); reject(err) })
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }) })
  })
}

function succeeded (result: ChildResult, what: string): string {
  assert.equal(result.code, 0, `${what} exited with ${result.code ?? result.signal}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`)
  return result.stdout
}

async function filesUnder (dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries.filter((entry) => entry.isFile()).map((entry) => relative(dir, join(entry.parentPath, entry.name)).split(sep).join('/'))
}

/** The ```ts blocks of a markdown text marked `<!-- runnable ... -->` (as test/readme.test.ts runs them). */
function runnableTsBlocks (markdown: string): Array<{ line: number, code: string }> {
  const lines = markdown.split(/\r?\n/)
  const blocks: Array<{ line: number, code: string }> = []
  for (let i = 0; i < lines.length; i++) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i] as string)) {
      if (/^```/.test(lines[i] as string)) i = lines.findIndex((candidate, j) => j > i && /^```\s*$/.test(candidate))
      if (i === -1) break
      continue
    }
    let above = i - 1
    while (above >= 0 && (lines[above] as string).trim() === '') above--
    const end = lines.findIndex((candidate, j) => j > i && /^```\s*$/.test(candidate))
    if (/^<!--\s*runnable\b/.test((lines[above] ?? '').trim())) blocks.push({ line: i + 1, code: lines.slice(i + 1, end).join('\n') + '\n' })
    i = end
  }
  return blocks
}

// What the consumer program does, under plain node in the new project: every subpath the exports
// map promises, an in-memory and an on-disk instance (the second on a ClassicLevel and a sublevel
// of it handed in, as the README's "Backends" section shows), snapshots, and FUSE's lazy loading.
const CONSUMER_MJS = `
import { createRequire } from 'node:module'
import { GalleonFS, WriteConcern, isGalleonError } from 'galleonfs'
import { ClassicLevel } from 'classic-level'
import { LevelBlockStore } from 'galleonfs/backends/level'
import { FileBlockStore } from 'galleonfs/backends/file'
import { MemoryBlockStore } from 'galleonfs/backends/memory'
import { blockStoreSuite, snapshotSuite } from 'galleonfs/test/conformance'
import pkg from 'galleonfs/package.json' with { type: 'json' }

const report = { version: pkg.version, subpaths: {} }
for (const name of JSON.parse(process.argv[2])) report.subpaths[name] = Object.keys(await import('galleonfs/backends/' + name)).length
report.fuseNativeLoaded = Object.keys(createRequire(import.meta.url).cache).some((file) => /fuse-native/.test(file))
report.suites = typeof blockStoreSuite === 'function' && typeof snapshotSuite === 'function'

const text = (bytes) => new TextDecoder().decode(bytes).replace(/\\0+$/, '')
const memory = await GalleonFS.open({ inMemory: true })
try {
  const vol = await memory.createVolume({ name: 'm', sizeBytes: '1M' })
  await memory.write(vol, 0, new TextEncoder().encode('v1'), WriteConcern.WriteAcknowledged)
  await memory.createSnapshot(vol, 's1')
  await memory.write(vol, 0, new TextEncoder().encode('v2'))
  report.memory = [text(await memory.read(vol, 0, 8)), text(await memory.read({ volume: 'm', snapshot: 's1' }, 0, 8))]
  report.store = new MemoryBlockStore().name
} finally {
  await memory.close()
}

const disk = async () => await GalleonFS.open({ storagePath: 'data' })
let g = await disk()
try {
  const vol = await g.createVolume({ name: 'd', sizeBytes: '4M' })
  await g.writeBlock(vol, 3, new Uint8Array(vol.blockSize).fill(9), WriteConcern.WriteDurable)
  await g.createSnapshot(vol, 'before')
  await g.writeBlock(vol, 3, new Uint8Array(vol.blockSize).fill(1), WriteConcern.WriteDurable)
} finally {
  await g.close()
}
g = await disk()
try {
  report.disk = { backend: g.backend, live: (await g.readBlock('d', 3))[0], snapshot: (await g.readBlock({ volume: 'd', snapshot: 'before' }, 3))[0] }
  try { await g.write({ volume: 'd', snapshot: 'before' }, 0, new Uint8Array(1)) } catch (err) { report.disk.snapshotWrite = isGalleonError(err) ? err.code : String(err) }
} finally {
  await g.close()
}

const classic = new ClassicLevel('level-metadata')
const given = await GalleonFS.open({ metadata: classic, blockStore: new LevelBlockStore({ db: classic.sublevel('blocks', { keyEncoding: 'utf8', valueEncoding: 'view' }) }) })
try {
  const vol = await given.createVolume({ name: 'l', sizeBytes: '1M' })
  await given.write(vol, 100, new TextEncoder().encode('level'), WriteConcern.WriteDurable)
  report.level = text(await given.read(vol, 100, 8))
} finally {
  await given.close()
}
report.file = new FileBlockStore({ location: 'f' }).name
console.log(JSON.stringify(report))
`

// The same uses in TypeScript, for the type check (the README's runnable examples are checked too).
const CONSUMER_TS = `
import { ClassicLevel } from 'classic-level'
import { MemoryLevel } from 'memory-level'
import { GalleonFS, GalleonError, WriteConcern, type AnyLevelDatabase, type BlockStore, type Volume } from 'galleonfs'
import { NbdServer } from 'galleonfs/backends/nbd'
import { FuseMountDriver, guardFuseThreads } from 'galleonfs/backends/fuse'
import { TcpTransport } from 'galleonfs/backends/tcp'
import { EtcdCoordinator } from 'galleonfs/backends/etcd'
import { MemoryBlockStore } from 'galleonfs/backends/memory'
import { LevelBlockStore } from 'galleonfs/backends/level'
import { FileBlockStore } from 'galleonfs/backends/file'
import { DirectoryBackupTarget } from 'galleonfs/backends/directory'
import { blockStoreSuite } from 'galleonfs/test/conformance'

const classic = new ClassicLevel('metadata')
const g: GalleonFS = await GalleonFS.open({ metadata: classic, blockStore: new LevelBlockStore({ db: classic.sublevel('blocks') }) })
const m: GalleonFS = await GalleonFS.open({ metadata: new MemoryLevel(), blockStore: new MemoryBlockStore() })
const vol: Volume = await g.createVolume({ name: 'a', sizeBytes: '1M' })
const size: number = vol.sizeBytes
await g.write(vol, 0, new Uint8Array(4), WriteConcern.WriteDurable)
const bytes: Uint8Array = await g.read(vol, 0, 4)
const stores: BlockStore[] = [new FileBlockStore({ location: 'f' }), new MemoryBlockStore()]
const databases: AnyLevelDatabase[] = [classic, new MemoryLevel(), classic.sublevel('x')]
const guarded: boolean = guardFuseThreads()
const error: GalleonError = new GalleonError('INVALID_ARGUMENT', 'example')
blockStoreSuite({ name: 'mine', factory: () => new MemoryBlockStore() })
console.log(size, bytes, stores, databases, guarded, error, m, NbdServer, FuseMountDriver, TcpTransport, EtcdCoordinator, DirectoryBackupTarget)
`

describe('the packed package, installed into a new project', () => {
  let work = ''
  let app = ''
  let tarball = ''
  let packed: string[] = []

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'galleonfs-package-'))
    // A copy of the checkout as a fresh clone has it, plus one stale output of a module that no longer
    // exists: the pack must build from scratch and ship neither.
    const stage = join(work, 'stage')
    await cp(ROOT, stage, { recursive: true, filter: (source) => !NOT_IN_A_CLONE.has(relative(ROOT, source)) && !source.endsWith('.log') })
    await mkdir(join(stage, 'dist', 'src'), { recursive: true })
    await writeFile(join(stage, 'dist', 'src', 'removed-module.js'), 'export const stale = true\n')
    await symlink(join(ROOT, 'node_modules'), join(stage, 'node_modules'), 'junction')
    // npm pack runs the prepack script (the build), as npm publish does.
    succeeded(await run('npm', ['pack', '--pack-destination', work], stage), 'npm pack')
    const name = (await readdir(work)).find((file) => file.endsWith('.tgz'))
    assert.ok(name !== undefined, 'npm pack left no tarball')
    tarball = join(work, name)

    app = join(work, 'app')
    await mkdir(app)
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module' }, null, 2) + '\n')
    // --ignore-scripts: the install script only builds the optional AES addon (a test below builds it
    // from the installed package on its own), and npm 11 would not run it unasked anyway. No audit or
    // fund requests; dependencies come from npm's cache when it has them, as after `npm ci`.
    succeeded(await run('npm', ['install', tarball, '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'], app), 'npm install of the tarball')
    packed = await filesUnder(join(app, 'node_modules', 'galleonfs'))
  })

  after(async () => {
    if (work !== '') await rm(work, { recursive: true, force: true })
  })

  it('ships the built library, the CLI and the native sources, without tests, test support or stale output', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string>, files: string[] }
    for (const file of ['dist/src/index.js', 'dist/src/index.d.ts', 'dist/test/conformance/index.js', 'dist/test/conformance/index.d.ts', 'native/aead/binding.gyp', 'native/aead/aead.c', 'scripts/build-native.mjs', 'README.md']) {
      assert.ok(packed.includes(file), `the package lacks ${file}`)
    }
    for (const backend of await readdir(join(ROOT, 'backends'))) {
      assert.ok(packed.includes(`dist/backends/${backend}/index.js`) && packed.includes(`dist/backends/${backend}/index.d.ts`), `the package lacks the ${backend} backend that galleonfs/backends/${backend} promises`)
    }
    for (const bin of Object.values(pkg.bin)) assert.ok(packed.includes(bin.replace(/^\.\//, '')), `the package lacks the program ${bin}`)
    assert.deepEqual(packed.filter((file) => /\.test\.(js|d\.ts)$/.test(file) || file.startsWith('dist/test/support/') || file.startsWith('dist/bench/')), [], 'test files, test support or benchmarks in the package')
    assert.ok(!packed.includes('dist/src/removed-module.js'), 'the pack shipped a stale build output (dist/ is not cleaned before the build)')
    assert.deepEqual(packed.filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts')), [], 'TypeScript sources in the package')
  })

  it('imports nothing at run time but Node built-ins, its own files and its declared dependencies', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { name: string, dependencies: Record<string, string>, optionalDependencies?: Record<string, string> }
    const declared = new Set([pkg.name, ...Object.keys(pkg.dependencies), ...Object.keys(pkg.optionalDependencies ?? {})])
    const builtins = new Set(builtinModules)
    const problems: string[] = []
    const root = join(app, 'node_modules', 'galleonfs')
    for (const file of packed.filter((name) => name.endsWith('.js'))) {
      const code = await readFile(join(root, file), 'utf8')
      const specifiers = [...code.matchAll(/\bfrom\s+['"]([^'"]+)['"]|\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)|\brequire\s*\(\s*['"]([^'"]+)['"]\s*\)|createRequire\(import\.meta\.url\)\(\s*['"]([^'"]+)['"]\s*\)/g)]
        .map((match) => match[1] ?? match[2] ?? match[3] ?? match[4] as string)
      for (const specifier of specifiers) {
        if (specifier.startsWith('.')) {
          if (/\.ts$/.test(specifier)) problems.push(`${file} imports ${specifier} (a .ts file)`)
          else if (!specifier.endsWith('.node') && !existsSync(join(root, file, '..', specifier))) problems.push(`${file} imports ${specifier}, which is not in the package`)
          continue
        }
        if (specifier.startsWith('node:') || builtins.has(specifier)) continue
        const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0] as string
        if (!declared.has(name)) problems.push(`${file} imports ${specifier}, which is not among the package's dependencies`)
      }
    }
    assert.deepEqual(problems, [])
  })

  describe('used by the new project', { concurrency: true }, () => {
    it('works under plain node: every subpath, an in-memory and an on-disk instance, snapshots, a ClassicLevel handed in', async () => {
      const backends = await readdir(join(ROOT, 'backends'))
      await writeFile(join(app, 'consumer.mjs'), CONSUMER_MJS)
      const output = succeeded(await run(process.execPath, ['consumer.mjs', JSON.stringify(backends)], app), 'the consumer program')
      const report = JSON.parse(output.trim().split('\n').at(-1) as string) as Record<string, any>
      const expected = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string }
      assert.equal(report.version, expected.version)
      for (const backend of backends) assert.ok(report.subpaths[backend] > 0, `galleonfs/backends/${backend} exports nothing`)
      assert.equal(report.fuseNativeLoaded, false, 'importing galleonfs/backends/fuse loaded fuse-native (it must load only when a FUSE mount is made)')
      assert.equal(report.suites, true)
      assert.deepEqual(report.memory, ['v2', 'v1'])
      assert.equal(report.store, 'memory')
      assert.deepEqual(report.disk, { backend: 'file', live: 1, snapshot: 9, snapshotWrite: 'READ_ONLY' })
      assert.equal(report.level, 'level')
      assert.equal(report.file, 'file')
    })

    it('type-checks a consumer program and the README examples against the package types (tsc --strict, nodenext)', async () => {
      const sources = ['consumer.ts']
      await writeFile(join(app, sources[0] as string), CONSUMER_TS)
      // The README as packed: what a user reads on the registry page.
      await mkdir(join(app, 'readme'))
      for (const block of runnableTsBlocks(await readFile(join(app, 'node_modules', 'galleonfs', 'README.md'), 'utf8'))) {
        const source = join('readme', `line-${block.line}.ts`)
        await writeFile(join(app, source), block.code)
        sources.push(source)
      }
      assert.ok(sources.length > 5, 'the packed README has no runnable examples')
      const result = await run(process.execPath, [TSC, '--strict', '--noEmit', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', ...sources], app)
      assert.equal(result.code, 0, `tsc found errors in code using the installed package (README examples are readme/line-<line of their fence>.ts):\n${result.stdout}${result.stderr}`)
    })

    it('runs the galleonfs program from node_modules/.bin, reporting the package version', async () => {
      const expected = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string }
      const bin = join(app, 'node_modules', '.bin', 'galleonfs')
      assert.equal(succeeded(await run(bin, ['--version'], app), 'galleonfs --version').trim(), expected.version)
      assert.match(succeeded(await run(bin, ['--help'], app), 'galleonfs --help'), /Usage: galleonfs/)
    })
  })

  it('builds its native AES-GCM addon from the packed sources, and drives fuse-native without a hoisted node-gyp-build', async (t) => {
    const root = join(app, 'node_modules', 'galleonfs')
    // What `npm rebuild galleonfs` runs. Where the checkout has the addon built (CI requires it), this
    // machine can build it, so the package must be able to as well.
    const required = process.env.GALLEONFS_REQUIRE_NATIVE_AEAD === '1' || existsSync(join(ROOT, 'native', 'aead', 'build', 'Release', 'galleonfs_aead.node'))
    const build = await run(process.execPath, [join(root, 'scripts', 'build-native.mjs'), '--required'], root)
    if (build.code !== 0 && !required) {
      t.skip(`the native addon cannot be built on this machine: ${build.stderr.trim().split('\n').at(-1) ?? ''}`)
      return
    }
    succeeded(build, 'the package\'s scripts/build-native.mjs')
    // An isolated layout (as pnpm makes, or npm when versions differ): node-gyp-build, a dependency of
    // fuse-native and classic-level but not of galleonfs, is only in their own node_modules.
    const modules = join(app, 'node_modules')
    for (const dependent of ['fuse-native', 'classic-level']) {
      await cp(join(modules, 'node-gyp-build'), join(modules, dependent, 'node_modules', 'node-gyp-build'), { recursive: true })
    }
    await rename(join(modules, 'node-gyp-build'), join(work, 'hoisted-node-gyp-build'))
    const probe = `
      import { guardFuseThreads } from 'galleonfs/backends/fuse'
      console.log(JSON.stringify({ guarded: guardFuseThreads() }))
    `
    await writeFile(join(app, 'fuse-probe.mjs'), probe)
    const result = await run(process.execPath, ['fuse-probe.mjs'], app)
    if (result.code !== 0 && /libfuse|fuse\.so/i.test(result.stderr)) {
      t.skip(`fuse-native's binding cannot be loaded here (libfuse missing): ${result.stderr.trim().split('\n')[0] ?? ''}`)
      return
    }
    assert.deepEqual(JSON.parse(succeeded(result, 'guardFuseThreads() in the installed package').trim()), { guarded: true })
  })
})
