/**
 * `viommu demo`: starts the sample DMA engine as a `viommu serve` process, attaches it behind the VT-d unit, plays a
 * guest driver in each translation mode the unit supports, and prints what the guest sees; then the bind mode: a guest
 * PASID table bound to the host IOMMU, request by request (lib/vmm/demo-bind.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { FaultSnapshots } from '../explain/fault-snapshots';
import { BIND_IOMMU, BIND_TITLE, chooseBindHost, runBindScenario, type BindHostRequest, type BindReport } from '../vmm/demo-bind';
import { DEMO_MODES, runDemoMode, type DemoMode, type DemoModeReport } from '../vmm/demo-modes';
import { TraceFile } from './trace-file';

/** bin/viommu.js, from dist/lib/cli/. */
const VIOMMU_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'viommu.js');
const SERVER_START_MS = 10000;

export interface DemoIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

export interface DemoOptions {
  /** Write a snapshot of each DMA translation fault into this directory (`viommu explain` reads them). */
  readonly snapshotOnFault?: string;
  /** Run the bind mode after the engine modes, on this host (default: the engine modes alone). */
  readonly bind?: BindHostRequest;
  /** Write every mode's unit events (and the bind mode's host events) to this file as JSON lines, each with its `mode`. */
  readonly trace?: string;
}

/** The name `--mode` takes for each engine mode: its name with dashes for spaces. */
function modeOptionName(mode: DemoMode): string {
  return mode.name.replace(/ /g, '-');
}

const BIND_MODE_NAME = 'bind';

export function registerDemoCommand(program: Command): void {
  const names = [...DEMO_MODES.map(modeOptionName), BIND_MODE_NAME];
  program
    .command('demo')
    .description(
      'run the sample DMA engine as a vfio-user server process behind the VT-d unit and play a guest driver in each translation mode: mappings, DMA both ways, a fault, an unmap; then bind a guest PASID table to the host IOMMU (iommufd nesting) and show each host request',
    )
    .option('--mode <names>', `run only these modes (comma-separated: ${names.join(', ')}); default: all`)
    .option('--snapshot-on-fault <dir>', 'write a snapshot of each DMA translation fault (at most 16) into this directory, for `viommu explain FILE`')
    .option(
      '--vfio-cdev <path>',
      'bind mode: the VFIO device cdev (e.g. /dev/vfio/devices/vfio0) to bind on /dev/iommu; without it (or without /dev/iommu) the dry-run iommufd answers',
    )
    .option(
      '--trace <file>',
      "write each mode's unit events (register writes, descriptors, translations, faults, interrupts sent; the bind mode's host requests and faults too) to this file as JSON lines, each with t and the mode (docs/trace.md)",
    )
    .action(async (options: { mode?: string; snapshotOnFault?: string; vfioCdev?: string; trace?: string }) => {
      const chosen =
        options.mode === undefined
          ? names
          : options.mode
              .split(',')
              .map((name) => name.trim())
              .filter((name) => name !== '');
      const unknown = chosen.filter((name) => !names.includes(name));
      if (unknown.length > 0 || chosen.length === 0)
        throw new Error(`demo: no mode named ${unknown.join(', ') || '(none)'}; the modes are ${names.join(', ')}`);
      const modes = DEMO_MODES.filter((mode) => chosen.includes(modeOptionName(mode)));
      const withBind = chosen.includes(BIND_MODE_NAME);
      if (!withBind && options.vfioCdev !== undefined) throw new Error('demo: --vfio-cdev belongs to the bind mode, which --mode leaves out');
      const demoOptions: DemoOptions = {
        ...(options.snapshotOnFault === undefined ? {} : { snapshotOnFault: options.snapshotOnFault }),
        ...(withBind ? { bind: options.vfioCdev === undefined ? {} : { vfioCdev: options.vfioCdev } } : {}),
        ...(options.trace === undefined ? {} : { trace: options.trace }),
      };
      // main() turns a returned action into exit code 0, so a failed check leaves as an error (exit code 1).
      if ((await runDemo({ stdout: process.stdout, stderr: process.stderr }, modes, demoOptions)) !== 0)
        throw new Error('demo: a check failed (see the lines above)');
    });
}

/** Runs the bind mode, printing its block like the engine modes'; resolves to whether every check passed. */
async function runBindMode(say: (line: string) => void, host: BindHostRequest, trace: TraceFile | undefined): Promise<boolean> {
  let report: Pick<BindReport, 'mode' | 'lines' | 'failures'>;
  try {
    report = await runBindScenario({ host: chooseBindHost(host), ...(trace ? { trace: trace.tagged({ mode: BIND_MODE_NAME }) } : {}) });
  } catch (error) {
    report = { mode: BIND_TITLE, lines: [], failures: [`the mode stopped: ${(error as Error).message}`] };
  }
  say('');
  say(`[${report.mode}]`);
  for (const line of report.lines) say(`  ${line}`);
  for (const failure of report.failures) say(`  CHECK FAILED: ${failure}`);
  say(`  result        ${report.failures.length === 0 ? 'all checks passed' : `${report.failures.length} check(s) failed`}`);
  return report.failures.length === 0;
}

/** A `viommu serve --device dma-engine` child, killed when this process exits however it exits. */
class EngineProcess {
  private readonly killOnExit = () => this.kill();
  stderr = '';

  private constructor(
    private readonly child: ChildProcess,
    readonly socketPath: string,
  ) {
    process.once('exit', this.killOnExit);
    child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
  }

  static async start(socketPath: string): Promise<EngineProcess> {
    const child = spawn(process.execPath, [VIOMMU_BIN, 'serve', '--socket', socketPath, '--device', 'dma-engine'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const engine = new EngineProcess(child, socketPath);
    try {
      await new Promise<void>((resolve, reject) => {
        let stdout = '';
        const timer = setTimeout(
          () => reject(new Error(`viommu serve did not start within ${SERVER_START_MS} ms (stderr: ${engine.stderr.trim()})`)),
          SERVER_START_MS,
        );
        child.stdout!.on('data', (chunk: Buffer) => {
          stdout += chunk.toString();
          if (stdout.includes('\n')) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.once('error', (error) => (clearTimeout(timer), reject(error)));
        child.once(
          'exit',
          (code, signal) => (
            clearTimeout(timer),
            reject(new Error(`viommu serve exited (${signal ?? code}) before listening: ${engine.stderr.trim()}`))
          ),
        );
      });
    } catch (error) {
      await engine.stop();
      throw error;
    }
    return engine;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }

  /** SIGTERM and wait for it to go (SIGKILL after a grace period). */
  async stop(): Promise<void> {
    process.off('exit', this.killOnExit);
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((resolve) => this.child.once('close', resolve));
    this.child.kill('SIGTERM');
    const grace = setTimeout(() => this.kill(), 3000);
    await gone;
    clearTimeout(grace);
  }
}

/** Runs every mode (and the bind mode with `options.bind`); resolves to the exit code (0 when every check passed). */
export async function runDemo(io: DemoIo, modes: readonly DemoMode[] = DEMO_MODES, options: DemoOptions = {}): Promise<number> {
  const snapshots = options.snapshotOnFault === undefined ? undefined : new FaultSnapshots(options.snapshotOnFault);
  // Opened first, so that a path it cannot create stops the demo before anything runs.
  const trace = options.trace === undefined ? undefined : TraceFile.open(options.trace);
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-demo-'));
  const socketPath = path.join(directory, 'dma-engine.sock');
  const say = (line: string) => io.stdout.write(`${line}\n`);
  let failed = 0;
  let engine: EngineProcess | undefined;
  try {
    // The bind mode needs no device process: start the engine only for the modes that drive it.
    if (modes.length > 0) {
      engine = await EngineProcess.start(socketPath);
      say(`viommu demo: the DMA engine runs as a vfio-user server in process ${engine.pid} (${socketPath}),`);
      say('attached at 00:04.0 behind an emulated VT-d unit at 0xfed90000; a guest driver programs both.');
    } else {
      say('viommu demo: a guest driver programs an emulated VT-d unit at 0xfed90000.');
    }
    for (const mode of modes) {
      let report: DemoModeReport;
      try {
        report = await runDemoMode(mode, socketPath, {
          ...(snapshots === undefined ? {} : { onUnit: (unit, memory) => snapshots.watch(unit, memory, `viommu demo, mode ${mode.name}`) }),
          ...(trace === undefined ? {} : { trace: trace.tagged({ mode: modeOptionName(mode) }) }),
        });
      } catch (error) {
        report = { mode: mode.name, lines: [], failures: [`the mode stopped: ${(error as Error).message}`] };
      }
      say('');
      say(`[${report.mode}]`);
      for (const line of report.lines) say(`  ${line}`);
      for (const failure of report.failures) say(`  CHECK FAILED: ${failure}`);
      say(`  result        ${report.failures.length === 0 ? 'all checks passed' : `${report.failures.length} check(s) failed`}`);
      if (report.failures.length > 0) failed++;
    }
    if (options.bind !== undefined && !(await runBindMode(say, options.bind, trace))) failed++;
    say('');
    for (const line of configurationLines(modes, options.bind !== undefined)) say(line);
    if (snapshots !== undefined) {
      say(`fault snapshots: ${snapshots.summary()}`);
      for (const file of snapshots.written) say(`  ${file}`);
      if (snapshots.written.length > 0) say(`  explain one with: viommu explain ${snapshots.written[snapshots.written.length - 1]}`);
    }
    if (trace !== undefined) say(`trace: ${trace.file} (JSON lines, each with the mode it came from; docs/trace.md)`);
  } catch (error) {
    io.stderr.write(`viommu demo: ${(error as Error).message}\n`);
    return 1;
  } finally {
    await engine?.stop();
    fs.rmSync(directory, { recursive: true, force: true });
    trace?.finish(io.stderr, 'demo');
  }
  say(failed === 0 ? 'viommu demo: every mode passed' : `viommu demo: ${failed} mode(s) failed`);
  return failed === 0 ? 0 : 1;
}

/** The unit configurations the modes ran on, each with the modes it served. */
function configurationLines(modes: readonly DemoMode[], bind: boolean): string[] {
  const byConfiguration = new Map<string, string[]>();
  const served = [...modes.map((mode) => [mode.iommu, mode.name] as const), ...(bind ? [[BIND_IOMMU, BIND_MODE_NAME] as const] : [])];
  for (const [iommu, name] of served) byConfiguration.set(iommu, [...(byConfiguration.get(iommu) ?? []), name]);
  return [...byConfiguration].map(([iommu, names]) => `unit configuration intel-iommu,${iommu}: ${names.join(', ')}`);
}
