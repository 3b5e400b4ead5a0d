// Review r21 of h54 (7f45c02) and h56 (66edbe0): regressions in what callers and CI logs saw before.
// - openVolumeFile('namespace/name') for a volume that does not exist in an existing namespace is a
//   missing volume (VOLUME_NOT_FOUND, as getVolume says), not "nothing is mounted at <cwd>/...".
// - The failure summary reporter gives a file's exit code or signal only for a file that failed as
//   a whole: a test that failed with an error of its own (a child process it ran killed by a signal,
//   an error carrying an exitCode) keeps its own message in the summary.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../src/index.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const dirs: string[] = []
after(async () => { for (const dir of dirs) await rm(dir, { recursive: true, force: true }) })

describe('review r21: h54 openVolumeFile on namespace/name', () => {
  it('a missing volume of an existing namespace is VOLUME_NOT_FOUND, as getVolume says', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await g.createVolume({ name: 'db', namespace: 'team', sizeBytes: 1024 * 1024 })
      await assert.rejects(g.getVolume('team/missing'), { code: 'VOLUME_NOT_FOUND' })
      // The existing one opens by the same form.
      const file = await g.mounts.openVolumeFile('team/db', { readOnly: true })
      await file.close()
      await assert.rejects(g.mounts.openVolumeFile('team/missing'), { code: 'VOLUME_NOT_FOUND' })
    } finally {
      await g.close()
    }
  })
})

describe('review r21: h56 failure summary of a test whose own error has a signal or exit code', () => {
  it('the summary keeps the test\'s error, not "its process was killed/ended" with the file\'s stderr', async () => {
    const cwd = await mkdtemp(join(tmpdir(), 'galleon-r21-summary-'))
    dirs.push(cwd)
    await writeFile(join(cwd, 'child.test.mjs'), [
      "import { it } from 'node:test'",
      "import { execFileSync } from 'node:child_process'",
      "console.error('R21-NOISE a line the file printed earlier')",
      "it('runs a child that is killed', () => { execFileSync(process.execPath, ['-e', \"console.error('R21-CHILD-SAID'); process.kill(process.pid, 'SIGKILL')\"], { stdio: 'pipe' }) })",
      "it('throws an error with an exit code', () => { throw Object.assign(new Error('R21-OWN-MESSAGE volume v1 was not found'), { exitCode: 2 }) })",
      ''
    ].join('\n'))
    const reporter = join(ROOT, 'test', 'support', 'failure-summary-reporter.mjs')
    // Without node:test's own context variable: the nested run reports to its stdout, not to ours.
    const childEnv = { ...process.env }
    delete childEnv.NODE_TEST_CONTEXT
    const stdout = await new Promise<string>((resolve) => {
      execFile(process.execPath, ['--test', `--test-reporter=${reporter}`, '--test-reporter-destination=stdout', 'child.test.mjs'], { cwd, env: childEnv }, (_err, out) => { resolve(out) })
    })
    const start = stdout.lastIndexOf('# failure summary')
    assert.ok(start >= 0, `no failure summary in:\n${stdout}`)
    const summary = stdout.slice(start)
    assert.match(summary, /# failure summary: 2 failed/)
    const entries = summary.split(/\n(?=# \d+\. )/).slice(1)
    const killed = entries.find((entry) => entry.includes('runs a child that is killed')) ?? ''
    const own = entries.find((entry) => entry.includes('throws an error with an exit code')) ?? ''
    assert.match(killed, /Command failed/, `the entry lost the test's own error:\n${killed}`)
    assert.match(own, /R21-OWN-MESSAGE/, `the entry lost the test's own error:\n${own}`)
  })
})
