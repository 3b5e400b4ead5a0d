// Child process for review-r7-off-loop: runs one scenario of src/off-loop-command.ts and then
// leaves the process to end on its own (no process.exit): the parent tells whether it did.

import { closeSync, openSync } from 'node:fs'
import { runOffLoop } from '../../src/off-loop-command.js'

const scenario = process.argv[2]
const env = { PATH: process.env.PATH }

if (scenario === 'one-call') {
  // Nothing but the call holds the process: it must stay for the answer, then end.
  const ran = await runOffLoop({ command: 'sh', args: ['-c', 'sleep 0.3; echo answered'], env })
  process.stdout.write(`outcome ${ran.code} ${ran.stdout.trim()}\n`)
} else if (scenario === 'uncloneable-env') {
  // A call whose message cannot be posted: it must fail, and must not hold the process for good.
  try {
    await runOffLoop({ command: 'true', args: [], env: { ...env, BAD: (() => 'x') as unknown as string } })
    process.stdout.write('no error\n')
  } catch (err) {
    process.stdout.write(`rejected ${(err as Error).name}\n`)
  }
} else if (scenario === 'emfile') {
  // Near the limit of open files (a busy server; the parent lowers the limit): starting a program
  // fails with EMFILE. That call must fail on its own, as a program that could not be started, and
  // the next call, once descriptors are free again, must run.
  await runOffLoop({ command: 'true', args: [], env })
  const held: number[] = []
  try {
    for (;;) held.push(openSync('/dev/null', 'r'))
  } catch {}
  // A couple of free descriptors: fewer than the pipes of a child need.
  for (let i = 0; i < 2; i++) closeSync(held.pop() as number)
  const first = await runOffLoop({ command: 'true', args: [], env }).then((ran) => `startError ${ran.startError ?? 'none'}`, (err: Error) => `rejected ${err.message}`)
  for (const fd of held) closeSync(fd)
  const second = await runOffLoop({ command: 'echo', args: ['again'], env }).then((ran) => `ok ${ran.stdout.trim()}`, (err: Error) => `rejected ${err.message}`)
  process.stdout.write(`${first}\n${second}\n`)
} else {
  process.stdout.write(`unknown scenario ${scenario}\n`)
}
