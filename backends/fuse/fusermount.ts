// Runs fusermount from a worker thread, never from the event loop's thread.
//
// Starting a program blocks the starting thread until the child has exec'd, and exec closes every
// close-on-exec descriptor the child inherited, one by one. If this process has a file of one of
// its own mounts open (the README allows reading a mount with async fs calls), the child inherits
// that descriptor and its close asks the mount to flush: a FUSE request that this process answers
// on the event loop's thread. Started from that thread, the child waits for the flush, the thread
// waits for the child, and the process is stuck for good (seen as an unmount, or a mount after an
// unmount, hanging while the process had `data` open). From a worker only the worker waits.

import { Worker } from 'node:worker_threads'

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads')
const { execFile } = require('node:child_process')
execFile('fusermount', workerData.args, { env: workerData.env }, (err, _stdout, stderr) => {
  parentPort.postMessage(err === null ? { ok: true } : { ok: false, message: String(err.message), stderr: String(stderr) })
})
`

/** Runs `fusermount <args>` with `env`; rejects with its error message when it fails. */
export async function fusermount (args: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    // No execArgv: the worker runs plain JavaScript, and needs no loader the process was started with.
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { args: [...args], env }, execArgv: [] })
    worker.once('message', (answer: { ok: boolean, message?: string }) => {
      if (answer.ok) resolve()
      else reject(new Error(answer.message ?? 'fusermount failed'))
    })
    worker.once('error', reject)
    // After a message this changes nothing; without one, the worker died before fusermount ended.
    worker.once('exit', (code) => { reject(new Error(`the thread running fusermount ${args.join(' ')} ended (exit code ${code}) before it did`)) })
  })
}
