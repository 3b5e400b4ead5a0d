// A node:test reporter that prints nothing until the run ends, then one block naming every test
// that failed: its file and line, its name (seeded tests carry their seed in it) and the error.
// `npm test` runs it after the TAP reporter, so the last lines of a long run (all that a CI log
// may keep) still say what failed. Plain JavaScript: reporters are loaded without tsx.

import { readFileSync } from 'node:fs'
import { SourceMap } from 'node:module'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const MAX_ERROR_LINES = 40

/** The error a failed test threw, without node:test's wrapper. */
function errorText (error) {
  if (error === undefined || error === null) return '(no error given)'
  const inner = error.code === 'ERR_TEST_FAILURE' && error.cause !== undefined ? error.cause : error
  const text = inner instanceof Error ? (inner.stack ?? `${inner.name}: ${inner.message}`) : String(inner)
  const lines = text.split('\n')
  return lines.length > MAX_ERROR_LINES ? [...lines.slice(0, MAX_ERROR_LINES), `  ... (${lines.length - MAX_ERROR_LINES} more lines)`].join('\n') : text
}

/** True for a suite or parent test that failed only because a test inside it did. */
function onlyForSubtests (error) {
  return error?.failureType === 'subtestsFailed'
}

/** Lines of a test file's stderr kept for its summary, should the file itself fail. */
const STDERR_LINES = 40

/**
 * A test file that failed as a whole (it threw while loading, or its process exited under a
 * test) is reported by node:test as "test failed" with the process's exit code or signal: the
 * summary says which, and adds the end of what the file printed on stderr (its error).
 */
function processText (error, stderr) {
  // Only node:test's own wrapper carries them for a file that failed as a whole: an error a test
  // threw (a child process it ran, killed) keeps its own message.
  const exitCode = error?.code === 'ERR_TEST_FAILURE' ? error.exitCode : undefined
  const signal = error?.code === 'ERR_TEST_FAILURE' ? error.signal : undefined
  if ((exitCode === undefined || exitCode === null) && (signal === undefined || signal === null)) return undefined
  const ended = signal !== undefined && signal !== null ? `its process was killed by ${signal}` : `its process ended with exit code ${exitCode}`
  return stderr === undefined || stderr.length === 0 ? `${ended} (it printed nothing on stderr)` : `${ended}; the end of its stderr:\n${stderr.join('\n')}`
}

const sourceMaps = new Map()

/**
 * Where a test is, as `file:line` of its source: a test run from its bundle (test-bundles.mjs, in
 * .test-js/) is placed in the bundle, so the bundle's source map names the TypeScript file and line.
 */
function whereOf (file, line, column) {
  if (file === undefined) return undefined
  const path = file.startsWith('file:') ? fileURLToPath(file) : file
  if (line !== undefined && /[\\/]\.test-js[\\/]/.test(path)) {
    let map = sourceMaps.get(path)
    if (map === undefined) {
      try { map = new SourceMap(JSON.parse(readFileSync(`${path}.map`, 'utf8'))) } catch { map = null }
      sourceMaps.set(path, map)
    }
    const entry = map?.findEntry(line - 1, (column ?? 1) - 1)
    if (entry?.originalSource !== undefined) {
      const source = entry.originalSource.startsWith('file:') ? fileURLToPath(entry.originalSource) : resolve(dirname(path), entry.originalSource)
      return `${source}:${entry.originalLine + 1}`
    }
  }
  return `${path}${line === undefined ? '' : `:${line}`}`
}

export default async function * failureSummary (source) {
  const failures = []
  const known = []
  const stderr = new Map()
  for await (const event of source) {
    if (event.type === 'test:stderr') {
      const { file, message } = event.data
      const lines = stderr.get(file) ?? []
      lines.push(...String(message).replace(/\n$/, '').split('\n'))
      stderr.set(file, lines.slice(-STDERR_LINES))
      continue
    }
    if (event.type !== 'test:fail') continue
    const { name, file, line, column, details, todo } = event.data
    const where = whereOf(file, line, column)
    if (onlyForSubtests(details?.error)) continue
    // A known limitation (a `todo` test, which fails without failing the run): named, not counted.
    if (todo !== undefined && todo !== false) {
      known.push(`# - ${name} (${where ?? 'unknown file'}): ${todo === true ? 'todo' : todo}`)
      continue
    }
    const error = processText(details?.error, stderr.get(file)) ?? errorText(details?.error)
    failures.push({ name, where: where ?? '(unknown file)', error })
  }
  if (known.length > 0) yield `\n# known limitations (todo tests that still fail):\n${known.join('\n')}\n`
  if (failures.length === 0) {
    yield '\n# failure summary: no test failed\n'
    return
  }
  const blocks = failures.map((failure, index) => [
    `# ${index + 1}. ${failure.name}`,
    `#    at ${failure.where}`,
    ...failure.error.split('\n').map((line) => `#    ${line}`)
  ].join('\n'))
  yield `\n# failure summary: ${failures.length} failed\n${blocks.join('\n')}\n`
}
