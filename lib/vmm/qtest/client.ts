/** The asking end of the qtest protocol over any pair of streams: typed commands, answers matched in order, IRQ lines kept. */
import type { Readable, Writable } from 'node:stream';
import {
  formatQtestCommand,
  isQtestAsyncLine,
  parseQtestAnswer,
  parseQtestAnswerBase64Data,
  parseQtestAnswerHexData,
  parseQtestAnswerNumber,
  type QtestCommand,
} from './protocol';

/** Addresses are 64-bit; a number is accepted for convenience when it is a safe non-negative integer. */
export type QtestAddress = bigint | number;

export interface QtestIrqEvent {
  level: 'raise' | 'lower';
  line: number;
  /** How many answers had arrived before this line, to place it in the command sequence. */
  afterAnswers: number;
}

/** One end that speaks qtest: real QEMU, our model, or an in-process server. Differential tests hold only this. */
export interface QtestPeer {
  readonly name: string;
  /** Every asynchronous `IRQ` line seen so far. */
  readonly irqEvents: readonly QtestIrqEvent[];
  outb(port: number, value: number): Promise<void>;
  outw(port: number, value: number): Promise<void>;
  outl(port: number, value: number): Promise<void>;
  inb(port: number): Promise<number>;
  inw(port: number): Promise<number>;
  inl(port: number): Promise<number>;
  writeb(address: QtestAddress, value: number): Promise<void>;
  writew(address: QtestAddress, value: number): Promise<void>;
  writel(address: QtestAddress, value: number): Promise<void>;
  writeq(address: QtestAddress, value: bigint): Promise<void>;
  readb(address: QtestAddress): Promise<number>;
  readw(address: QtestAddress): Promise<number>;
  readl(address: QtestAddress): Promise<number>;
  readq(address: QtestAddress): Promise<bigint>;
  /** `read`: bytes as hex on the wire. */
  readBytes(address: QtestAddress, length: number): Promise<Uint8Array>;
  /** `write`: bytes as hex on the wire. */
  writeBytes(address: QtestAddress, data: Uint8Array): Promise<void>;
  b64read(address: QtestAddress, length: number): Promise<Uint8Array>;
  b64write(address: QtestAddress, data: Uint8Array): Promise<void>;
  memset(address: QtestAddress, length: number, byte: number): Promise<void>;
  /** Sends a raw line and resolves with the answer, whatever it is (OK, FAIL or ERR). */
  send(line: string): Promise<string>;
  close(): Promise<void>;
}

/** A command answered with FAIL or ERR, or an answer that does not fit the command. */
export class QtestCommandError extends Error {
  readonly code = 'ERR_QTEST_COMMAND';
  constructor(
    readonly commandLine: string,
    readonly answer: string,
    detail?: string,
  ) {
    super(`qtest command '${commandLine}' answered '${answer}'${detail === undefined ? '' : `: ${detail}`}`);
    this.name = 'QtestCommandError';
  }
}

/** The peer stopped answering: timeout, closed stream, or exited process. Later commands fail the same way. */
export class QtestConnectionError extends Error {
  readonly code = 'ERR_QTEST_CONNECTION';
  constructor(message: string) {
    super(message);
    this.name = 'QtestConnectionError';
  }
}

export interface QtestClientOptions {
  name?: string;
  /** How long one command may wait for its answer (default 10 s). */
  commandTimeoutMs?: number;
  /** Adds context (such as the child's stderr) to connection errors. */
  describeFailure?: () => string;
}

interface PendingAnswer {
  line: string;
  resolve: (answer: string) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

function toAddress(address: QtestAddress): bigint {
  if (typeof address === 'bigint') {
    if (address < 0n || address >= 1n << 64n) throw new RangeError(`qtest address ${address} is outside 0..2^64-1`);
    return address;
  }
  if (!Number.isSafeInteger(address) || address < 0) throw new RangeError(`qtest address ${address} is not a non-negative safe integer`);
  return BigInt(address);
}

function checkLength(length: number): number {
  if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`qtest length ${length} is not a non-negative integer`);
  return length;
}

export class QtestClient implements QtestPeer {
  readonly name: string;
  readonly irqEvents: QtestIrqEvent[] = [];
  private readonly pending: PendingAnswer[] = [];
  private readonly commandTimeoutMs: number;
  private buffered = '';
  private answersSeen = 0;
  private broken: QtestConnectionError | undefined;

  constructor(
    input: Readable,
    private readonly output: Writable,
    private readonly options: QtestClientOptions = {},
  ) {
    this.name = options.name ?? 'qtest';
    this.commandTimeoutMs = options.commandTimeoutMs ?? 10_000;
    input.on('data', (chunk: Buffer | string) => this.receive(typeof chunk === 'string' ? chunk : chunk.toString('latin1')));
    input.on('end', () => this.breakConnection('the peer closed its output'));
    input.on('close', () => this.breakConnection('the peer closed its output'));
    input.on('error', (error: Error) => this.breakConnection(`reading from the peer failed: ${error.message}`));
    output.on('error', (error: Error) => this.breakConnection(`writing to the peer failed: ${error.message}`));
  }

  /** Marks the connection dead and fails every waiting command; later commands fail at once. */
  breakConnection(reason: string): void {
    if (this.broken !== undefined) return;
    const context = this.options.describeFailure?.() ?? '';
    this.broken = new QtestConnectionError(`${this.name}: ${reason}${context.length > 0 ? `\n${context}` : ''}`);
    for (const waiting of this.pending.splice(0)) {
      clearTimeout(waiting.timer);
      waiting.reject(this.broken);
    }
  }

  get isBroken(): boolean {
    return this.broken !== undefined;
  }

  send(line: string): Promise<string> {
    if (line.includes('\n')) return Promise.reject(new RangeError('a qtest command is one line'));
    if (this.broken !== undefined) return Promise.reject(this.broken);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        // Answers come in order, so once one is lost every later answer would be matched to the wrong command.
        this.breakConnection(`no answer to '${line}' within ${this.commandTimeoutMs} ms`);
      }, this.commandTimeoutMs);
      this.pending.push({ line, resolve, reject, timer });
      this.output.write(`${line}\n`);
    });
  }

  /** Sends a command and returns the text after `OK ` (empty for a bare `OK`); FAIL and ERR reject. */
  async command(line: string): Promise<string> {
    const answer = await this.send(line);
    const parsed = parseQtestAnswer(answer);
    if (parsed.kind !== 'ok') throw new QtestCommandError(line, answer);
    return parsed.value ?? '';
  }

  private async run(command: QtestCommand): Promise<{ line: string; value: string }> {
    const line = formatQtestCommand(command);
    return { line, value: await this.command(line) };
  }

  private async runNumber(command: QtestCommand): Promise<bigint> {
    const { line, value } = await this.run(command);
    const number = parseQtestAnswerNumber(value);
    if (number === undefined) throw new QtestCommandError(line, `OK ${value}`, 'expected a hex number');
    return number;
  }

  private async out(size: 1 | 2 | 4, port: number, value: number): Promise<void> {
    await this.run({ kind: 'out', size, port, value: value >>> 0 });
  }

  private async in(size: 1 | 2 | 4, port: number): Promise<number> {
    return Number(await this.runNumber({ kind: 'in', size, port }));
  }

  private async writeValue(size: 1 | 2 | 4 | 8, address: QtestAddress, value: bigint): Promise<void> {
    await this.run({ kind: 'writeValue', size, address: toAddress(address), value: BigInt.asUintN(64, value) });
  }

  private async readValue(size: 1 | 2 | 4 | 8, address: QtestAddress): Promise<bigint> {
    return this.runNumber({ kind: 'readValue', size, address: toAddress(address) });
  }

  outb(port: number, value: number): Promise<void> {
    return this.out(1, port, value & 0xff);
  }
  outw(port: number, value: number): Promise<void> {
    return this.out(2, port, value & 0xffff);
  }
  outl(port: number, value: number): Promise<void> {
    return this.out(4, port, value);
  }
  inb(port: number): Promise<number> {
    return this.in(1, port);
  }
  inw(port: number): Promise<number> {
    return this.in(2, port);
  }
  inl(port: number): Promise<number> {
    return this.in(4, port);
  }
  writeb(address: QtestAddress, value: number): Promise<void> {
    return this.writeValue(1, address, BigInt(value & 0xff));
  }
  writew(address: QtestAddress, value: number): Promise<void> {
    return this.writeValue(2, address, BigInt(value & 0xffff));
  }
  writel(address: QtestAddress, value: number): Promise<void> {
    return this.writeValue(4, address, BigInt(value >>> 0));
  }
  writeq(address: QtestAddress, value: bigint): Promise<void> {
    return this.writeValue(8, address, value);
  }
  async readb(address: QtestAddress): Promise<number> {
    return Number(await this.readValue(1, address));
  }
  async readw(address: QtestAddress): Promise<number> {
    return Number(await this.readValue(2, address));
  }
  async readl(address: QtestAddress): Promise<number> {
    return Number(await this.readValue(4, address));
  }
  readq(address: QtestAddress): Promise<bigint> {
    return this.readValue(8, address);
  }

  async readBytes(address: QtestAddress, length: number): Promise<Uint8Array> {
    const { line, value } = await this.run({ kind: 'read', address: toAddress(address), length: checkLength(length) });
    const data = parseQtestAnswerHexData(value, length);
    if (data === undefined) throw new QtestCommandError(line, `OK ${value}`, `expected ${length} hex bytes`);
    return data;
  }

  async writeBytes(address: QtestAddress, data: Uint8Array): Promise<void> {
    // QEMU answers `ERR invalid argument size` to a data word shorter than "0x" plus one digit.
    if (data.length === 0) return;
    await this.run({ kind: 'write', address: toAddress(address), length: data.length, data });
  }

  async b64read(address: QtestAddress, length: number): Promise<Uint8Array> {
    const { line, value } = await this.run({ kind: 'b64read', address: toAddress(address), length: checkLength(length) });
    const data = parseQtestAnswerBase64Data(value, length);
    if (data === undefined) throw new QtestCommandError(line, `OK ${value}`, `expected ${length} bytes of base64`);
    return data;
  }

  async b64write(address: QtestAddress, data: Uint8Array): Promise<void> {
    if (data.length === 0) return;
    await this.run({ kind: 'b64write', address: toAddress(address), length: data.length, data });
  }

  async memset(address: QtestAddress, length: number, byte: number): Promise<void> {
    await this.run({ kind: 'memset', address: toAddress(address), length: checkLength(length), byte: byte & 0xff });
  }

  /** Ends the output stream; the other side decides what to do about that (QEMU ignores it). */
  async close(): Promise<void> {
    if (!this.output.writableEnded) this.output.end();
    this.breakConnection('the client was closed');
  }

  private receive(text: string): void {
    this.buffered += text;
    let newline: number;
    while ((newline = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, newline);
      this.buffered = this.buffered.slice(newline + 1);
      this.dispatch(line);
    }
  }

  private dispatch(line: string): void {
    if (isQtestAsyncLine(line)) {
      const parsed = parseQtestAnswer(line);
      if (parsed.kind === 'irq') this.irqEvents.push({ level: parsed.level, line: parsed.line, afterAnswers: this.answersSeen });
      return;
    }
    const waiting = this.pending.shift();
    if (waiting === undefined) {
      this.breakConnection(`unexpected line '${line}' with no command waiting`);
      return;
    }
    clearTimeout(waiting.timer);
    this.answersSeen++;
    waiting.resolve(line);
  }
}

/** Sends each line in order and collects the raw answers (FAIL and ERR included), for comparing two peers. */
export async function playQtestScript(peer: QtestPeer, lines: readonly string[]): Promise<string[]> {
  const answers: string[] = [];
  for (const line of lines) answers.push(await peer.send(line));
  return answers;
}
