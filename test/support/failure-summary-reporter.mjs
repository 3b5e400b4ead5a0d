// A node:test reporter that prints nothing until the run ends, then one block naming every test
// that failed: its file and line, its name (seeded tests carry their seed in it) and the error.
// `npm test` runs it after the TAP reporter, so the last lines of a long run (all that a CI log
// may keep) still say what failed. Plain JavaScript: reporters are loaded without tsx.

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

export default async function * failureSummary (source) {
  const failures = []
  for await (const event of source) {
    if (event.type !== 'test:fail') continue
    const { name, file, line, details } = event.data
    if (onlyForSubtests(details?.error)) continue
    failures.push({ name, where: file === undefined ? '(unknown file)' : `${file}${line === undefined ? '' : `:${line}`}`, error: errorText(details?.error) })
  }
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
