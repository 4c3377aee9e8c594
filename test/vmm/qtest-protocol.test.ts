/** Tests of the qtest line protocol: parsing and formatting of every command, FAIL answers, a whole session in memory. */
import { strict as assert } from 'node:assert';
import { PassThrough } from 'node:stream';
import fc from 'fast-check';
import {
  formatQtestBase64Data,
  formatQtestCommand,
  formatQtestHexData,
  formatQtestMemoryValue,
  formatQtestPortValue,
  parseQtestAnswer,
  parseQtestCommand,
  parseQtestNumber,
  type QtestCommand,
} from '../../lib/vmm/qtest/protocol';
import { QtestServer } from '../../lib/vmm/qtest/server';
import type { QtestMachine } from '../../lib/vmm/qtest/machine';
import { playQtestScript, QtestClient, QtestCommandError, QtestConnectionError } from '../../lib/vmm/qtest/client';
import { RamMachine } from './ram-machine';

function parsed(line: string): QtestCommand {
  const result = parseQtestCommand(line);
  if (!result.ok) assert.fail(`'${line}' was refused: ${result.answer}`);
  return result.command;
}

function refusal(line: string): string {
  const result = parseQtestCommand(line);
  if (result.ok) assert.fail(`'${line}' was accepted as ${JSON.stringify(result.command, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
  return result.answer;
}

describe('qtest protocol: numbers (strtoul base 0, as QEMU reads them)', () => {
  const cases: Array<[string, bigint | undefined]> = [
    ['0', 0n],
    ['16', 16n],
    ['0x10', 16n],
    ['0X1f', 31n],
    ['010', 8n],
    ['+8', 8n],
    ['-1', (1n << 64n) - 1n],
    ['-0x2', (1n << 64n) - 2n],
    ['0xffffffffffffffff', (1n << 64n) - 1n],
    ['0x10000000000000000', undefined],
    ['18446744073709551616', undefined],
    ['', undefined],
    ['0x', undefined],
    ['08', undefined],
    ['1e3', undefined],
    ['12abc', undefined],
    ['-', undefined],
    ['0x10\r', undefined],
  ];
  for (const [word, expected] of cases) {
    it(`'${JSON.stringify(word).slice(1, -1)}' -> ${expected === undefined ? 'refused' : `0x${expected.toString(16)}`}`, () => {
      assert.equal(parseQtestNumber(word), expected);
    });
  }

  it('reads back any 64-bit value written in hex, decimal or octal', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (value) => {
        assert.equal(parseQtestNumber(`0x${value.toString(16)}`), value);
        assert.equal(parseQtestNumber(value.toString(10)), value);
        assert.equal(parseQtestNumber(`0${value.toString(8)}`), value);
      }),
    );
  });
});

describe('qtest protocol: parsing each command', () => {
  it('outb/outw/outl PORT VALUE, value cut to the access size', () => {
    assert.deepEqual(parsed('outb 0x80 0x1ff'), { kind: 'out', size: 1, port: 0x80, value: 0xff });
    assert.deepEqual(parsed('outw 0x80 70000'), { kind: 'out', size: 2, port: 0x80, value: 70000 & 0xffff });
    assert.deepEqual(parsed('outl 0xcf8 0x80002000'), { kind: 'out', size: 4, port: 0xcf8, value: 0x80002000 });
    assert.deepEqual(parsed('outl 0xcf8 -1'), { kind: 'out', size: 4, port: 0xcf8, value: 0xffffffff });
  });

  it('inb/inw/inl PORT', () => {
    assert.deepEqual(parsed('inb 0x80'), { kind: 'in', size: 1, port: 0x80 });
    assert.deepEqual(parsed('inw 0xcfc'), { kind: 'in', size: 2, port: 0xcfc });
    assert.deepEqual(parsed('inl 3324'), { kind: 'in', size: 4, port: 0xcfc });
  });

  it('writeb/writew/writel/writeq ADDR VALUE with 64-bit addresses', () => {
    assert.deepEqual(parsed('writeb 0x1000 0x1234'), { kind: 'writeValue', size: 1, address: 0x1000n, value: 0x34n });
    assert.deepEqual(parsed('writew 0x1000 0x12345'), { kind: 'writeValue', size: 2, address: 0x1000n, value: 0x2345n });
    assert.deepEqual(parsed('writel 16 -1'), { kind: 'writeValue', size: 4, address: 16n, value: 0xffffffffn });
    assert.deepEqual(parsed('writeq 0xfffffffffffff000 0xffffffffffffffff'), {
      kind: 'writeValue',
      size: 8,
      address: 0xfffffffffffff000n,
      value: 0xffffffffffffffffn,
    });
  });

  it('readb/readw/readl/readq ADDR', () => {
    assert.deepEqual(parsed('readb 0'), { kind: 'readValue', size: 1, address: 0n });
    assert.deepEqual(parsed('readw 0x2'), { kind: 'readValue', size: 2, address: 2n });
    assert.deepEqual(parsed('readl 0xfed90000'), { kind: 'readValue', size: 4, address: 0xfed90000n });
    assert.deepEqual(parsed('readq 0xfed90008'), { kind: 'readValue', size: 8, address: 0xfed90008n });
  });

  it('read and b64read ADDR LEN', () => {
    assert.deepEqual(parsed('read 0x1000 8'), { kind: 'read', address: 0x1000n, length: 8 });
    assert.deepEqual(parsed('b64read 0x1000 0'), { kind: 'b64read', address: 0x1000n, length: 0 });
  });

  it('write ADDR LEN 0xHEX zero-fills short data and drops an odd last digit, as QEMU does', () => {
    assert.deepEqual(parsed('write 0x10 4 0x12345678'), { kind: 'write', address: 0x10n, length: 4, data: new Uint8Array([0x12, 0x34, 0x56, 0x78]) });
    assert.deepEqual(parsed('write 0x10 4 0x12345'), { kind: 'write', address: 0x10n, length: 4, data: new Uint8Array([0x12, 0x34, 0, 0]) });
    assert.deepEqual(parsed('write 0x10 4 0x1'), { kind: 'write', address: 0x10n, length: 4, data: new Uint8Array(4) });
    assert.deepEqual(parsed('write 0x10 1 0xabcd'), { kind: 'write', address: 0x10n, length: 1, data: new Uint8Array([0xab]) });
  });

  it('b64write ADDR LEN B64 truncates or zero-fills to LEN', () => {
    assert.deepEqual(parsed('b64write 0x10 3 AQID'), { kind: 'b64write', address: 0x10n, length: 3, data: new Uint8Array([1, 2, 3]) });
    assert.deepEqual(parsed('b64write 0x10 2 AQID'), { kind: 'b64write', address: 0x10n, length: 2, data: new Uint8Array([1, 2]) });
    assert.deepEqual(parsed('b64write 0x10 4 AQID'), { kind: 'b64write', address: 0x10n, length: 4, data: new Uint8Array([1, 2, 3, 0]) });
  });

  it('memset ADDR LEN BYTE, byte cut to 8 bits, length 0 allowed', () => {
    assert.deepEqual(parsed('memset 0x10 2 0x1ff'), { kind: 'memset', address: 0x10n, length: 2, byte: 0xff });
    assert.deepEqual(parsed('memset 0x10 0 5'), { kind: 'memset', address: 0x10n, length: 0, byte: 5 });
  });

  it('endianness and irq_intercept_in/out', () => {
    assert.deepEqual(parsed('endianness'), { kind: 'endianness' });
    assert.deepEqual(parsed('irq_intercept_in ioapic'), { kind: 'irqIntercept', direction: 'in', path: 'ioapic' });
    assert.deepEqual(parsed('irq_intercept_out /machine/x'), { kind: 'irqIntercept', direction: 'out', path: '/machine/x' });
  });

  it('ignores words after the last argument, as QEMU does, and tolerates a trailing CR', () => {
    assert.deepEqual(parsed('readq 16 extra'), { kind: 'readValue', size: 8, address: 16n });
    assert.deepEqual(parsed('readq 16\r'), { kind: 'readValue', size: 8, address: 16n });
  });

  it('formats every command so that it parses back to itself', () => {
    const address = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
    const bytes = fc.uint8Array({ minLength: 1, maxLength: 64 });
    const command: fc.Arbitrary<QtestCommand> = fc.oneof(
      fc.record({
        kind: fc.constant('out' as const),
        size: fc.constantFrom(1 as const, 2 as const, 4 as const),
        port: fc.integer({ min: 0, max: 0xffff }),
        value: fc.integer({ min: 0, max: 0xff }),
      }),
      fc.record({
        kind: fc.constant('in' as const),
        size: fc.constantFrom(1 as const, 2 as const, 4 as const),
        port: fc.integer({ min: 0, max: 0xffff }),
      }),
      fc.record({ kind: fc.constant('writeValue' as const), size: fc.constant(8 as const), address, value: address }),
      fc.record({ kind: fc.constant('readValue' as const), size: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const), address }),
      fc.record({ kind: fc.constant('read' as const), address, length: fc.integer({ min: 1, max: 4096 }) }),
      fc.record({ kind: fc.constant('b64read' as const), address, length: fc.integer({ min: 0, max: 4096 }) }),
      bytes.chain((data) => fc.record({ kind: fc.constant('write' as const), address, length: fc.constant(data.length), data: fc.constant(data) })),
      fc
        .uint8Array({ minLength: 2, maxLength: 64 })
        .chain((data) => fc.record({ kind: fc.constant('b64write' as const), address, length: fc.constant(data.length), data: fc.constant(data) })),
      fc.record({ kind: fc.constant('memset' as const), address, length: fc.integer({ min: 0, max: 4096 }), byte: fc.integer({ min: 0, max: 255 }) }),
    );
    fc.assert(fc.property(command, (original) => assert.deepEqual(parsed(formatQtestCommand(original)), { ...original })));
  });
});

describe('qtest protocol: malformed lines answer FAIL (where QEMU would abort)', () => {
  const failing = [
    '',
    ' readq 0',
    'readq',
    'readq  16',
    'readq 0x',
    'readq 1e3',
    'writeq 0x1000 0x10000000000000000',
    'writel 0x1000',
    'outb 0x10000 1',
    'outb 0x80',
    'inl',
    'read 0x1000 0',
    'read 0x1000',
    'read 0x1000 0x7fffffffffff',
    'write 0x1000 2',
    'write 0x1000 2 0xzzzz',
    'write 0x1000 2 1234',
    'b64write 0x1000 2 !!!!',
    'memset 0x1000 4',
    'irq_intercept_in',
  ];
  for (const line of failing) {
    it(`'${JSON.stringify(line).slice(1, -1)}' -> FAIL ...`, () => {
      const answer = refusal(line);
      assert.match(answer, /^FAIL \S/);
      assert.equal(answer.includes('\n'), false);
    });
  }

  it("unknown commands answer exactly FAIL Unknown command '<word>'", () => {
    assert.equal(refusal('clock_step'), "FAIL Unknown command 'clock_step'");
    assert.equal(refusal('READQ 0'), "FAIL Unknown command 'READQ'");
    assert.equal(refusal('foo bar'), "FAIL Unknown command 'foo'");
  });

  it('write/b64write data shorter than 3 characters answers ERR invalid argument size, as QEMU does', () => {
    assert.equal(refusal('write 0x1000 2 0x'), 'ERR invalid argument size');
    assert.equal(refusal('b64write 0x1000 2 AB'), 'ERR invalid argument size');
  });

  it('never throws on arbitrary text', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (line) => {
        const result = parseQtestCommand(line.replace(/\n/g, ''));
        if (!result.ok) assert.match(result.answer, /^(FAIL|ERR) /);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('qtest protocol: answers', () => {
  it('in* answers use %04x, read* answers %016x', () => {
    assert.equal(formatQtestPortValue(0xff), 'OK 0x00ff');
    assert.equal(formatQtestPortValue(0x1234), 'OK 0x1234');
    assert.equal(formatQtestPortValue(0xffffffff), 'OK 0xffffffff');
    assert.equal(formatQtestMemoryValue(0x10n), 'OK 0x0000000000000010');
    assert.equal(formatQtestMemoryValue(0x00d2008c22260206n), 'OK 0x00d2008c22260206');
  });

  it('read answers hex bytes in address order, b64read base64 (an empty one keeps the space)', () => {
    assert.equal(formatQtestHexData(new Uint8Array([0x06, 0x02, 0x26, 0x22])), 'OK 0x06022622');
    assert.equal(formatQtestBase64Data(new Uint8Array([6, 2, 38, 34, 140, 0, 210, 0])), 'OK BgImIowA0gA=');
    assert.equal(formatQtestBase64Data(new Uint8Array(0)), 'OK ');
  });

  it('splits answer lines into kinds', () => {
    assert.deepEqual(parseQtestAnswer('OK'), { kind: 'ok' });
    assert.deepEqual(parseQtestAnswer('OK 0x00ff'), { kind: 'ok', value: '0x00ff' });
    assert.deepEqual(parseQtestAnswer('OK '), { kind: 'ok', value: '' });
    assert.deepEqual(parseQtestAnswer("FAIL Unknown command 'x'"), { kind: 'fail', message: "Unknown command 'x'" });
    assert.deepEqual(parseQtestAnswer('FAIL'), { kind: 'fail', message: '' });
    assert.deepEqual(parseQtestAnswer('ERR invalid argument size'), { kind: 'err', message: 'invalid argument size' });
    assert.deepEqual(parseQtestAnswer('IRQ raise 3'), { kind: 'irq', level: 'raise', line: 3 });
    assert.deepEqual(parseQtestAnswer('IRQ lower 0'), { kind: 'irq', level: 'lower', line: 0 });
  });
});

/** The RAM machine with some methods replaced, the way a test wants a machine to misbehave. */
function withOverrides(ram: RamMachine, overrides: Partial<QtestMachine>): QtestMachine {
  return new Proxy(ram, {
    get: (target, key, receiver) => (key in overrides ? overrides[key as keyof QtestMachine] : Reflect.get(target, key, receiver)),
  }) as unknown as QtestMachine;
}

interface Session {
  machine: QtestMachine;
  server: QtestServer;
  client: QtestClient;
  toServer: PassThrough;
  fromServer: PassThrough;
}

function openSession(machine: QtestMachine = new RamMachine()): Session {
  const toServer = new PassThrough();
  const fromServer = new PassThrough();
  const server = new QtestServer(machine, toServer, fromServer, { endOutputWhenInputEnds: true });
  const client = new QtestClient(fromServer, toServer, { name: 'in-memory', commandTimeoutMs: 2000 });
  return { machine, server, client, toServer, fromServer };
}

describe('qtest server and client over in-memory streams', () => {
  it('answers every command of a session against a RAM machine', async () => {
    const machine = new RamMachine().onPortRead(0x71, () => 0x42);
    const { client, server } = openSession(machine);
    await client.writeq(0x1000, 0x1122334455667788n);
    assert.equal(await client.readq(0x1000), 0x1122334455667788n);
    assert.equal(await client.readl(0x1000), 0x55667788);
    assert.equal(await client.readw(0x1006), 0x1122);
    assert.equal(await client.readb(0x1001), 0x77);
    await client.writel(0x2000, 0xdeadbeef);
    await client.writew(0x2004, 0xcafe);
    await client.writeb(0x2006, 0x99);
    assert.deepEqual(await client.readBytes(0x2000, 8), new Uint8Array([0xef, 0xbe, 0xad, 0xde, 0xfe, 0xca, 0x99, 0]));
    await client.writeBytes(0x3000, new Uint8Array([1, 2, 3]));
    assert.deepEqual(await client.b64read(0x3000, 4), new Uint8Array([1, 2, 3, 0]));
    await client.b64write(0x3001, new Uint8Array([9, 8, 7]));
    assert.deepEqual(await client.readBytes(0x3000, 4), new Uint8Array([1, 9, 8, 7]));
    await client.memset(0x3000, 2, 0xaa);
    assert.deepEqual(await client.readBytes(0x3000, 4), new Uint8Array([0xaa, 0xaa, 8, 7]));
    await client.writeq(0xfffffffffffffff8n, 0xffffffffffffffffn);
    assert.equal(await client.readq(0xfffffffffffffff8n), 0xffffffffffffffffn);
    await client.outb(0x70, 0x8f);
    assert.deepEqual(machine.portWrites, [{ port: 0x70, size: 1, value: 0x8f }]);
    assert.equal(await client.inb(0x71), 0x42);
    assert.equal(await client.inl(0x80), 0xffffffff);
    assert.equal(await client.send('endianness'), 'OK little');
    await client.close();
    await server.closed;
  });

  it('keeps serving after malformed lines, answering each one in order', async () => {
    const { client } = openSession();
    const answers = await playQtestScript(client, ['', 'readq', 'bogus 1 2', 'writeq 0x10 0x55', 'outb 0x10000 1', 'write 0 2 0x', 'readq 0x10']);
    assert.deepEqual(
      answers.map((answer) => answer.split(' ')[0]),
      ['FAIL', 'FAIL', 'FAIL', 'OK', 'FAIL', 'ERR', 'OK'],
    );
    assert.equal(answers[6], 'OK 0x0000000000000055');
    await assert.rejects(client.command('bogus'), QtestCommandError);
    assert.equal(await client.readq(0x10), 0x55n);
    await client.close();
  });

  it('turns a machine error into FAIL <message> and goes on', async () => {
    const machine = withOverrides(new RamMachine(), {
      readMemory64: () => {
        throw new Error('no RAM at 0xdead000');
      },
    });
    const { client } = openSession(machine);
    assert.equal(await client.send('readq 0xdead000'), 'FAIL no RAM at 0xdead000');
    assert.equal(await client.readl(0), 0);
    await client.close();
  });

  it('handles commands split across chunks and several commands in one chunk', async () => {
    const toServer = new PassThrough();
    const fromServer = new PassThrough();
    new QtestServer(new RamMachine(), toServer, fromServer);
    const received: string[] = [];
    fromServer.on('data', (chunk: Buffer) => received.push(chunk.toString()));
    toServer.write('write');
    toServer.write('q 0x8 0x7\nreadq 0');
    toServer.write('x8\nendianness\nreadb 0x8\n');
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(received.join(''), 'OK\nOK 0x0000000000000007\nOK little\nOK 0x0000000000000007\n');
  });

  it('answers FAIL to an over-long line and recovers at the next newline', async () => {
    const toServer = new PassThrough();
    const fromServer = new PassThrough();
    new QtestServer(new RamMachine(), toServer, fromServer, { maxLineLength: 32 });
    const client = new QtestClient(fromServer, toServer, { commandTimeoutMs: 2000 });
    assert.match(await client.send(`write 0 100 0x${'00'.repeat(100)}`), /^FAIL line longer than 32/);
    assert.equal(await client.send('endianness'), 'OK little');
  });

  it('runs commands strictly in order even when the machine answers asynchronously', async () => {
    const ram = new RamMachine();
    const machine = withOverrides(ram, {
      readMemory64: async (address: bigint) => {
        await new Promise((resolve) => setTimeout(resolve, 5));
        return ram.readMemory64(address);
      },
    });
    const { client } = openSession(machine);
    const results = await Promise.all([client.readq(0x100), client.writeq(0x100, 5n), client.readq(0x100)]);
    assert.deepEqual(results, [0n, undefined, 5n]);
    await client.close();
  });

  it('records IRQ lines and still matches answers to commands', async () => {
    const { client, server } = openSession();
    server.sendIrq('raise', 4);
    assert.equal(await client.readl(0), 0);
    server.sendIrq('lower', 4);
    assert.equal(await client.send('endianness'), 'OK little');
    assert.deepEqual(client.irqEvents, [
      { level: 'raise', line: 4, afterAnswers: 0 },
      { level: 'lower', line: 4, afterAnswers: 1 },
    ]);
    await client.close();
  });

  it('answers irq_intercept_* only when the machine supports it', async () => {
    const plain = openSession();
    assert.equal(await plain.client.send('irq_intercept_in ioapic'), "FAIL Unknown command 'irq_intercept_in'");
    const capable = openSession(withOverrides(new RamMachine(), { interceptIrq: (_direction, path) => path === 'ioapic' }));
    assert.equal(await capable.client.send('irq_intercept_in ioapic'), 'OK');
    assert.equal(await capable.client.send('irq_intercept_out nothing'), 'FAIL Unknown device');
  });

  it('times out a command with no answer and fails later commands at once', async () => {
    const silent = new PassThrough();
    const client = new QtestClient(new PassThrough(), silent, { name: 'silent', commandTimeoutMs: 30 });
    await assert.rejects(
      client.readq(0),
      (error: unknown) => error instanceof QtestConnectionError && /no answer to 'readq 0x0' within 30 ms/.test(error.message),
    );
    await assert.rejects(client.readq(0), QtestConnectionError);
  });

  it('fails waiting commands when the peer closes its output', async () => {
    const fromServer = new PassThrough();
    const client = new QtestClient(fromServer, new PassThrough(), { name: 'closing', commandTimeoutMs: 1000 });
    const waiting = client.readq(0);
    fromServer.end();
    await assert.rejects(waiting, /closing: the peer closed its output/);
  });

  it('refuses addresses outside 0..2^64-1 before sending anything', async () => {
    const { client } = openSession();
    await assert.rejects(client.readq(-1), RangeError);
    await assert.rejects(client.readq(1n << 64n), RangeError);
    await client.close();
  });
});
