/** The answering end of the qtest protocol: reads command lines from a stream, runs them on a QtestMachine, answers. */
import type { Readable, Writable } from 'node:stream';
import type { QtestMachine } from './machine';
import {
  DEFAULT_QTEST_LIMITS,
  formatQtestBase64Data,
  formatQtestFail,
  formatQtestHexData,
  formatQtestIrq,
  formatQtestMemoryValue,
  formatQtestOk,
  formatQtestPortValue,
  parseQtestCommand,
  type QtestCommand,
  type QtestLimits,
} from './protocol';

export interface QtestServerOptions {
  limits?: QtestLimits;
  /** A line longer than this (without its newline) is answered with FAIL and dropped, so memory stays bounded. */
  maxLineLength?: number;
  /** End the output stream once the input has ended and every answer is written (QEMU keeps running instead). */
  endOutputWhenInputEnds?: boolean;
}

const U32_MASK = 0xffffffff;

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Runs one parsed command on the machine and returns its answer line (no newline). */
export async function executeQtestCommand(machine: QtestMachine, command: QtestCommand): Promise<string> {
  switch (command.kind) {
    case 'out':
      await machine.writePort(command.port, command.size, command.value);
      return formatQtestOk();
    case 'in': {
      const value = await machine.readPort(command.port, command.size);
      const mask = command.size === 4 ? U32_MASK : (1 << (command.size * 8)) - 1;
      return formatQtestPortValue((value & mask) >>> 0);
    }
    case 'writeValue':
      if (command.size === 8) await machine.writeMemory64(command.address, command.value);
      else await machine.writeMemory(command.address, command.size, Number(command.value));
      return formatQtestOk();
    case 'readValue': {
      if (command.size === 8) return formatQtestMemoryValue(BigInt.asUintN(64, await machine.readMemory64(command.address)));
      const value = await machine.readMemory(command.address, command.size);
      const mask = command.size === 4 ? U32_MASK : (1 << (command.size * 8)) - 1;
      return formatQtestMemoryValue(BigInt((value & mask) >>> 0));
    }
    case 'read':
    case 'b64read': {
      const data = await machine.readBytes(command.address, command.length);
      if (data.length !== command.length) {
        throw new Error(`machine returned ${data.length} bytes for a read of ${command.length}`);
      }
      return command.kind === 'read' ? formatQtestHexData(data) : formatQtestBase64Data(data);
    }
    case 'write':
    case 'b64write':
      await machine.writeBytes(command.address, command.data);
      return formatQtestOk();
    case 'memset':
      if (command.length > 0) await machine.writeBytes(command.address, new Uint8Array(command.length).fill(command.byte));
      return formatQtestOk();
    case 'endianness':
      return formatQtestOk('little');
    case 'irqIntercept': {
      const name = `irq_intercept_${command.direction}`;
      if (machine.interceptIrq === undefined) return formatQtestFail(`Unknown command '${name}'`);
      return (await machine.interceptIrq(command.direction, command.path)) ? formatQtestOk() : formatQtestFail('Unknown device');
    }
  }
}

/**
 * Serves the qtest protocol over a pair of streams. Commands run strictly in order, one at a time; every complete
 * line gets exactly one answer line, whatever it holds. `IRQ` lines can be pushed at any time between answers.
 */
export class QtestServer {
  /** Resolves when the input has ended and every answer has been written. */
  readonly closed: Promise<void>;
  private readonly limits: QtestLimits;
  private readonly maxLineLength: number;
  private pending = '';
  private discardingLongLine = false;
  private queue: Promise<void> = Promise.resolve();
  private outputBroken = false;
  private finished = false;
  private resolveClosed!: () => void;

  constructor(
    private readonly machine: QtestMachine,
    private readonly input: Readable,
    private readonly output: Writable,
    private readonly options: QtestServerOptions = {},
  ) {
    this.limits = options.limits ?? DEFAULT_QTEST_LIMITS;
    this.maxLineLength = options.maxLineLength ?? 64 * 1024 * 1024;
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    // Without a listener an EPIPE from a vanished client would be thrown as an uncaught error.
    this.output.on('error', () => {
      this.outputBroken = true;
    });
    this.input.on('data', (chunk: Buffer | string) => this.receive(typeof chunk === 'string' ? chunk : chunk.toString('latin1')));
    this.input.on('end', () => this.finish());
    this.input.on('close', () => this.finish());
    this.input.on('error', () => this.finish());
  }

  /** Parses and runs one line; always resolves to an answer (never rejects). */
  async handleLine(line: string): Promise<string> {
    const parsed = parseQtestCommand(line, this.limits);
    if (!parsed.ok) return parsed.answer;
    try {
      return await executeQtestCommand(this.machine, parsed.command);
    } catch (error) {
      return formatQtestFail(errorMessage(error));
    }
  }

  /** Sends an asynchronous `IRQ raise|lower N` line, queued behind answers already due so lines never interleave. */
  sendIrq(level: 'raise' | 'lower', line: number): void {
    this.enqueue(async () => this.writeLine(formatQtestIrq(level, line)));
  }

  private receive(text: string): void {
    let start = 0;
    for (;;) {
      const newline = text.indexOf('\n', start);
      if (newline < 0) break;
      const piece = text.slice(start, newline);
      start = newline + 1;
      if (this.discardingLongLine) {
        this.discardingLongLine = false;
        this.pending = '';
        continue;
      }
      const line = this.pending + piece;
      this.pending = '';
      if (line.length > this.maxLineLength) this.enqueueTooLong();
      else this.enqueueLine(line);
    }
    if (this.discardingLongLine) return;
    this.pending += text.slice(start);
    if (this.pending.length > this.maxLineLength) {
      this.pending = '';
      this.discardingLongLine = true;
      this.enqueueTooLong();
    }
  }

  private enqueueTooLong(): void {
    this.enqueue(async () => this.writeLine(formatQtestFail(`line longer than ${this.maxLineLength} characters`)));
  }

  private enqueueLine(line: string): void {
    // The input is decoded as latin1 so that any byte survives; commands are ASCII, so this loses nothing.
    this.enqueue(async () => this.writeLine(await this.handleLine(line)));
  }

  private enqueue(step: () => Promise<void>): void {
    this.queue = this.queue.then(step).catch(() => undefined);
  }

  private async writeLine(line: string): Promise<void> {
    if (this.outputBroken || this.output.destroyed || this.output.writableEnded) return;
    const drained = this.output.write(`${line}\n`);
    if (!drained) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.output.off('drain', done);
          this.output.off('close', done);
          resolve();
        };
        this.output.on('drain', done);
        this.output.on('close', done);
      });
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    // An unterminated last line is dropped, as QEMU does: it only acts on complete lines.
    this.pending = '';
    this.enqueue(async () => {
      if (this.options.endOutputWhenInputEnds === true && !this.output.writableEnded) this.output.end();
      this.resolveClosed();
    });
  }
}
