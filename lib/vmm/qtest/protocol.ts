/** The qtest line protocol as QEMU's `-qtest stdio` speaks it: command and answer types, parsing and formatting. */

// Facts carried over from QEMU 7.2 (softmmu/qtest.c, checked against the Debian 7.2 binary):
// - one command per line, words split on single spaces (two spaces make an empty word);
// - numbers are strtoul(base 0): 0x/0X hex, a leading 0 is octal, otherwise decimal; an optional sign, a negative
//   value wraps modulo 2^64; anything left after the digits is an error;
// - words after the last argument a command uses are ignored;
// - answers: `OK`, `OK 0x%04x` for in*, `OK 0x%016x` for read*, `OK 0x<2 hex digits per byte>` for read,
//   `OK <base64>` for b64read (`OK ` when empty), `OK little` for endianness,
//   `ERR invalid argument size` when the data word of write/b64write is shorter than 3 characters,
//   `FAIL Unknown command '<word>'` for anything else; asynchronous `IRQ raise N` / `IRQ lower N` lines.
// Where QEMU aborts the whole process (missing or malformed number, port above 0xffff, `read` of length 0, an empty
// line) this side answers `FAIL <reason>` instead and keeps serving.

export type QtestPortSize = 1 | 2 | 4;
export type QtestValueSize = 1 | 2 | 4 | 8;
export type QtestIrqDirection = 'in' | 'out';

export type QtestCommand =
  | { kind: 'out'; size: QtestPortSize; port: number; value: number }
  | { kind: 'in'; size: QtestPortSize; port: number }
  | { kind: 'writeValue'; size: QtestValueSize; address: bigint; value: bigint }
  | { kind: 'readValue'; size: QtestValueSize; address: bigint }
  | { kind: 'read'; address: bigint; length: number }
  | { kind: 'write'; address: bigint; length: number; data: Uint8Array }
  | { kind: 'b64read'; address: bigint; length: number }
  | { kind: 'b64write'; address: bigint; length: number; data: Uint8Array }
  | { kind: 'memset'; address: bigint; length: number; byte: number }
  | { kind: 'endianness' }
  | { kind: 'irqIntercept'; direction: QtestIrqDirection; path: string };

export type QtestParseResult = { ok: true; command: QtestCommand } | { ok: false; answer: string };

/** An answer line, split into its kind. `value` is the text after `OK ` (absent for a bare `OK`). */
export type QtestAnswer =
  | { kind: 'ok'; value?: string }
  | { kind: 'fail'; message: string }
  | { kind: 'err'; message: string }
  | { kind: 'irq'; level: 'raise' | 'lower'; line: number };

export interface QtestLimits {
  /** Largest LEN accepted by read/write/b64read/b64write/memset; QEMU would try to allocate anything. */
  maxTransferLength: number;
}

export const DEFAULT_QTEST_LIMITS: Readonly<QtestLimits> = { maxTransferLength: 16 * 1024 * 1024 };

const U64_MASK = (1n << 64n) - 1n;
const MAX_PORT = 0xffff;

const PORT_SIZE_BY_SUFFIX: Readonly<Record<string, QtestPortSize>> = { b: 1, w: 2, l: 4 };
const VALUE_SIZE_BY_SUFFIX: Readonly<Record<string, QtestValueSize>> = { b: 1, w: 2, l: 4, q: 8 };
const SUFFIX_BY_SIZE: Readonly<Record<number, string>> = { 1: 'b', 2: 'w', 4: 'l', 8: 'q' };

export const QTEST_ERR_INVALID_ARGUMENT_SIZE = 'ERR invalid argument size';

/**
 * A number word as QEMU's qemu_strtou64/qemu_strtoul(base 0) reads it, as an unsigned 64-bit bigint;
 * undefined when QEMU would reject it (empty, stray characters, out of range).
 */
export function parseQtestNumber(word: string): bigint | undefined {
  const match = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(word);
  if (match === null) return undefined;
  const [, sign, digits] = match as unknown as [string, string, string];
  let magnitude: bigint;
  if (/^0[xX]/.test(digits)) magnitude = BigInt(digits.toLowerCase());
  else if (digits.length > 1 && digits.startsWith('0')) magnitude = BigInt(`0o${digits.slice(1)}`);
  else magnitude = BigInt(digits);
  if (magnitude > U64_MASK) return undefined;
  return sign === '-' ? -magnitude & U64_MASK : magnitude;
}

function fail(message: string): { ok: false; answer: string } {
  return { ok: false, answer: formatQtestFail(message) };
}

type NumberResult = { ok: true; value: bigint } | { ok: false; answer: string };

function numberArgument(words: readonly string[], index: number, what: string): NumberResult {
  const word = words[index];
  if (word === undefined) return fail(`${words[0]}: missing ${what}`);
  const value = parseQtestNumber(word);
  if (value === undefined) return fail(`${words[0]}: bad ${what} '${word}'`);
  return { ok: true, value };
}

function lengthArgument(words: readonly string[], index: number, limits: QtestLimits): NumberResult {
  const result = numberArgument(words, index, 'length');
  if (!result.ok) return result;
  if (result.value > BigInt(limits.maxTransferLength)) {
    return fail(`${words[0]}: length ${result.value} exceeds the limit of ${limits.maxTransferLength}`);
  }
  return result;
}

/** `0x` then hex digits, two per byte, zero-filled at the end as QEMU does; an odd last digit is dropped. */
function decodeHexData(word: string, length: number): Uint8Array | undefined {
  if (!/^0[xX][0-9a-fA-F]*$/.test(word)) return undefined;
  const data = new Uint8Array(length);
  const digits = word.slice(2);
  const complete = Math.min(length, Math.floor(digits.length / 2));
  for (let i = 0; i < complete; i++) data[i] = parseInt(digits.slice(i * 2, i * 2 + 2), 16);
  return data;
}

/** Base64 truncated or zero-filled to `length` (QEMU writes whatever follows its decode buffer instead). */
function decodeBase64Data(word: string, length: number): Uint8Array | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(word)) return undefined;
  const decoded = Buffer.from(word, 'base64');
  const data = new Uint8Array(length);
  data.set(decoded.subarray(0, Math.min(length, decoded.length)));
  return data;
}

/** Parses one command line (without its newline; a trailing CR is tolerated). */
export function parseQtestCommand(line: string, limits: QtestLimits = DEFAULT_QTEST_LIMITS): QtestParseResult {
  const text = line.endsWith('\r') ? line.slice(0, -1) : line;
  if (text.length === 0) return fail('empty command');
  const words = text.split(' ');
  const name = words[0] as string;
  if (name.length === 0) return fail('command starts with a space');

  const portMatch = /^(out|in)([bwl])$/.exec(name);
  if (portMatch !== null) {
    const size = PORT_SIZE_BY_SUFFIX[portMatch[2] as string] as QtestPortSize;
    const port = numberArgument(words, 1, 'port');
    if (!port.ok) return port;
    if (port.value > BigInt(MAX_PORT)) return fail(`${name}: port ${words[1]} is above 0xffff`);
    if (portMatch[1] === 'in') return { ok: true, command: { kind: 'in', size, port: Number(port.value) } };
    const value = numberArgument(words, 2, 'value');
    if (!value.ok) return value;
    const truncated = Number(value.value & ((1n << BigInt(size * 8)) - 1n));
    return { ok: true, command: { kind: 'out', size, port: Number(port.value), value: truncated } };
  }

  const valueMatch = /^(read|write)([bwlq])$/.exec(name);
  if (valueMatch !== null) {
    const size = VALUE_SIZE_BY_SUFFIX[valueMatch[2] as string] as QtestValueSize;
    const address = numberArgument(words, 1, 'address');
    if (!address.ok) return address;
    if (valueMatch[1] === 'read') {
      return { ok: true, command: { kind: 'readValue', size, address: address.value } };
    }
    const value = numberArgument(words, 2, 'value');
    if (!value.ok) return value;
    const truncated = value.value & ((1n << BigInt(size * 8)) - 1n);
    return { ok: true, command: { kind: 'writeValue', size, address: address.value, value: truncated } };
  }

  switch (name) {
    case 'read':
    case 'b64read': {
      const address = numberArgument(words, 1, 'address');
      if (!address.ok) return address;
      const length = lengthArgument(words, 2, limits);
      if (!length.ok) return length;
      // QEMU asserts on `read` of nothing because "OK 0x" would look like garbage to libqtest.
      if (name === 'read' && length.value === 0n) return fail('read: length must not be 0');
      return { ok: true, command: { kind: name, address: address.value, length: Number(length.value) } };
    }
    case 'write':
    case 'b64write': {
      const address = numberArgument(words, 1, 'address');
      if (!address.ok) return address;
      const length = lengthArgument(words, 2, limits);
      if (!length.ok) return length;
      const word = words[3];
      if (word === undefined) return fail(`${name}: missing data`);
      if (word.length < 3) return { ok: false, answer: QTEST_ERR_INVALID_ARGUMENT_SIZE };
      const count = Number(length.value);
      const data = name === 'write' ? decodeHexData(word, count) : decodeBase64Data(word, count);
      if (data === undefined) return fail(`${name}: malformed data`);
      return { ok: true, command: { kind: name, address: address.value, length: count, data } };
    }
    case 'memset': {
      const address = numberArgument(words, 1, 'address');
      if (!address.ok) return address;
      const length = lengthArgument(words, 2, limits);
      if (!length.ok) return length;
      const pattern = numberArgument(words, 3, 'byte');
      if (!pattern.ok) return pattern;
      const byte = Number(pattern.value & 0xffn);
      return { ok: true, command: { kind: 'memset', address: address.value, length: Number(length.value), byte } };
    }
    case 'endianness':
      return { ok: true, command: { kind: 'endianness' } };
    case 'irq_intercept_in':
    case 'irq_intercept_out': {
      const path = words[1];
      if (path === undefined || path.length === 0) return fail(`${name}: missing QOM path`);
      const direction: QtestIrqDirection = name === 'irq_intercept_in' ? 'in' : 'out';
      return { ok: true, command: { kind: 'irqIntercept', direction, path } };
    }
    default:
      return { ok: false, answer: formatQtestUnknownCommand(name) };
  }
}

function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

/** The line (without newline) that asks for `command`; parseQtestCommand(formatQtestCommand(c)) gives c back. */
export function formatQtestCommand(command: QtestCommand): string {
  switch (command.kind) {
    case 'out':
      return `out${SUFFIX_BY_SIZE[command.size]} ${hex(command.port)} ${hex(command.value)}`;
    case 'in':
      return `in${SUFFIX_BY_SIZE[command.size]} ${hex(command.port)}`;
    case 'writeValue':
      return `write${SUFFIX_BY_SIZE[command.size]} ${hex(command.address)} ${hex(command.value)}`;
    case 'readValue':
      return `read${SUFFIX_BY_SIZE[command.size]} ${hex(command.address)}`;
    case 'read':
    case 'b64read':
      return `${command.kind} ${hex(command.address)} ${command.length}`;
    case 'write':
      return `write ${hex(command.address)} ${command.length} 0x${Buffer.from(command.data).toString('hex')}`;
    case 'b64write':
      return `b64write ${hex(command.address)} ${command.length} ${Buffer.from(command.data).toString('base64')}`;
    case 'memset':
      return `memset ${hex(command.address)} ${command.length} ${hex(command.byte)}`;
    case 'endianness':
      return 'endianness';
    case 'irqIntercept':
      return `irq_intercept_${command.direction} ${command.path}`;
  }
}

export function formatQtestOk(value?: string): string {
  return value === undefined ? 'OK' : `OK ${value}`;
}

/** `OK 0x%04x`: in* answers use at least four digits, more when the value needs them. */
export function formatQtestPortValue(value: number): string {
  return `OK 0x${(value >>> 0).toString(16).padStart(4, '0')}`;
}

/** `OK 0x%016x`: every read* answer uses sixteen digits, whatever the access size. */
export function formatQtestMemoryValue(value: bigint): string {
  return `OK 0x${(value & U64_MASK).toString(16).padStart(16, '0')}`;
}

export function formatQtestHexData(data: Uint8Array): string {
  return `OK 0x${Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('hex')}`;
}

/** `OK <base64>`; with no data QEMU still sends the space. */
export function formatQtestBase64Data(data: Uint8Array): string {
  return `OK ${Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64')}`;
}

export function formatQtestFail(message: string): string {
  return `FAIL ${message.replace(/[\r\n]+/g, ' ')}`;
}

export function formatQtestUnknownCommand(word: string): string {
  return formatQtestFail(`Unknown command '${word}'`);
}

export function formatQtestIrq(level: 'raise' | 'lower', line: number): string {
  return `IRQ ${level} ${line}`;
}

/** Splits an answer line; anything not recognisable is reported as a `fail` carrying the whole line. */
export function parseQtestAnswer(line: string): QtestAnswer {
  const text = line.endsWith('\r') ? line.slice(0, -1) : line;
  if (text === 'OK') return { kind: 'ok' };
  if (text.startsWith('OK ')) return { kind: 'ok', value: text.slice(3) };
  if (text === 'FAIL') return { kind: 'fail', message: '' };
  if (text.startsWith('FAIL ')) return { kind: 'fail', message: text.slice(5) };
  if (text.startsWith('ERR')) return { kind: 'err', message: text.slice(3).trimStart() };
  const irq = /^IRQ (raise|lower) (-?\d+)$/.exec(text);
  if (irq !== null) return { kind: 'irq', level: irq[1] as 'raise' | 'lower', line: Number(irq[2]) };
  return { kind: 'fail', message: `unrecognised answer '${text}'` };
}

/** True for asynchronous lines, which are not the answer to any command. */
export function isQtestAsyncLine(line: string): boolean {
  return line.startsWith('IRQ');
}

/** The number in an `OK 0x...` answer value. */
export function parseQtestAnswerNumber(value: string | undefined): bigint | undefined {
  if (value === undefined || !/^0x[0-9a-fA-F]+$/.test(value)) return undefined;
  return BigInt(value);
}

/** The bytes in a `read` answer value (`0x` then two digits per byte). */
export function parseQtestAnswerHexData(value: string | undefined, length: number): Uint8Array | undefined {
  if (value === undefined || !/^0x[0-9a-fA-F]*$/.test(value) || value.length !== 2 + length * 2) return undefined;
  return new Uint8Array(Buffer.from(value.slice(2), 'hex'));
}

/** The bytes in a `b64read` answer value. */
export function parseQtestAnswerBase64Data(value: string | undefined, length: number): Uint8Array | undefined {
  if (value === undefined || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) return undefined;
  const data = new Uint8Array(Buffer.from(value, 'base64'));
  return data.length === length ? data : undefined;
}
