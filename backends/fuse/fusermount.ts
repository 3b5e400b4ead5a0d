// Runs fusermount from a worker thread, never from the event loop's thread: this process may have
// a file of one of its own mounts open, and a program started from the event loop's thread would
// then wait for a flush that only that thread can answer (see src/off-loop-command.ts).

import { runOffLoop } from '../../src/off-loop-command.js'

/** Runs `fusermount <args>` with `env`; rejects with its error (and stderr) when it fails. */
export async function fusermount (args: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const ran = await runOffLoop({ command: 'fusermount', args, env })
  if (ran.startError !== undefined) throw new Error(`fusermount could not be started: ${ran.startError}`)
  if (ran.code === 0) return
  const how = ran.signal !== null ? `was killed by ${ran.signal}` : `exited with status ${ran.code}`
  throw new Error(`fusermount ${args.join(' ')} ${how}${ran.stderr.trim() === '' ? '' : `: ${ran.stderr.trim()}`}`)
}
