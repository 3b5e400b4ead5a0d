// Review r4 of this session's changes: the transpiled tree children run (test/support/child-script.ts)
// (its joined class change, whose first caller stops waiting, is in test/migration-join.test.ts).

import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const REPO = fileURLToPath(new URL('..', import.meta.url))
const scratch: string[] = []
after(() => { for (const dir of scratch) rmSync(dir, { recursive: true, force: true }) })

/** A small repository laid out like ours, with its own copy of child-script.ts and transpile.mjs. */
function fakeRepo (files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'galleon-r4-repo-'))
  scratch.push(root)
  mkdirSync(join(root, 'test', 'support'), { recursive: true })
  copyFileSync(join(REPO, 'tsconfig.json'), join(root, 'tsconfig.json'))
  for (const file of ['child-script.ts', 'transpile.mjs']) copyFileSync(join(REPO, 'test', 'support', file), join(root, 'test', 'support', file))
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
