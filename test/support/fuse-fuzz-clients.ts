// The two kinds of client test/support/fuse-fuzz-run.ts drives a FUSE mount with: a Python
// process (another process, as dd or fio would be) holding any number of descriptors, driven by
// JSON lines, and this process itself through node:fs/promises (the README allows the serving
// process async calls on its own mount; one at a time here). Both answer every call with the
// same shape: a value, or the errno name it failed with.

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { constants, open, stat, type FileHandle } from 'node:fs/promises'

/** What a call gave: a value, or the errno (ENOSPC, EIO, ...) it failed with. */
export type Outcome<T> = { ok: true, value: T } | { ok: false, errno: string }

/** Open flags the clients understand. */
export type OpenFlag = 'O_RDONLY' | 'O_WRONLY' | 'O_RDWR' | 'O_DIRECT' | 'O_SYNC' | 'O_DSYNC' | 'O_TRUNC'

/** A client's calls on descriptors it holds (named by numbers it hands out). */
export interface FileClient {
  readonly kind: 'child' | 'self'
  open: (path: string, flags: readonly OpenFlag[]) => Promise<Outcome<number>>
  pread: (fd: number, offset: number, length: number) => Promise<Outcome<Uint8Array>>
  pwrite: (fd: number, offset: number, data: Uint8Array) => Promise<Outcome<number>>
  ftruncate: (fd: number, size: number) => Promise<Outcome<null>>
  fsync: (fd: number, dataOnly: boolean) => Promise<Outcome<null>>
  fstatSize: (fd: number) => Promise<Outcome<number>>
  close: (fd: number) => Promise<Outcome<null>>
  /** stat(path).size, without a descriptor. */
  statSize: (path: string) => Promise<Outcome<number>>
  /** truncate(path, size). */
  truncate: (path: string, size: number) => Promise<Outcome<null>>
  /** The whole file: opened read-only, read to its end, closed. */
  readFile: (path: string) => Promise<Outcome<Uint8Array>>
}

const PYTHON = `
import os, sys, json, base64, errno
FLAGS = {'O_RDONLY': os.O_RDONLY, 'O_WRONLY': os.O_WRONLY, 'O_RDWR': os.O_RDWR, 'O_DIRECT': getattr(os, 'O_DIRECT', 0),
         'O_SYNC': os.O_SYNC, 'O_DSYNC': os.O_DSYNC, 'O_TRUNC': os.O_TRUNC}
def b64(data): return base64.b64encode(data).decode()
def run(r):
    op = r['op']
    if op == 'open':
        flags = 0
        for name in r['flags']: flags |= FLAGS[name]
        return os.open(r['path'], flags)
    if op == 'pread': return b64(os.pread(r['fd'], r['len'], r['off']))
    if op == 'pwrite': return os.pwrite(r['fd'], base64.b64decode(r['data']), r['off'])
    if op == 'ftruncate': return os.ftruncate(r['fd'], r['size'])
    if op == 'fsync': return os.fsync(r['fd'])
    if op == 'fdatasync': return os.fdatasync(r['fd'])
    if op == 'fstat': return os.fstat(r['fd']).st_size
    if op == 'close': return os.close(r['fd'])
    if op == 'stat': return os.stat(r['path']).st_size
    if op == 'truncate': return os.truncate(r['path'], r['size'])
    if op == 'readfile':
        fd = os.open(r['path'], os.O_RDONLY)
        try:
            out = b''
            while True:
                chunk = os.read(fd, 65536)
                if not chunk: break
                out += chunk
            return b64(out)
        finally:
            os.close(fd)
    raise ValueError('unknown op ' + op)
for line in sys.stdin:
    r = json.loads(line)
    try:
        out = {'ok': True, 'value': run(r)}
    except OSError as e:
        out = {'ok': False, 'errno': errno.errorcode.get(e.errno, str(e.errno))}
    sys.stdout.write(json.dumps(out) + '\\n')
    sys.stdout.flush()
`

/** A Python process answering one call at a time; a call not answered in `timeoutMs` rejects. */
export class ChildClient implements FileClient {
  readonly kind = 'child' as const
  readonly #child: ChildProcessWithoutNullStreams
  readonly #waiting: Array<(line: string) => void> = []
  #pending = ''
  #exited = false
  readonly #timeoutMs: number

  constructor (timeoutMs = 30_000) {
    this.#timeoutMs = timeoutMs
    this.#child = spawn('python3', ['-c', PYTHON], { stdio: ['pipe', 'pipe', 'pipe'] })
    this.#child.stdout.on('data', (chunk: Buffer) => {
      this.#pending += chunk.toString()
      let newline: number
      while ((newline = this.#pending.indexOf('\n')) >= 0) {
        const line = this.#pending.slice(0, newline)
        this.#pending = this.#pending.slice(newline + 1)
        this.#waiting.shift()?.(line)
      }
    })
    this.#child.stderr.on('data', (chunk: Buffer) => { process.stderr.write(chunk) })
    this.#child.once('exit', () => { this.#exited = true })
  }

  async #call<T> (request: Record<string, unknown>): Promise<Outcome<T>> {
    if (this.#exited) throw new Error('the Python client has exited')
    let timer: NodeJS.Timeout | undefined
    const answer = new Promise<string>((resolve, reject) => {
      this.#waiting.push(resolve)
      timer = setTimeout(() => { reject(new Error(`the Python client did not answer ${JSON.stringify(request).slice(0, 200)} within ${this.#timeoutMs} ms`)) }, this.#timeoutMs)
    })
    this.#child.stdin.write(JSON.stringify(request) + '\n')
    try {
      return JSON.parse(await answer) as Outcome<T>
    } finally {
      clearTimeout(timer)
    }
  }

  async #bytes (request: Record<string, unknown>): Promise<Outcome<Uint8Array>> {
    const out = await this.#call<string>(request)
    return out.ok ? { ok: true, value: new Uint8Array(Buffer.from(out.value, 'base64')) } : out
  }

  async open (path: string, flags: readonly OpenFlag[]): Promise<Outcome<number>> { return await this.#call({ op: 'open', path, flags }) }
  async pread (fd: number, offset: number, length: number): Promise<Outcome<Uint8Array>> { return await this.#bytes({ op: 'pread', fd, off: offset, len: length }) }
  async pwrite (fd: number, offset: number, data: Uint8Array): Promise<Outcome<number>> { return await this.#call({ op: 'pwrite', fd, off: offset, data: Buffer.from(data).toString('base64') }) }
  async ftruncate (fd: number, size: number): Promise<Outcome<null>> { return await this.#call({ op: 'ftruncate', fd, size }) }
  async fsync (fd: number, dataOnly: boolean): Promise<Outcome<null>> { return await this.#call({ op: dataOnly ? 'fdatasync' : 'fsync', fd }) }
  async fstatSize (fd: number): Promise<Outcome<number>> { return await this.#call({ op: 'fstat', fd }) }
  async close (fd: number): Promise<Outcome<null>> { return await this.#call({ op: 'close', fd }) }
  async statSize (path: string): Promise<Outcome<number>> { return await this.#call({ op: 'stat', path }) }
  async truncate (path: string, size: number): Promise<Outcome<null>> { return await this.#call({ op: 'truncate', path, size }) }
  async readFile (path: string): Promise<Outcome<Uint8Array>> { return await this.#bytes({ op: 'readfile', path }) }

  /** Ends the process (its descriptors close with it). */
  async end (): Promise<void> {
    if (this.#exited) return
    const exited = new Promise((resolve) => this.#child.once('exit', resolve))
    this.#child.stdin.end()
    await exited
  }
}

const FLAG_BITS: Record<OpenFlag, number> = {
  O_RDONLY: constants.O_RDONLY,
  O_WRONLY: constants.O_WRONLY,
  O_RDWR: constants.O_RDWR,
  O_DIRECT: constants.O_DIRECT ?? 0,
  O_SYNC: constants.O_SYNC,
  O_DSYNC: constants.O_DSYNC,
  O_TRUNC: constants.O_TRUNC
}

/** This process, through node:fs/promises (the thread pool: the event loop stays free to serve the mount). */
export class SelfClient implements FileClient {
  readonly kind = 'self' as const
  readonly #handles = new Map<number, FileHandle>()
  #next = 1

  async #outcome<T> (task: () => Promise<T>): Promise<Outcome<T>> {
    try {
      return { ok: true, value: await task() }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === undefined) throw err
      return { ok: false, errno: code }
    }
  }

  #handle (fd: number): FileHandle {
    const handle = this.#handles.get(fd)
    if (handle === undefined) throw new Error(`no handle ${fd}`)
    return handle
  }

  async open (path: string, flags: readonly OpenFlag[]): Promise<Outcome<number>> {
    return await this.#outcome(async () => {
      const handle = await open(path, flags.reduce((bits, flag) => bits | FLAG_BITS[flag], 0))
      const fd = this.#next++
      this.#handles.set(fd, handle)
      return fd
    })
  }

  async pread (fd: number, offset: number, length: number): Promise<Outcome<Uint8Array>> {
    return await this.#outcome(async () => {
      const buffer = Buffer.alloc(length)
      const { bytesRead } = await this.#handle(fd).read(buffer, 0, length, offset)
      return new Uint8Array(buffer.subarray(0, bytesRead))
    })
  }

  async pwrite (fd: number, offset: number, data: Uint8Array): Promise<Outcome<number>> {
    return await this.#outcome(async () => (await this.#handle(fd).write(data, 0, data.byteLength, offset)).bytesWritten)
  }

  async ftruncate (fd: number, size: number): Promise<Outcome<null>> { return await this.#outcome(async () => { await this.#handle(fd).truncate(size); return null }) }
  async fsync (fd: number, dataOnly: boolean): Promise<Outcome<null>> { return await this.#outcome(async () => { await (dataOnly ? this.#handle(fd).datasync() : this.#handle(fd).sync()); return null }) }
  async fstatSize (fd: number): Promise<Outcome<number>> { return await this.#outcome(async () => (await this.#handle(fd).stat()).size) }
  async close (fd: number): Promise<Outcome<null>> {
    const handle = this.#handle(fd)
    this.#handles.delete(fd)
    return await this.#outcome(async () => { await handle.close(); return null })
  }

  async statSize (path: string): Promise<Outcome<number>> { return await this.#outcome(async () => (await stat(path)).size) }
  async truncate (path: string, size: number): Promise<Outcome<null>> {
    return await this.#outcome(async () => { await (await import('node:fs/promises')).truncate(path, size); return null })
  }

  async readFile (path: string): Promise<Outcome<Uint8Array>> {
    return await this.#outcome(async () => new Uint8Array(await (await import('node:fs/promises')).readFile(path)))
  }

  /** Closes whatever is still open (errors ignored: the mount may be gone). */
  async end (): Promise<void> {
    for (const fd of [...this.#handles.keys()]) await this.close(fd).catch(() => {})
  }
}
