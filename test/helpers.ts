/** Shared test helpers: open-fd counting, temporary socket paths, message framing, the repository root. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Open fds of this process, as the kernel lists them. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

let counter = 0;
/** A fresh socket path in a private temporary directory (kept short: sun_path holds 107 bytes). */
export function tempSocketPath(tag = 'sock'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-'));
  return path.join(dir, `${tag}${counter++}`);
}

/** A framed test message: 16-byte header with the total size at offset 4, then `payload`. */
export function frame(payload: Uint8Array | string = '', id = 0): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : Buffer.from(payload);
  const message = Buffer.alloc(16 + body.length);
  message.writeUInt16LE(id, 0);
  message.writeUInt32LE(message.length, 4);
  body.copy(message, 16);
  return message;
}

/** Resolves after pending I/O callbacks and timers of the current turn have run. */
export function tick(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function waitFor(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(1);
  }
}

/** The repository root, found from this file whether it runs from test/ (ts-node) or dist/test/ (compiled). */
export function repositoryRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'bin', 'viommu.js'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no repository root (package.json with bin/viommu.js) above ${__dirname}`);
    dir = parent;
  }
}
