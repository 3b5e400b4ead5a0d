// Counting live objects by constructor name in a V8 heap snapshot (taking one collects garbage
// first), so a leak test can say "no mount state is left" instead of bounding heap bytes.

import { getHeapSnapshot } from 'node:v8'

/** How many live objects each of `names` has (JS objects whose constructor has that name). */
export async function liveObjects (names: readonly string[]): Promise<Map<string, number>> {
  const chunks: string[] = []
  for await (const chunk of getHeapSnapshot()) chunks.push(String(chunk))
  const snapshot = JSON.parse(chunks.join('')) as { snapshot: { meta: { node_fields: string[], node_types: [string[]] } }, nodes: number[], strings: string[] }
  const fields = snapshot.snapshot.meta.node_fields
  const width = fields.length
  const typeAt = fields.indexOf('type')
  const nameAt = fields.indexOf('name')
  const objectType = snapshot.snapshot.meta.node_types[0].indexOf('object')
  const counts = new Map<string, number>(names.map((name) => [name, 0]))
  for (let at = 0; at < snapshot.nodes.length; at += width) {
    if (snapshot.nodes[at + typeAt] !== objectType) continue
    const name = snapshot.strings[snapshot.nodes[at + nameAt] as number] as string
    const count = counts.get(name)
    if (count !== undefined) counts.set(name, count + 1)
  }
  return counts
}
