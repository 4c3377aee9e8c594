/** Ioapic: IOREGSEL/IOWIN registers, edge and level delivery with Remote IRR and EOI, and the messages compatibility and remappable RTEs send. */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ViommuError } from '../../lib/errors';
import { Ioapic, IOAPIC_RTE, type IoapicMessage } from '../../lib/machine/ioapic';
import { encodeBig, getField } from '../../lib/vtd/bitfield';
import { MSI_REMAPPABLE_ADDRESS } from '../../lib/vtd/interrupt-remap';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { IRTA_FIELDS } from '../../lib/vtd/registers';
import { IRTE } from '../../lib/vtd/structures';
import { PAGE, SID, TestGuest } from '../vtd/unit-guest';

const IOREGSEL = 0x00;
const IOWIN = 0x10;
const EOI = 0x40;
const MASKED = 1 << 16;
const LEVEL = 1 << 15;
const RIRR = 1 << 14;
const ACTIVE_LOW = 1 << 13;

class Harness {
  readonly sent: IoapicMessage[] = [];
  readonly ioapic: Ioapic;

  constructor(pins?: number) {
    this.ioapic = new Ioapic({ id: 1, ...(pins === undefined ? {} : { pins }), deliver: (message) => this.sent.push(message) });
  }

  readRegister(index: number): number {
    this.ioapic.write(IOREGSEL, 4, BigInt(index));
    return Number(this.ioapic.read(IOWIN, 4));
  }

  writeRegister(index: number, value: number): void {
    this.ioapic.write(IOREGSEL, 4, BigInt(index));
    this.ioapic.write(IOWIN, 4, BigInt(value >>> 0));
  }

  /** High dword first, as Linux does, so the entry is complete when the low dword's mask bit changes. */
  setRte(pin: number, low: number, high = 0): void {
    this.writeRegister(0x11 + 2 * pin, high);
    this.writeRegister(0x10 + 2 * pin, low);
  }

  low(pin: number): number {
    return this.readRegister(0x10 + 2 * pin);
  }

  /** Takes what was sent since the last call. */
  take(): IoapicMessage[] {
    return this.sent.splice(0);
  }
}

describe('Ioapic', () => {
  describe('registers', () => {
    it('reads ID, VER (version 0x20, pins - 1 in 23:16) and ARB (the ID) through IOREGSEL/IOWIN', () => {
      const h = new Harness();
      assert.equal(h.readRegister(0x00), 1 << 24);
      assert.equal(h.readRegister(0x01), 0x00170020);
      assert.equal(h.readRegister(0x02), 1 << 24);
      assert.equal(new Harness(8).readRegister(0x01), 0x00070020);
    });

    it('takes ID bits 27:24 and ignores writes to VER and ARB', () => {
      const h = new Harness();
      h.writeRegister(0x00, 0xffffffff);
      assert.equal(h.readRegister(0x00), 0x0f000000);
      h.writeRegister(0x01, 0);
      h.writeRegister(0x02, 0);
      assert.equal(h.readRegister(0x01), 0x00170020);
      assert.equal(h.readRegister(0x02), 0x0f000000);
    });

    it('keeps IOREGSEL to 8 bits and reads it back at any size', () => {
      const h = new Harness();
      h.ioapic.write(IOREGSEL, 4, 0x1234n);
      assert.equal(h.ioapic.read(IOREGSEL, 4), 0x34n);
      h.ioapic.write(IOREGSEL, 1, 0x11n);
      assert.equal(h.ioapic.read(IOREGSEL, 1), 0x11n);
    });

    it('resets every RTE to masked and zero, and reset() restores that and the ID', () => {
      const h = new Harness();
      for (let pin = 0; pin < 24; pin++) {
        assert.equal(h.readRegister(0x10 + 2 * pin), MASKED);
        assert.equal(h.readRegister(0x11 + 2 * pin), 0);
      }
      h.setRte(3, 0x41, 0x02000000);
      h.writeRegister(0x00, 0x05000000);
      h.ioapic.reset();
      assert.equal(h.low(3), MASKED);
      assert.equal(h.readRegister(0x17), 0);
      assert.equal(h.readRegister(0x00), 1 << 24);
      assert.equal(h.ioapic.read(IOREGSEL, 4), 0n);
    });

    it('stores both RTE dwords but not delivery status (12) or Remote IRR (14)', () => {
      const h = new Harness();
      h.setRte(0, 0xffffffff, 0xffffffff);
      assert.equal(h.low(0), (0xffffffff & ~(1 << 12) & ~RIRR) >>> 0);
      assert.equal(h.readRegister(0x11), 0xffffffff);
    });

    it('keeps Remote IRR through a guest write that clears it on a level entry', () => {
      const h = new Harness();
      h.setRte(0, 0x30 | LEVEL);
      h.ioapic.setPin(0, true);
      assert.equal(h.low(0), 0x30 | LEVEL | RIRR);
      h.setRte(0, 0x30 | LEVEL | MASKED);
      assert.equal(h.low(0), 0x30 | LEVEL | RIRR | MASKED);
    });

    it('reads 0 and drops writes for register indexes it does not implement', () => {
      const h = new Harness();
      const before = Array.from({ length: 48 }, (_, i) => h.readRegister(0x10 + i));
      for (const index of [0x03, 0x0f, 0x10 + 2 * 24, 0x10 + 2 * 24 + 1, 0xff]) {
        h.writeRegister(index, 0xffffffff);
        assert.equal(h.readRegister(index), 0, `index 0x${index.toString(16)}`);
      }
      assert.deepEqual(
        Array.from({ length: 48 }, (_, i) => h.readRegister(0x10 + i)),
        before,
      );
      assert.deepEqual(h.take(), []);
    });

    it('reads 0 and drops writes for offsets outside IOREGSEL/IOWIN/EOI and for non-dword IOWIN/EOI accesses', () => {
      const h = new Harness();
      h.setRte(0, 0x30 | LEVEL);
      h.ioapic.setPin(0, true);
      h.take();
      h.ioapic.write(IOREGSEL, 4, 0x10n);
      for (const offset of [0x04, 0x11, 0x14, 0x20, 0x3c, 0x44, 0x100, 0xffc, 0x1000, -4]) {
        assert.equal(h.ioapic.read(offset, 4), 0n);
        h.ioapic.write(offset, 4, 0x30n);
      }
      for (const size of [1, 2, 8] as const) {
        assert.equal(h.ioapic.read(IOWIN, size), 0n);
        h.ioapic.write(IOWIN, size, 0n);
        h.ioapic.write(EOI, size, 0x30n);
      }
      assert.equal(h.ioapic.read(EOI, 4), 0n, 'EOI is write-only');
      assert.equal(h.ioapic.read(IOREGSEL, 4), 0x10n);
      assert.equal(h.low(0), 0x30 | LEVEL | RIRR, 'no write reached the RTE and no EOI cleared Remote IRR');
      assert.deepEqual(h.take(), []);
    });

    it('refuses bad configuration and pins that do not exist, with ViommuError', () => {
      const deliver = (): void => {};
      for (const options of [{ id: 0, pins: 0 }, { id: 0, pins: 121 }, { id: 0, pins: 2.5 }, { id: 16 }, { id: -1 }]) {
        assert.throws(() => new Ioapic({ ...options, deliver }), ViommuError);
      }
      const ioapic = new Ioapic({ id: 0, pins: 120, deliver });
      assert.throws(
        () => ioapic.setPin(120, true),
        (error: ViommuError) => error.code === 'ERR_IOAPIC_PIN',
      );
      assert.throws(() => ioapic.setPin(-1, true), ViommuError);
    });
  });

  describe('edge-triggered', () => {
    it('delivers once per rising edge of an unmasked pin', () => {
      const h = new Harness();
      h.setRte(4, 0x24);
      h.ioapic.setPin(4, true);
      assert.deepEqual(
        h.take().map((m) => m.pin),
        [4],
      );
      h.ioapic.setPin(4, true);
      h.ioapic.setPin(4, false);
      assert.deepEqual(h.take(), []);
      h.ioapic.setPin(4, true);
      assert.equal(h.take().length, 1);
      assert.equal(h.low(4) & RIRR, 0, 'edge entries never set Remote IRR');
    });

    it('loses an edge that arrives while masked, as the 82093AA and QEMU do', () => {
      const h = new Harness();
      h.setRte(4, 0x24 | MASKED);
      h.ioapic.setPin(4, true);
      h.setRte(4, 0x24);
      assert.deepEqual(h.take(), []);
      h.ioapic.setPin(4, false);
      h.ioapic.setPin(4, true);
      assert.equal(h.take().length, 1);
    });

    it('takes the falling edge as the active one when polarity is active low', () => {
      const h = new Harness();
      h.ioapic.setPin(5, true);
      h.setRte(5, 0x25 | ACTIVE_LOW);
      assert.deepEqual(h.take(), [], 'reprogramming the entry is not an edge');
      h.ioapic.setPin(5, false);
      assert.equal(h.take().length, 1);
      h.ioapic.setPin(5, true);
      assert.deepEqual(h.take(), []);
    });

    it('clears Remote IRR when the guest switches a level entry to edge (Linux fakes EOIs that way)', () => {
      const h = new Harness();
      h.setRte(0, 0x30 | LEVEL);
      h.ioapic.setPin(0, true);
      assert.equal(h.low(0) & RIRR, RIRR);
      h.setRte(0, 0x30 | MASKED);
      assert.equal(h.low(0) & RIRR, 0);
      h.setRte(0, 0x30 | LEVEL);
      assert.equal(h.take().length, 2, 'back to level with the line still active: delivered again');
    });
  });

  describe('level-triggered', () => {
    it('delivers while active and Remote IRR is clear, then waits for EOI', () => {
      const h = new Harness();
      h.setRte(9, 0x39 | LEVEL);
      h.ioapic.setPin(9, true);
      h.ioapic.setPin(9, true);
      assert.equal(h.take().length, 1);
      assert.equal(h.low(9) & RIRR, RIRR);
      h.ioapic.endOfInterrupt(0x38);
      assert.equal(h.low(9) & RIRR, RIRR, 'another vector leaves it alone');
      h.ioapic.endOfInterrupt(0x39);
      assert.equal(h.take().length, 1, 'still asserted at EOI: delivered again');
      assert.equal(h.low(9) & RIRR, RIRR);
      h.ioapic.setPin(9, false);
      h.ioapic.endOfInterrupt(0x39);
      assert.deepEqual(h.take(), []);
      assert.equal(h.low(9) & RIRR, 0);
    });

    it('takes EOI through the EOI register (offset 0x40, vector in bits 7:0)', () => {
      const h = new Harness();
      h.setRte(9, 0x39 | LEVEL);
      h.ioapic.setPin(9, true);
      h.ioapic.write(EOI, 4, 0x139n);
      assert.equal(h.take().length, 2);
    });

    it('clears Remote IRR on every level entry with the EOI vector', () => {
      const h = new Harness();
      h.setRte(1, 0x50 | LEVEL);
      h.setRte(2, 0x50 | LEVEL);
      h.ioapic.setPin(1, true);
      h.ioapic.setPin(2, true);
      h.ioapic.setPin(1, false);
      h.ioapic.setPin(2, false);
      h.take();
      h.ioapic.endOfInterrupt(0x50);
      assert.equal(h.low(1) & RIRR, 0);
      assert.equal(h.low(2) & RIRR, 0);
    });

    it('ignores a masked pin until it is unmasked, then delivers if the line is still active', () => {
      const h = new Harness();
      h.setRte(10, 0x3a | LEVEL | MASKED);
      h.ioapic.setPin(10, true);
      assert.deepEqual(h.take(), []);
      assert.equal(h.low(10) & RIRR, 0);
      h.setRte(10, 0x3a | LEVEL);
      assert.deepEqual(
        h.take().map((m) => m.pin),
        [10],
      );

      h.setRte(11, 0x3b | LEVEL | MASKED);
      h.ioapic.setPin(11, true);
      h.ioapic.setPin(11, false);
      h.setRte(11, 0x3b | LEVEL);
      assert.deepEqual(h.take(), [], 'the level went away before the unmask');
    });

    it('reads an idle line as active when polarity is active low', () => {
      const h = new Harness();
      h.setRte(12, 0x3c | LEVEL | ACTIVE_LOW);
      assert.equal(h.take().length, 1);
      h.ioapic.setPin(12, true);
      h.ioapic.endOfInterrupt(0x3c);
      assert.deepEqual(h.take(), []);
    });

    it('lets deliver() signal the EOI before it returns: Remote IRR is already set, so each EOI sends exactly one more', () => {
      const sent: number[] = [];
      const ioapic: Ioapic = new Ioapic({
        id: 0,
        deliver: (message) => {
          sent.push(message.pin);
          if (sent.length < 3) ioapic.endOfInterrupt(message.data & 0xff);
        },
      });
      ioapic.write(IOREGSEL, 4, 0x10n);
      ioapic.write(IOWIN, 4, BigInt(0x40 | LEVEL));
      ioapic.setPin(0, true);
      assert.deepEqual(sent, [0, 0, 0], 'each EOI of a still-active line re-delivers once');
    });
  });

  describe('messages', () => {
    it('builds a compatibility message: destination at address 19:12, destination mode at 2', () => {
      const h = new Harness();
      // Vector 0x31, lowest priority, logical, level, destination 0x0f.
      h.setRte(2, 0x31 | (1 << 8) | (1 << 11) | LEVEL, 0x0f000000);
      h.ioapic.setPin(2, true);
      assert.deepEqual(h.take(), [{ address: 0xfee0f004, data: 0x8131, pin: 2 }]);
      const view = h.ioapic.entries()[2]!;
      assert.equal(view.remappable, false);
      assert.equal(view.destination, 0x0f);
      assert.equal(view.destinationMode, 'logical');
      assert.equal(view.index, undefined);
      assert.equal(view.trigger, 'level');
      assert.equal(view.remoteIrr, true);
      assert.equal(view.raw, 0x0f000000_0000_0000n | BigInt(0x31 | (1 << 8) | (1 << 11) | LEVEL | RIRR));
    });

    it('builds a remappable message as kvm-unit-tests programs it: vector 0xed, edge, format 1, index 1', () => {
      const h = new Harness();
      const rte = encodeBig(IOAPIC_RTE, { VECTOR: 0xed, EDID: 0b11, DEST: 0 });
      assert.equal(rte, (1n << 48n) | (1n << 49n) | 0xedn, 'format at bit 48, index[14:0] from bit 49');
      h.setRte(3, Number(rte & 0xffffffffn), Number(rte >> 32n));
      h.ioapic.setPin(3, true);
      assert.deepEqual(h.take(), [{ address: (0xfee00000 | (1 << 4) | (1 << 5)) >>> 0, data: 0xed, pin: 3 }]);
      const view = h.ioapic.entries()[3]!;
      assert.equal(view.remappable, true);
      assert.equal(view.index, 1);
      assert.equal(view.destination, undefined);
    });

    it('carries interrupt_index[15] from RTE bit 11 to address bit 2', () => {
      const h = new Harness();
      const index = 0x8000 | 0x1234;
      h.setRte(0, 0x60 | (1 << 11), ((index & 0x7fff) << 17) | (1 << 16));
      h.ioapic.setPin(0, true);
      const [message] = h.take();
      assert.equal(message!.address, (0xfee00000 | (0x1234 << 5) | (1 << 4) | (1 << 2)) >>> 0);
      assert.equal(h.ioapic.entries()[0]!.index, index);
    });

    it('sends a remappable message the VT-d unit remaps through the IRTE it names', () => {
      const guest = new TestGuest();
      const table = guest.allocPage();
      guest.unit.write(OFFSET.IRTA, 8, encodeBig(IRTA_FIELDS, { IRTA: table / PAGE, S: 7 }));
      guest.command(GCMD.SIRTP);
      guest.command(GCMD.IRE);
      guest.write128(table + 1 * 16, encodeBig(IRTE, { P: 1, V: 0xed, DST: 3 * 256 }));
      const h = new Harness();
      h.setRte(3, 0xed, (1 << 17) | (1 << 16));
      h.ioapic.setPin(3, true);
      const [message] = h.take();
      const result = guest.unit.remapInterrupt({ sid: SID, address: message!.address, data: message!.data });
      assert.ok(result.ok && result.remapped, JSON.stringify(result));
      assert.equal(result.vector, 0xed);
      assert.equal(result.destination, 3);
    });

    it('property: any RTE sends its vector, and its index (remappable) or destination (compatibility)', () => {
      fc.assert(
        fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (entry) => {
          const h = new Harness();
          // Unmasked, edge and active high, so one rising edge sends exactly one message.
          const low = Number(entry & 0xffffffffn) & ~MASKED & ~LEVEL & ~ACTIVE_LOW;
          const high = Number(entry >> 32n);
          h.setRte(7, low, high);
          h.ioapic.setPin(7, true);
          const [message, ...rest] = h.take();
          assert.equal(rest.length, 0);
          const read = (field: keyof typeof MSI_REMAPPABLE_ADDRESS.f): number => getField([message!.address], MSI_REMAPPABLE_ADDRESS.f[field]);
          assert.equal(read('BASE'), 0xfee);
          assert.equal(message!.data & 0xff, low & 0xff);
          assert.equal((message!.data >> 8) & 7, (low >> 8) & 7);
          const remappable = (high >>> 16) & 1;
          assert.equal(read('IF'), remappable);
          if (remappable) {
            const index = (high >>> 17) | (((low >>> 11) & 1) << 15);
            assert.equal(read('HANDLE_LO') + read('HANDLE_HI') * 0x8000, index);
            assert.equal(read('SHV'), 0, 'no subhandle: the data is not part of the handle');
            assert.equal(h.ioapic.entries()[7]!.index, index);
          } else {
            assert.equal((message!.address >>> 12) & 0xff, high >>> 24);
            assert.equal(h.ioapic.entries()[7]!.destination, high >>> 24);
          }
        }),
      );
    });

    it('property: no guest access sequence throws, and edge entries never hold Remote IRR', () => {
      const access = fc.oneof(
        fc.record({
          kind: fc.constant('write' as const),
          offset: fc.constantFrom(0, 0x10, 0x40, 0x14, 0x1000 - 4),
          size: fc.constantFrom(1, 2, 4, 8) as fc.Arbitrary<1 | 2 | 4 | 8>,
          value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        }),
        fc.record({
          kind: fc.constant('read' as const),
          offset: fc.constantFrom(0, 0x10, 0x40, 0x3),
          size: fc.constantFrom(1, 2, 4, 8) as fc.Arbitrary<1 | 2 | 4 | 8>,
        }),
        fc.record({ kind: fc.constant('select' as const), index: fc.integer({ min: 0, max: 0xff }) }),
        fc.record({ kind: fc.constant('pin' as const), pin: fc.integer({ min: 0, max: 3 }), level: fc.boolean() }),
        fc.record({ kind: fc.constant('eoi' as const), vector: fc.integer({ min: 0, max: 0xff }) }),
      );
      fc.assert(
        fc.property(fc.array(access, { maxLength: 60 }), (steps) => {
          const h = new Harness(4);
          for (const step of steps) {
            if (step.kind === 'write') h.ioapic.write(step.offset, step.size, step.value);
            else if (step.kind === 'read') assert.equal(typeof h.ioapic.read(step.offset, step.size), 'bigint');
            else if (step.kind === 'select') h.ioapic.write(IOREGSEL, 4, BigInt(step.index));
            else if (step.kind === 'pin') h.ioapic.setPin(step.pin, step.level);
            else h.ioapic.endOfInterrupt(step.vector);
          }
          for (const entry of h.ioapic.entries()) {
            if (entry.trigger === 'edge') assert.equal(entry.remoteIrr, false);
          }
          for (const message of h.sent) assert.equal(message.address >>> 20, 0xfee);
        }),
      );
    });
  });
});
