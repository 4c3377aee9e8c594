/** Whole processes timed from spawn to exit, for the figures that measure what a user waits for. */
import { spawn, type SpawnOptions } from 'node:child_process';

export interface ProcessRun {
  readonly seconds: number;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly output: string;
}

/** A run that takes longer than this is killed: a hang, not a slow run. */
const RUN_TIMEOUT_MS = 120_000;

/** Spawns `command args`, and resolves to its wall time from spawn to exit (pipes closed), exit status and output. */
export function timedProcess(command: string, args: readonly string[], options: Pick<SpawnOptions, 'cwd' | 'env'> = {}): Promise<ProcessRun> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('latin1')));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('latin1')));
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ seconds: Number(process.hrtime.bigint() - start) / 1e9, code, signal, output });
    });
  });
}

/** The last lines of a run's output, for an error message. */
export function tail(output: string, lines = 8): string {
  return output.trimEnd().split('\n').slice(-lines).join('\n');
}
