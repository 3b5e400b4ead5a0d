// Review r4 of this session's changes: the transpiled tree children run (test/support/child-script.ts)
// and a replicated class change joined by a second call whose first caller stops waiting.

import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { WriteConcern } from '../src/index.js'
import { until } from './support/wait.js'
import { BS, allInSync, block, diskCluster, type DiskNode } from './support/disk-cluster.js'
import { rejectsWithCode } from './support/assertions.js'

const REPO = fileURLToPath(new URL('..', import.meta.url))
const scratch: string[] = []
after(() => { for (const dir of scratch) rmSync(dir, { recursive: true, force: true }) })

/** A small repository laid out like ours, with its own copy of child-script.ts. */
function fakeRepo (files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'galleon-r4-repo-'))
  scratch.push(root)
  mkdirSync(join(root, 'test', 'support'), { recursive: true })
  copyFileSync(join(REPO, 'tsconfig.json'), join(root, 'tsconfig.json'))
  copyFileSync(join(REPO, 'test', 'support', 'child-script.ts'), join(root, 'test', 'support', 'child-script.ts'))
  writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n')
  symlinkSync(join(REPO, 'node_modules'), join(root, 'node_modules'))
  for (const tree of ['src', 'backends', 'examples']) mkdirSync(join(root, tree), { recursive: true })
  for (const [path, text] of Object.entries(files)) writeFileSync(join(root, path), text)
  return root
}

let loads = 0
/** What scriptArgs of `root`'s child-script gives for `script`, as a new test process would compute it. */
async function argsFor (root: string, script: string): Promise<string[]> {
  // A new instance of the module (its once-per-process refresh starts over), as in the next test process.
  const module = await import(`${pathToFileURL(join(root, 'test', 'support', 'child-script.ts')).href}?load=${++loads}`) as { scriptArgs: (script: string) => string[] }
  return module.scriptArgs(join(root, script))
}

async function run (args: string[], cwd: string): Promise<{ code: number, out: string, err: string }> {
  return await new Promise((resolve) => {
    execFile(process.execPath, args, { cwd }, (error, out, err) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, out: out.trim(), err })
    })
  })
}

describe('child processes run from .test-js/', () => {
  it('a source rewritten with an older mtime (cp -p, tar, rsync -t) is transpiled again', async () => {
    const root = fakeRepo({ 'src/main.ts': "import { value } from './dep.js'\nconsole.log(value)\n", 'src/dep.ts': "export const value: string = 'one'\n" })
    assert.equal((await run(await argsFor(root, 'src/main.ts'), root)).out, 'one')
    writeFileSync(join(root, 'src', 'dep.ts'), "export const value: string = 'two'\n")
    const past = new Date('2020-01-01T00:00:00Z')
    utimesSync(join(root, 'src', 'dep.ts'), past, past)
    assert.equal((await run(await argsFor(root, 'src/main.ts'), root)).out, 'two', 'the child runs the source as it is now')
  })

  it('a source whose output was written after it from its earlier text (a concurrent refresh) is transpiled again', async () => {
    const root = fakeRepo({ 'src/main.ts': "console.log('old')\n" })
    const args = await argsFor(root, 'src/main.ts')
    writeFileSync(join(root, 'src', 'main.ts'), "console.log('new')\n")
    // Another process read the old text before the edit and renamed its output into place after it.
    const later = new Date(Date.now() + 60_000)
    utimesSync(args[0] as string, later, later)
    assert.equal((await run(await argsFor(root, 'src/main.ts'), root)).out, 'new')
  })

  it('a deleted module is not importable from .test-js, as under tsx', async () => {
    const root = fakeRepo({ 'src/main.ts': "import { value } from './dep.js'\nconsole.log(value)\n", 'src/dep.ts': "export const value = 'one'\n" })
    assert.equal((await run(await argsFor(root, 'src/main.ts'), root)).out, 'one')
    unlinkSync(join(root, 'src', 'dep.ts'))
    const tsx = await run(['--import', 'tsx', join(root, 'src', 'main.ts')], root)
    assert.match(tsx.err, /ERR_MODULE_NOT_FOUND|Cannot find module/, 'tsx refuses it')
    const child = await run(await argsFor(root, 'src/main.ts'), root)
    assert.notEqual(child.code, 0, `the transpiled child ran a module whose source is gone: ${child.out}`)
    assert.match(child.err, /ERR_MODULE_NOT_FOUND|Cannot find module/)
  })
})

const kit = diskCluster('galleon-review-r4-')

describe('a replicated class change joined by a second call', () => {
  it('the first caller stopping its wait does not cancel the second: it gets the class it asked for', async () => {
    const { nodes } = await kit.cluster(2)
    const [n1, n2] = nodes as [DiskNode, DiskNode]
    for (const node of nodes) {
      await node.g.createStorageClass({ name: 'pair', parameters: { replication: '2' } })
      await node.g.createStorageClass({ name: 'secret-pair', parameters: { replication: '2', encryption: 'true' } })
    }
    const blocks = 256
    await n1.g.createVolume({ name: 'left', sizeBytes: blocks * BS, storageClass: 'pair' })
    const model = new Uint8Array(blocks * BS)
    for (let i = 0; i < blocks; i++) model.set(block(i + 3), i * BS)
    await n1.g.write('left', 0, model, WriteConcern.WriteReplicated)
    await until('both copies are in sync', async () => await allInSync(n1.g, 'left', 2), 20_000)

    // The first caller (a daemon client that gives up: its connection closes, its signal fires)
    // stops once the conversion is under way; the second asked for the same and still waits.
    const gaveUp = new AbortController()
    const first = n1.g.migrateVolume('left', { storageClass: 'secret-pair' }, { signal: gaveUp.signal, onProgress: () => { gaveUp.abort() } })
    const again = n1.g.migrateVolume('left', { storageClass: 'secret-pair' })
    await assert.rejects(first, rejectsWithCode('CANCELLED'))
    const volume = await again
    assert.equal(volume.storageClass, 'secret-pair')
    assert.equal(volume.encrypted, true)
    for (const node of [n1, n2]) {
      await until(`the copy on ${node.id} is in secret-pair`, async () => (await node.g.getVolume('left')).storageClass === 'secret-pair', 20_000)
      assert.equal((await node.g.getVolume('left')).encrypted, true)
    }
    assert.deepEqual(await n2.g.read('left', 0, model.byteLength), model)
  })
})
