/** The `--trace FILE` writer of every command: JSON lines on one clock, and one way of saying the file is incomplete. */
import * as fs from 'node:fs';

/** Lines are gathered up to this many characters before a write: one system call per event would slow a busy unit. */
const FLUSH_AT_CHARS = 1 << 16;

/** Bigints as 0x hex strings (JSON has no 64-bit integers); the unit's own events carry hex already. */
function jsonValue(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? `0x${value.toString(16)}` : value;
}

/**
 * A trace file: each line `{"t": ms since the file was opened, ...fields}`, in the order written. The first error
 * (a write refused, an event that cannot be turned into JSON) stops the writing, so the file holds a prefix of the
 * run, and `finish` says so on stderr; the command's own result does not change.
 */
export class TraceFile {
  private readonly openedAt = performance.now();
  private pending = '';
  private fd: number | undefined;
  private stopped: Error | undefined;
  /** Whatever is still gathered when the process exits unexpectedly is written then. */
  private readonly flushOnExit = () => this.flush();

  private constructor(
    readonly file: string,
    fd: number,
  ) {
    this.fd = fd;
    process.once('exit', this.flushOnExit);
  }

  /** Creates (or empties) `file` at once, so that a bad path is an option error before anything runs. */
  static open(file: string): TraceFile {
    try {
      return new TraceFile(file, fs.openSync(file, 'w'));
    } catch (error) {
      throw new Error(`--trace ${file}: ${(error as Error).message}`);
    }
  }

  /** Milliseconds since the file was opened, to the microsecond: the `t` of every line. */
  get now(): number {
    return Math.round((performance.now() - this.openedAt) * 1000) / 1000;
  }

  /** Why writing stopped, if it did. */
  get failure(): Error | undefined {
    return this.stopped;
  }

  /** Writes one line: `t`, then `fields` in their order. Never throws: a failure is kept for `finish`. */
  readonly write = (fields: object): void => {
    if (this.stopped !== undefined || this.fd === undefined) return;
    try {
      this.pending += `${JSON.stringify({ t: this.now, ...fields }, jsonValue)}\n`;
    } catch (error) {
      this.stop(error);
      return;
    }
    if (this.pending.length >= FLUSH_AT_CHARS) this.flush();
  };

  /** A sink that writes each event with `tag`'s fields between `t` and the event's own (the demo's `mode`). */
  tagged(tag: Readonly<Record<string, string>>): (event: object) => void {
    return (event) => this.write({ ...tag, ...event });
  }

  /** Writes what is gathered and closes the file; tells `stderr`, as `command`, when the trace is incomplete. */
  finish(stderr: NodeJS.WritableStream, command: string): void {
    if (this.fd === undefined) return;
    this.flush();
    process.off('exit', this.flushOnExit);
    try {
      fs.closeSync(this.fd);
    } catch (error) {
      this.stop(error);
    }
    this.fd = undefined;
    if (this.stopped !== undefined) stderr.write(`viommu ${command}: --trace ${this.file} is incomplete: ${this.stopped.message}\n`);
  }

  private flush(): void {
    if (this.pending === '' || this.fd === undefined || this.stopped !== undefined) return;
    const bytes = Buffer.from(this.pending);
    this.pending = '';
    try {
      // A write may take fewer bytes than it was given.
      for (let at = 0; at < bytes.length;) at += fs.writeSync(this.fd, bytes, at, bytes.length - at);
    } catch (error) {
      this.stop(error);
    }
  }

  private stop(error: unknown): void {
    this.stopped ??= error instanceof Error ? error : new Error(String(error));
    this.pending = '';
  }
}
