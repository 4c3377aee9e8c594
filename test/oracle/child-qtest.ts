/** A qtest peer that is a child process speaking the protocol on stdin/stdout, with bounded waits and no orphans. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { QtestClient, QtestConnectionError } from '../../lib/vmm/qtest/client';

export interface ChildQtestOptions {
  name: string;
  command: string;
  args: readonly string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Per-command answer timeout (default 10 s). */
  commandTimeoutMs?: number;
  /** How long the first answer may take, covering process start-up (default 20 s). */
  startTimeoutMs?: number;
  /** Time to exit by itself after stdin closes before SIGTERM is sent (default 0: signal at once). */
  exitGraceMs?: number;
  /** Called once the child has exited, whatever the reason (temp-file cleanup). */
  onExit?: () => void;
  /**
   * Resend the first command every this many ms until it is answered. QEMU 10 drops qtest lines that arrive before
   * its qtest chardev has opened, so a single first command may never be answered; a sentinel command after the
   * first answer then drains the answers of the repeats, so that every later answer belongs to its own command.
   */
  openRetryMs?: number;
}

const STDERR_TAIL_LIMIT = 16 * 1024;
const TERM_WAIT_MS = 3000;

/** Every child still running, so that the process can kill them on its way out even when a test failed. */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of liveChildren) child.kill('SIGKILL');
  });
}

let setprivAvailable: boolean | undefined;

/**
 * `setpriv --pdeathsig KILL` makes the kernel kill the child if this process dies without running exit hooks
 * (SIGKILL, a crash, a default SIGINT), which is the one case the exit hook cannot cover.
 */
function withParentDeathSignal(command: string, args: readonly string[]): [string, string[]] {
  if (setprivAvailable === undefined) {
    const probe = spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore', timeout: 5000 });
    setprivAvailable = probe.status === 0;
  }
  return setprivAvailable ? ['setpriv', ['--pdeathsig', 'KILL', '--', command, ...args]] : [command, [...args]];
}

/** The last bytes a child wrote to stderr, for error messages. */
export class StderrTail {
  text = '';
  /** Set once the peer exists: the client's failure messages are built before `this` is available. */
  describe: () => string = () => '';
  append(chunk: Buffer): void {
    this.text = (this.text + chunk.toString('utf8')).slice(-STDERR_TAIL_LIMIT);
  }
}

/** The answer every qtest server gives to `endianness` on x86. */
const HANDSHAKE_ANSWER = 'OK little';
/** Sent once the first `endianness` was answered: its answer differs from the handshake's, so it marks the end of theirs. */
const SENTINEL = 'readb 0x0';

/**
 * Sends `endianness` every `retryMs` until one is answered, then a sentinel, and reads (and drops) every answer up
 * to the sentinel's. Leaves stdout paused with nothing pending, for the client to take over.
 */
function waitUntilOpen(child: ChildProcess, retryMs: number, timeoutMs: number): Promise<void> {
  const stdout = child.stdout!;
  const stdin = child.stdin!;
  return new Promise<void>((resolve, reject) => {
    let text = '';
    let opened = false;
    let sent = 0;
    const probe = () => {
      sent++;
      stdin.write('endianness\n');
    };
    const finish = (error?: Error) => {
      clearInterval(retry);
      clearTimeout(deadline);
      stdout.removeListener('data', onData);
      child.removeListener('exit', onExit);
      child.removeListener('error', onError);
      stdin.removeListener('error', ignore);
      stdout.pause();
      if (error === undefined) resolve();
      else reject(error);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      finish(new Error(`the process ${signal !== null ? `was killed by ${signal}` : `exited with code ${code}`} before its qtest stream answered`));
    };
    const onError = (error: Error) => finish(new Error(`the process could not be started: ${error.message}`));
    // A write after the process died fails with EPIPE; its exit is what gets reported.
    const ignore = () => {};
    const onData = (chunk: Buffer) => {
      text += chunk.toString('latin1');
      for (let newline = text.indexOf('\n'); newline >= 0; newline = text.indexOf('\n')) {
        const line = text.slice(0, newline).trim();
        text = text.slice(newline + 1);
        if (line.startsWith('IRQ') || line === '') continue;
        if (!opened) {
          if (line !== HANDSHAKE_ANSWER) return finish(new Error(`unexpected handshake answer '${line}'`));
          opened = true;
          clearInterval(retry);
          stdin.write(`${SENTINEL}\n`);
        } else if (line !== HANDSHAKE_ANSWER) {
          if (!line.startsWith('OK')) return finish(new Error(`unexpected answer '${line}' to '${SENTINEL}'`));
          if (text.trim() !== '') return finish(new Error(`unexpected output after the handshake: '${text.trim()}'`));
          return finish();
        }
      }
    };
    const retry = setInterval(probe, retryMs);
    const deadline = setTimeout(
      () => finish(new Error(`no answer to ${sent} 'endianness' lines sent ${retryMs} ms apart within ${timeoutMs} ms of start`)),
      timeoutMs,
    );
    stdout.on('data', onData);
    child.once('exit', onExit);
    child.once('error', onError);
    stdin.on('error', ignore);
    probe();
  });
}

export class ChildQtestPeer extends QtestClient {
  private readonly exited: Promise<void>;
  private exitStatus: string | undefined;

  protected constructor(
    readonly child: ChildProcess,
    private readonly stderr: StderrTail,
    private readonly childOptions: ChildQtestOptions,
  ) {
    super(child.stdout!, child.stdin!, {
      name: childOptions.name,
      commandTimeoutMs: childOptions.commandTimeoutMs ?? 10_000,
      describeFailure: () => stderr.describe(),
    });
    stderr.describe = () => this.describe();
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitStatus = signal !== null ? `killed by ${signal}` : `exited with code ${code}`;
        liveChildren.delete(child);
        childOptions.onExit?.();
        this.breakConnection(`process ${this.exitStatus}`);
        resolve();
      });
      child.once('error', (error: NodeJS.ErrnoException) => {
        // 'exit' does not follow a failed spawn, so settle here too.
        this.exitStatus = `could not be started: ${error.message}`;
        liveChildren.delete(child);
        childOptions.onExit?.();
        this.breakConnection(`process ${this.exitStatus}`);
        resolve();
      });
    });
  }

  /** Spawns the child and waits for its first answer (`endianness` -> `OK little`) so start-up errors surface here. */
  static startChild(options: ChildQtestOptions): Promise<ChildQtestPeer> {
    return ChildQtestPeer.launch(options, (child, stderr, opts) => new ChildQtestPeer(child, stderr, opts));
  }

  /** What subclasses start with, so that they get instances of their own class. */
  protected static async launch<T extends ChildQtestPeer>(
    options: ChildQtestOptions,
    create: (child: ChildProcess, stderr: StderrTail, options: ChildQtestOptions) => T,
  ): Promise<T> {
    installExitHook();
    const [command, args] = withParentDeathSignal(options.command, options.args);
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    liveChildren.add(child);
    const stderr = new StderrTail();
    child.stderr!.on('data', (chunk: Buffer) => stderr.append(chunk));
    if (options.openRetryMs !== undefined) {
      try {
        await waitUntilOpen(child, options.openRetryMs, options.startTimeoutMs ?? 20_000);
      } catch (error) {
        const gone = child.pid === undefined || child.exitCode !== null || child.signalCode !== null;
        const exited = gone ? Promise.resolve() : new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGKILL');
        await exited;
        liveChildren.delete(child);
        options.onExit?.();
        const tail = stderr.text.trim();
        throw new QtestConnectionError(
          `${options.name} failed to start: ${(error as Error).message}\n  command: ${options.command} ${options.args.join(' ')}${tail ? `\n  stderr: ${tail.split('\n').slice(-20).join('\n          ')}` : ''}`,
        );
      }
    }
    const peer = create(child, stderr, options);
    if (options.openRetryMs !== undefined) child.stdout!.resume();
    const handshake = peer.send('endianness');
    const startTimeoutMs = options.startTimeoutMs ?? 20_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${options.name}: no answer within ${startTimeoutMs} ms of start${peer.describe()}`)),
        startTimeoutMs,
      );
    });
    try {
      const answer = await Promise.race([handshake, timeout]);
      if (answer !== 'OK little') throw new Error(`${options.name}: unexpected handshake answer '${answer}'${peer.describe()}`);
      return peer;
    } catch (error) {
      await peer.close();
      // Rebuilt after close() so that the message carries the exit status and all of stderr.
      throw new QtestConnectionError(`${options.name} failed to start: ${(error as Error).message.split('\n')[0]}${peer.describe()}`);
    } finally {
      clearTimeout(timer);
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** What the child said on stderr so far (the last 16 KiB). */
  get stderrText(): string {
    return this.stderr.text;
  }

  describe(): string {
    const parts = [`\n  command: ${this.childOptions.command} ${this.childOptions.args.join(' ')}`];
    if (this.exitStatus !== undefined) parts.push(`\n  process ${this.exitStatus}`);
    const stderr = this.stderr.text.trim();
    if (stderr.length > 0) parts.push(`\n  stderr: ${stderr.split('\n').slice(-20).join('\n          ')}`);
    return parts.join('');
  }

  /** Closes stdin, then SIGTERM, then SIGKILL, and resolves only once the process is gone. */
  override async close(): Promise<void> {
    await super.close();
    if (this.exitStatus !== undefined) return;
    const grace = this.childOptions.exitGraceMs ?? 0;
    if (grace > 0 && (await this.waitForExit(grace))) return;
    this.child.kill('SIGTERM');
    if (await this.waitForExit(TERM_WAIT_MS)) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  private async waitForExit(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    const result = await Promise.race([this.exited.then(() => true), timedOut]);
    clearTimeout(timer);
    return result;
  }
}
