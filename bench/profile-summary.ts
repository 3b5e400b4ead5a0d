// Summarises V8 CPU profiles (.cpuprofile, as node --cpu-prof or bench/write-cpu.ts write them):
// self time by function and by file, summed over every profile named, as shares of the sampled
// time (idle and program time included, so the shares are of the wall time profiled).
//
// Usage: node --import tsx bench/profile-summary.ts [--top N] FILE.cpuprofile...

import { readFile } from 'node:fs/promises'

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number } }
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }

const args = process.argv.slice(2)
let top = 30
if (args[0] === '--top') {
  top = Number(args[1])
  args.splice(0, 2)
}

const byFunction = new Map<string, number>()
const byFile = new Map<string, number>()
let total = 0
for (const path of args) {
  const profile = JSON.parse(await readFile(path, 'utf8')) as Profile
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
  for (let i = 0; i < profile.samples.length; i++) {
    // A sample's delta is the time since the previous sample: charge it to this sample's frame.
    const micros = profile.timeDeltas[i] ?? 0
    const frame = (nodes.get(profile.samples[i] as number) as ProfileNode).callFrame
    const file = frame.url === '' ? '(native/vm)' : frame.url.replace(/^file:\/\/.*?\/(src|backends|bench|node_modules)\//, '$1/')
    const name = `${frame.functionName === '' ? '(anonymous)' : frame.functionName} ${file}${frame.url === '' ? '' : `:${frame.lineNumber + 1}`}`
    byFunction.set(name, (byFunction.get(name) ?? 0) + micros)
    byFile.set(file, (byFile.get(file) ?? 0) + micros)
    total += micros
  }
}

const print = (title: string, table: Map<string, number>): void => {
  console.log(`\n${title} (of ${(total / 1000).toFixed(0)} ms sampled)`)
  for (const [name, micros] of [...table].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${(100 * micros / total).toFixed(1).padStart(5)}%  ${(micros / 1000).toFixed(0).padStart(6)} ms  ${name}`)
  }
}
print('Self time by function', byFunction)
print('Self time by file', byFile)
