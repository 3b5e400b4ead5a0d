// Rewrites the benchmark table in README.md (between `<!-- bench-table -->` and
// `<!-- /bench-table -->`) from bench/results/latest.json, so the README shows measured figures only.
// Run after `npm run bench`: `npm run bench:readme`.

import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

interface Row {
  title: string
  backend: string
  opsPerSec: number | null
  mbPerSec: number | null
  baselineTitle: string
  baselineOpsPerSec: number | null
  baselineMbPerSec: number | null
  ratio: number | null
  target: number | null
  error: string | null
}
interface Results {
  date: string
  node: string
  cpus: number
  cpuModel: string | null
  seconds: number
  results: Row[]
  journal: Array<{ backend: string, journalEntries: number, syncs: number, entriesPerSync: number }>
}

const README = fileURLToPath(new URL('../README.md', import.meta.url))
const RESULTS = fileURLToPath(new URL('./results/latest.json', import.meta.url))
const START = '<!-- bench-table -->'
const END = '<!-- /bench-table -->'

const number = (value: number, digits = 0): string => value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
/** ops/s for small I/O, MB/s for 1 MiB I/O. */
const figure = (title: string, ops: number, mb: number): string => title.includes('1 MiB') ? `${number(mb)} MB/s` : `${number(ops)} ops/s`

const data = JSON.parse(await readFile(RESULTS, 'utf8')) as Results
const lines = [
  START,
  `Measured ${data.date.slice(0, 10)} with Node ${data.node} on ${data.cpus} × ${data.cpuModel ?? 'cpu'}, ${data.seconds} s per case; each baseline measured on the same disk, half right before and half right after its case.`,
  '',
  '| case | backend | GalleonFS | baseline | ratio | target |',
  '|---|---|---:|---|---:|---|'
]
for (const row of data.results) {
  const ours = row.opsPerSec === null || row.mbPerSec === null ? (row.error ?? 'n/a') : figure(row.title, row.opsPerSec, row.mbPerSec)
  const baseline = `${row.baselineTitle}: ${row.baselineOpsPerSec === null || row.baselineMbPerSec === null ? 'n/a' : figure(row.title, row.baselineOpsPerSec, row.baselineMbPerSec)}`
  const ratio = row.ratio === null ? '—' : `${number(row.ratio, 2)}×`
  let target = '—'
  if (row.target !== null && row.backend !== 'memory') target = `≥ ${row.target}× (${row.ratio !== null && row.ratio >= row.target ? 'met' : 'not met'})`
  lines.push(`| ${row.title} | ${row.backend} | ${ours} | ${baseline} | ${ratio} | ${target} |`)
}
if (data.journal.length > 0) {
  lines.push('', 'Group commit in the `WriteDurable` case: ' + data.journal.map((j) => `${j.backend} ${number(j.entriesPerSync, 1)} writes per device sync`).join(', ') + '.')
}
lines.push(END)

const readme = await readFile(README, 'utf8')
const from = readme.indexOf(START)
const to = readme.indexOf(END)
if (from < 0 || to < from) throw new Error(`README.md has no ${START} ... ${END} section`)
await writeFile(README, readme.slice(0, from) + lines.join('\n') + readme.slice(to + END.length))
console.log(`README.md benchmark table updated from ${RESULTS}`)
