/** The port bus and its ISA devices (16550A UART, fw_cfg, isa-debug-exit), driven the way kvm-unit-tests drives them. */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ViommuError } from '../../lib/errors';
import { DEBUG_EXIT_PORT, DebugExit } from '../../lib/machine/debug-exit';
import { FW_CFG_KEYS, FW_CFG_PORTS, FwCfg } from '../../lib/machine/fw-cfg';
import { PortBus, type PortDevice, type PortSize } from '../../lib/vmm/port-bus';
import { COM1_BASE, Serial16550 } from '../../lib/machine/serial';

const THR = COM1_BASE;
const IER = COM1_BASE + 1;
const IIR_FCR = COM1_BASE + 2;
const LCR = COM1_BASE + 3;
const MCR = COM1_BASE + 4;
const LSR = COM1_BASE + 5;
const MSR = COM1_BASE + 6;
const SCR = COM1_BASE + 7;

/** A bus whose reads are known to be synchronous, for terse assertions. */
function readSync(bus: PortBus, port: number, size: PortSize): number {
  const value = bus.read(port, size);
  assert.equal(typeof value, 'number');
  return value as number;
}

function com1(): { bus: PortBus; output: number[]; text: () => string } {
  const output: number[] = [];
  const bus = new PortBus();
  bus.map('com1', COM1_BASE, 8, new Serial16550(COM1_BASE, (byte) => output.push(byte)));
  return { bus, output, text: () => Buffer.from(output).toString('latin1') };
}

/** lib/x86/io.c serial_init(), then serial_outb() for each byte, polling LSR.THRE as the guest does. */
function kvmUnitTestsPuts(bus: PortBus, text: string): void {
  let lcr = readSync(bus, LCR, 1);
  bus.write(LCR, 1, lcr | 0x80);
  bus.write(THR, 1, 0x01);
  bus.write(IER, 1, 0x00);
  lcr = readSync(bus, LCR, 1);
  bus.write(LCR, 1, lcr & ~0x80);
  bus.write(IER, 1, 0x00);
  bus.write(LCR, 1, 0x03);
  bus.write(IIR_FCR, 1, 0x00);
  bus.write(MCR, 1, 0x03);
  for (const ch of Buffer.from(text, 'latin1')) {
    for (const byte of ch === 0x0a ? [0x0d, ch] : [ch]) {
      let polls = 0;
      while (!(readSync(bus, LSR, 1) & 0x20)) assert.ok(++polls < 10, 'THRE never set');
      bus.write(THR, 1, byte);
    }
  }
}

describe('Serial16550', () => {
  it('sends what kvm-unit-tests prints to the sink, CR before LF, with the transmitter always empty and nothing received', () => {
    const { bus, text } = com1();
    kvmUnitTestsPuts(bus, 'PASS: vtd init\n');
    assert.equal(text(), 'PASS: vtd init\r\n');
    assert.equal(readSync(bus, LSR, 1), 0x60, 'LSR: THRE | TEMT, no DR');
    assert.equal(readSync(bus, THR, 1), 0, 'RBR: nothing received');
    assert.equal(readSync(bus, LSR, 1), 0x60);
  });

  it('switches offsets 0 and 1 to the divisor latch while LCR.DLAB is set, and back', () => {
    const { bus, output } = com1();
    bus.write(IER, 1, 0x05);
    bus.write(LCR, 1, 0x83);
    assert.equal(readSync(bus, THR, 1), 0x0c, 'power-on divisor: 9600 baud');
    bus.write(THR, 1, 0x01);
    bus.write(IER, 1, 0x02);
    assert.deepEqual([readSync(bus, THR, 1), readSync(bus, IER, 1)], [0x01, 0x02]);
    assert.deepEqual(output, [], 'a divisor write is not output');
    bus.write(LCR, 1, 0x03);
    assert.equal(readSync(bus, IER, 1), 0x05, 'IER kept its value under the latch');
    bus.write(THR, 1, 0x41);
    assert.deepEqual(output, [0x41]);
    bus.write(LCR, 1, 0x80);
    assert.deepEqual([readSync(bus, THR, 1), readSync(bus, IER, 1)], [0x01, 0x02], 'the latch kept its value too');
  });

  it('keeps IER to its four defined bits, reports no interrupt in IIR, FIFOs per FCR, and stores LCR, MCR and SCR', () => {
    const { bus } = com1();
    bus.write(IER, 1, 0xff);
    assert.equal(readSync(bus, IER, 1), 0x0f);
    assert.equal(readSync(bus, IIR_FCR, 1), 0x01);
    bus.write(IIR_FCR, 1, 0x07);
    assert.equal(readSync(bus, IIR_FCR, 1), 0xc1, 'FIFOs enabled; reset bits self-clear');
    bus.write(IIR_FCR, 1, 0x00);
    assert.equal(readSync(bus, IIR_FCR, 1), 0x01);
    bus.write(LCR, 1, 0x1b);
    assert.equal(readSync(bus, LCR, 1), 0x1b);
    bus.write(MCR, 1, 0xff);
    assert.equal(readSync(bus, MCR, 1), 0x1f);
    bus.write(SCR, 1, 0xa5);
    assert.equal(readSync(bus, SCR, 1), 0xa5);
    bus.write(LSR, 1, 0x00);
    assert.equal(readSync(bus, LSR, 1), 0x60, 'LSR ignores writes');
  });

  it('shows carrier, DSR and CTS, and in loopback mirrors MCR into MSR and keeps bytes off the line', () => {
    const { bus, output } = com1();
    assert.equal(readSync(bus, MSR, 1), 0xb0);
    bus.write(MCR, 1, 0x10 | 0x02);
    assert.equal(readSync(bus, MSR, 1), 0x10, 'RTS -> CTS');
    bus.write(MCR, 1, 0x10 | 0x0d);
    assert.equal(readSync(bus, MSR, 1), 0xe0, 'DTR -> DSR, OUT1 -> RI, OUT2 -> DCD');
    bus.write(THR, 1, 0x58);
    assert.deepEqual(output, []);
    bus.write(MCR, 1, 0x03);
    bus.write(THR, 1, 0x59);
    assert.deepEqual(output, [0x59]);
  });

  it('splits a wide access into consecutive registers, low byte first', () => {
    const { bus, output } = com1();
    bus.write(THR, 2, 0x0f41);
    assert.deepEqual(output, [0x41]);
    assert.equal(readSync(bus, IER, 1), 0x0f);
    bus.write(LCR, 1, 0x03);
    assert.equal(readSync(bus, LCR, 4), 0xb0600003, 'LCR, MCR, LSR, MSR');
  });
});

/** lib/x86/fwcfg.c fwcfg_get_u(): a 16-bit select, then `bytes` byte reads, little-endian. */
function fwcfgGet(bus: PortBus, key: number, bytes: number): bigint {
  bus.write(FW_CFG_PORTS.selector, 2, key);
  let value = 0n;
  for (let i = 0; i < bytes; i++) value |= BigInt(readSync(bus, FW_CFG_PORTS.data, 1)) << BigInt(8 * i);
  return value;
}

function fwcfgBus(o: { ramBytes: number; cpus: number; maxRamBytes?: number }): PortBus {
  const bus = new PortBus();
  bus.map('fw_cfg', FW_CFG_PORTS.selector, 2, FwCfg.forMachine(o));
  return bus;
}

describe('FwCfg', () => {
  const ramBytes = 0x1_2345_6000;

  it('serves each machine item byte by byte as kvm-unit-tests reads it', () => {
    const bus = fwcfgBus({ ramBytes, cpus: 3, maxRamBytes: 0x8000_0000 });
    bus.write(FW_CFG_PORTS.selector, 2, FW_CFG_KEYS.SIGNATURE);
    const signature = [0, 1, 2, 3].map(() => readSync(bus, FW_CFG_PORTS.data, 1));
    assert.equal(Buffer.from(signature).toString('latin1'), 'QEMU');
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.ID, 4), 1n, 'traditional interface only, no DMA');
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.RAM_SIZE, 8), BigInt(ramBytes));
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.NB_CPUS, 2), 3n);
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.MAX_CPUS, 2), 3n);
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.MAX_RAM, 8), 0x8000_0000n);
  });

  it('reports MAX_RAM 0 (no limit, to kvm-unit-tests find_highmem) when none is given', () => {
    assert.equal(fwcfgGet(fwcfgBus({ ramBytes, cpus: 1 }), FW_CFG_KEYS.MAX_RAM, 8), 0n);
  });

  it('restarts an item on re-select, reads 0 past its end and for unknown keys', () => {
    const bus = fwcfgBus({ ramBytes, cpus: 2 });
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.NB_CPUS, 1), 2n);
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.NB_CPUS, 4), 2n, 'offset back to 0; bytes past the u16 read 0');
    assert.equal(fwcfgGet(bus, 0x1234, 8), 0n);
    assert.equal(fwcfgGet(bus, FW_CFG_KEYS.SIGNATURE | 0x4000, 4), 0x554d4551n, 'the write-channel bit does not change the item');
  });

  it('decodes by size as QEMU does: a byte write does not select, a wide read is refused and does not advance', () => {
    const bus = fwcfgBus({ ramBytes, cpus: 2 });
    assert.equal(readSync(bus, FW_CFG_PORTS.data, 1), 0x51, 'reset selects the signature');
    bus.write(FW_CFG_PORTS.selector, 1, FW_CFG_KEYS.NB_CPUS);
    assert.equal(readSync(bus, FW_CFG_PORTS.selector, 2), 0xffff);
    assert.equal(readSync(bus, FW_CFG_PORTS.data, 1), 0x45, 'still the signature, at its second byte');
    assert.equal(readSync(bus, FW_CFG_PORTS.selector, 1), 0x4d, 'one 2-port region decoded by size: a byte read at the selector reads data');
  });

  it("serves arbitrary items, unaffected by later changes to the caller's buffers", () => {
    const blob = Uint8Array.from([9, 8, 7]);
    const bus = new PortBus();
    bus.map('fw_cfg', FW_CFG_PORTS.selector, 2, new FwCfg(new Map([[0x8001, blob]])));
    blob[0] = 0;
    assert.equal(fwcfgGet(bus, 0x8001, 4), 0x00070809n);
  });

  it('refuses machine facts it cannot encode', () => {
    assert.throws(
      () => FwCfg.forMachine({ ramBytes, cpus: 0 }),
      (e: unknown) => e instanceof ViommuError && e.code === 'ERR_FW_CFG_VALUE',
    );
    assert.throws(
      () => FwCfg.forMachine({ ramBytes: -1, cpus: 1 }),
      (e: unknown) => e instanceof ViommuError && e.code === 'ERR_FW_CFG_VALUE',
    );
  });
});

describe('DebugExit', () => {
  it("reports QEMU's exit status (value << 1) | 1 for any width at any of its four ports", () => {
    const exits: [number, number][] = [];
    const bus = new PortBus();
    bus.map('isa-debug-exit', DEBUG_EXIT_PORT, 4, new DebugExit((status, written) => exits.push([status, written])));
    bus.write(DEBUG_EXIT_PORT, 4, 0);
    bus.write(DEBUG_EXIT_PORT, 1, 0x7f);
    bus.write(DEBUG_EXIT_PORT + 2, 2, 0x1234);
    bus.write(DEBUG_EXIT_PORT, 4, 0xffffffff);
    assert.deepEqual(exits, [
      [1, 0],
      [0xff, 0x7f],
      [0x2469, 0x1234],
      [2 ** 33 - 1, 0xffffffff],
    ]);
    assert.equal(readSync(bus, DEBUG_EXIT_PORT, 1), 0xff);
  });
});

/** Records what reached it; reads return a value derived from the port so routing is visible. */
class ProbeDevice implements PortDevice {
  readonly accesses: string[] = [];
  constructor(private readonly tag: number) {}
  readPort(port: number, size: PortSize): number {
    this.accesses.push(`r${size}@${port.toString(16)}`);
    return size === 1 ? this.tag : 0x11223344;
  }
  writePort(port: number, size: PortSize, value: number): void {
    this.accesses.push(`w${size}@${port.toString(16)}=${value.toString(16)}`);
  }
}

describe('PortBus', () => {
  const isCode = (code: string) => (e: unknown) => e instanceof ViommuError && e.code === code;

  it('refuses overlapping claims, naming both, and accepts adjacent ones', () => {
    const bus = new PortBus();
    bus.map('a', 0x60, 4, new ProbeDevice(1));
    assert.throws(
      () => bus.map('b', 0x63, 2, new ProbeDevice(2)),
      (e: unknown) => isCode('ERR_PORT_OVERLAP')(e) && /'b'.*'a'/.test((e as Error).message),
    );
    assert.throws(() => bus.map('c', 0x5f, 8, new ProbeDevice(3)), isCode('ERR_PORT_OVERLAP'));
    bus.map('d', 0x64, 1, new ProbeDevice(4));
    bus.map('e', 0x5c, 4, new ProbeDevice(5));
    assert.throws(() => bus.map('f', 0xfffe, 4, new ProbeDevice(6)), isCode('ERR_PORT_RANGE'));
    assert.throws(() => bus.map('g', 0x100, 0, new ProbeDevice(7)), isCode('ERR_PORT_RANGE'));
  });

  it('reads all-ones of the access size from unclaimed ports, drops writes, and counts both per port', () => {
    const bus = new PortBus();
    assert.equal(bus.read(0x80, 1), 0xff);
    assert.equal(bus.read(0x80, 2), 0xffff);
    assert.equal(bus.read(0xcf8, 4), 0xffffffff);
    bus.write(0x80, 1, 0x12);
    assert.deepEqual(
      [...bus.unclaimed],
      [
        [0x80, { reads: 2, writes: 1 }],
        [0xcf8, { reads: 1, writes: 0 }],
      ],
    );
  });

  it('hands a device absolute ports and size-masked values', () => {
    const bus = new PortBus();
    const device = new ProbeDevice(0x5a);
    bus.map('probe', 0x400, 8, device);
    bus.write(0x404, 2, 0x12345);
    assert.equal(bus.read(0x407, 1), 0x5a);
    assert.deepEqual(device.accesses, ['w2@404=2345', 'r1@407']);
  });

  it("splits an access straddling a claim's edge into bytes, each to its owner or the empty bus", () => {
    const bus = new PortBus();
    const low = new ProbeDevice(0xaa);
    bus.map('low', 0x500, 2, low);
    assert.equal(bus.read(0x501, 4), 0xffffffaa);
    bus.write(0x4ff, 2, 0xbbcc);
    assert.deepEqual(low.accesses, ['r1@501', 'w1@500=bb']);
    assert.deepEqual([...bus.unclaimed.keys()].sort(), [0x4ff, 0x502, 0x503, 0x504]);
  });

  it('passes asynchronous device results through, in order, also when split', async () => {
    const order: string[] = [];
    const slow: PortDevice = {
      readPort: async (port) => {
        await new Promise((r) => setTimeout(r, 2));
        return port & 0xff;
      },
      writePort: async (port, _size, value) => {
        await new Promise((r) => setTimeout(r, port === 0x600 ? 5 : 0));
        order.push(`${port.toString(16)}=${value}`);
      },
    };
    const bus = new PortBus();
    bus.map('slow', 0x600, 2, slow);
    assert.equal(await bus.read(0x600, 1), 0x00);
    assert.equal(await bus.read(0x601, 2), 0xff01);
    await bus.write(0x600, 4, 0x04030201);
    assert.deepEqual(order, ['600=1', '601=2']);
  });

  it('refuses ports and sizes no I/O exit can produce', () => {
    const bus = new PortBus();
    assert.throws(() => bus.read(0x10000, 1), isCode('ERR_PORT_NUMBER'));
    assert.throws(() => bus.write(-1, 1, 0), isCode('ERR_PORT_NUMBER'));
    assert.throws(() => bus.read(0x80, 3 as PortSize), isCode('ERR_PORT_SIZE'));
  });

  it('routes every access to the claim holding its port, or all-ones: property over random claims', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ base: fc.integer({ min: 0, max: 0xff }), length: fc.integer({ min: 1, max: 16 }) }), { maxLength: 8 }),
        fc.integer({ min: 0, max: 0x10f }),
        (claims, port) => {
          const bus = new PortBus();
          const owners = new Map<number, number>();
          claims.forEach((claim, tag) => {
            const overlaps = [...Array(claim.length).keys()].some((i) => owners.has(claim.base + i));
            try {
              bus.map(`c${tag}`, claim.base, claim.length, new ProbeDevice(tag));
              assert.ok(!overlaps);
              for (let i = 0; i < claim.length; i++) owners.set(claim.base + i, tag);
            } catch (e) {
              assert.ok(overlaps && isCode('ERR_PORT_OVERLAP')(e));
            }
          });
          assert.equal(bus.read(port, 1), owners.get(port) ?? 0xff);
        },
      ),
    );
  });
});
