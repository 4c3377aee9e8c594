/** Test helper: the `viommu` command (bin/viommu.js) as a separate process that cannot outlive the test process. */

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as path from 'node:path';
import { tempSocketPath, waitFor } from '../helpers';

export const VIOMMU_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'viommu.js');

let setprivWorks: boolean | undefined;

export interface SpawnOptions {
  /**
   * RLIMIT_NOFILE (soft and hard) for the child, set by `prlimit`, so a test can run it out of fds. prlimit execs
   * node, so the child's pid stays the node process's (its /proc/PID/fd is the server's).
   */
  readonly maxOpenFiles?: number;
}

/** Starts `node bin/viommu.js ARGS` under `setpriv --pdeathsig KILL` where setpriv exists. */
export function spawnViommu(args: readonly string[], options: SpawnOptions = {}): ChildProcess {
  setprivWorks ??= spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore', timeout: 5000 }).status === 0;
  const limit = options.maxOpenFiles === undefined ? [] : ['prlimit', `--nofile=${options.maxOpenFiles}:${options.maxOpenFiles}`, '--'];
  const argv = [...limit, process.execPath, VIOMMU_BIN, ...args];
  const [command, ...commandArgs] = setprivWorks ? ['setpriv', '--pdeathsig', 'KILL', '--', ...argv] : argv;
  return spawn(command!, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `viommu ARGS` to completion. */
export function runViommu(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawnViommu(args);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** A running `viommu serve`: its output so far, and a way to stop it. */
export class ServeProcess {
  stdout = '';
  stderr = '';
  private readonly exit: Promise<[number | null, NodeJS.Signals | null]>;

  private constructor(
    readonly child: ChildProcess,
    readonly socketPath: string,
  ) {
    child.stdout!.on('data', (chunk: Buffer) => (this.stdout += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    // 'close' rather than 'exit': the pipes are closed too, so no fd of ours is left when it fires.
    this.exit = once(child, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
  }

  /** Starts `viommu serve --socket (fresh path) --device DEVICE ...extra` and waits for its listening line. */
  static async start(device = 'dma-engine', extra: readonly string[] = [], options: SpawnOptions = {}): Promise<ServeProcess> {
    const socketPath = tempSocketPath('serve');
    const served = new ServeProcess(spawnViommu(['serve', '--socket', socketPath, '--device', device, ...extra], options), socketPath);
    try {
      await waitFor(() => served.stdout.includes('\n') || served.child.exitCode !== null, `the listening line (stderr: ${served.stderr})`, 10000);
    } catch (error) {
      served.kill();
      throw error;
    }
    return served;
  }

  /** SIGTERM, then the exit code and signal once the process and its pipes are gone. */
  async stop(): Promise<[number | null, NodeJS.Signals | null]> {
    this.child.kill('SIGTERM');
    return this.exit;
  }

  /** For cleanups: SIGKILL when it is still running. */
  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }

  get exited(): Promise<[number | null, NodeJS.Signals | null]> {
    return this.exit;
  }
}
