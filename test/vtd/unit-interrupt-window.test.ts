/** DMA to 0xfee00000-0xfeefffff through dmaSpace: DWORD writes are interrupt requests, reads and odd writes are illegal. */
import { strict as assert } from 'node:assert';
import { DmaFault, EFAULT } from '../../lib/memory/dma-space';
import { encodeBig } from '../../lib/vtd/bitfield';
import { IR_FAULT, MSI_REMAPPABLE_ADDRESS } from '../../lib/vtd/interrupt-remap';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { IRTA_FIELDS } from '../../lib/vtd/registers';
import { IRTE } from '../../lib/vtd/structures';
import { FRCD, PAGE, SID, TestGuest } from './unit-guest';
import { ScalableGuest } from './scalable-guest';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { FR } from '../../lib/vtd/legacy-walk';

function dwords(...values: number[]): Uint8Array {
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  values.forEach((value, i) => view.setUint32(i * 4, value >>> 0, true));
  return bytes;
}

function remappable(handle: number): number {
  return Number(encodeBig(MSI_REMAPPABLE_ADDRESS, { BASE: 0xfee, IF: 1, HANDLE_LO: handle }));
}

describe('dmaSpace and the interrupt address range', () => {
  it('with IRE off, each DWORD written there is delivered unchanged, with TE off or on', () => {
    for (const translate of [false, true]) {
      const guest = new TestGuest();
      if (translate) {
        guest.setContext(SID);
        guest.enable();
      }
      guest.unit.dmaSpace(SID).write(0xfee01000n, dwords(0x4031, 0x4032));
      assert.deepEqual(
        guest.interrupts.args,
        [
          [0xfee01000, 0x4031],
          [0xfee01004, 0x4032],
        ],
        `TE ${translate}`,
      );
      assert.equal(guest.read32(OFFSET.FSTS), 0, 'an interrupt request is not a DMA fault');
    }
  });

  it('with IRE on, requests are remapped through the IRTE; a remapping fault is recorded, not thrown', () => {
    const guest = new TestGuest();
    const table = guest.allocPage();
    guest.write128(table + 5 * 16, encodeBig(IRTE, { P: 1, V: 0x61, DST: 0x200 }));
    guest.unit.write(OFFSET.IRTA, 8, encodeBig(IRTA_FIELDS, { IRTA: table / PAGE, S: 3 }));
    guest.command(GCMD.SIRTP);
    guest.command(GCMD.IRE);
    const dma = guest.unit.dmaSpace(SID);
    dma.write(BigInt(remappable(5)), dwords(0));
    assert.deepEqual(guest.interrupts.lastCall.args, [0xfee02000, 0x4061]);
    dma.write(BigInt(remappable(6)), dwords(0));
    assert.equal(guest.interrupts.callCount, 1, 'nothing delivered for a missing entry');
    assert.equal((guest.read64(FRCD + 8) >> 32n) & 0xffn, BigInt(IR_FAULT.ENTRY_NOT_PRESENT));
    assert.equal(guest.read64(FRCD), 6n << 48n, 'the interrupt index in FRCD bits 63:48');
  });

  it('a read there is an illegal request: blocked without a record (QEMU 7.2: zeros)', () => {
    const spec = new TestGuest();
    const into = new Uint8Array(8).fill(0xaa);
    assert.throws(
      () => spec.unit.dmaSpace(SID).read(0xfee00000n, into),
      (error: unknown) => error instanceof DmaFault && error.errno === EFAULT,
    );
    assert.deepEqual(into, new Uint8Array(8).fill(0xaa));
    assert.equal(spec.read32(OFFSET.FSTS), 0);
    const qemu = new TestGuest('compat=qemu-7.2');
    qemu.unit.dmaSpace(SID).read(0xfee00000n, into);
    assert.deepEqual(into, new Uint8Array(8));
  });

  it('a write that is not whole aligned DWORDs is illegal: nothing is delivered and nothing else is written', () => {
    const guest = new TestGuest();
    const dma = guest.unit.dmaSpace(SID);
    for (const [address, length] of [
      [0xfee00002n, 4],
      [0xfee00000n, 6],
    ] as const) {
      assert.throws(
        () => dma.write(address, new Uint8Array(length)),
        (error: unknown) => error instanceof DmaFault && error.errno === EFAULT,
      );
    }
    // A transfer that runs from RAM into the window moves nothing at all.
    assert.throws(() => dma.write(0xfedffffen, new Uint8Array(6).fill(1)), DmaFault);
    assert.equal(guest.interrupts.callCount, 0);
  });

  describe('output addresses in the window, through cached translations', () => {
    it('legacy: a 2 MiB page over the window, cached by a read outside it, still faults inside it', () => {
      const guest = new TestGuest('aw-bits=48');
      guest.setContext(SID);
      guest.map(SID, 0x40000000, 0xfee00000, { size: '2m' });
      guest.enable();
      const outside = guest.translate(0x40100000);
      assert.ok(outside.ok && outside.address === 0xfef00000);
      const inside = guest.translate(0x40000010);
      assert.ok(!inside.ok, `reached 0x${inside.ok ? inside.address.toString(16) : ''}`);
      assert.equal(inside.fault.reason, FR.INTERRUPT_ADDRESS);
    });

    it('scalable: the same through a second-stage PASID entry', () => {
      const guest = new ScalableGuest('x-scalable-mode=on,aw-bits=48');
      guest.scalableContext();
      const top = guest.secondStage(SID, 0, 1);
      guest.writer.mapSecond(top, 4, 0x40000000, 0xfee00000, { size: '2m' });
      guest.enableScalable();
      assert.equal(guest.reach(0x40100000), '0xfef00000');
      assert.equal(guest.reach(0x40000010), `fault 0x${faultCode('SM_INTERRUPT_ADDRESS').toString(16)}`);
    });

    it('a DMA through a 1 GiB page stops at the window: the part inside it faults, nothing moves', () => {
      const guest = new TestGuest('aw-bits=48');
      guest.setContext(SID);
      guest.map(SID, 0x40000000, 0xc0000000, { size: '1g' });
      guest.enable();
      // IOVA 0x7edff000 is GPA 0xfedff000: the transfer runs on into 0xfee00000.
      assert.throws(() => guest.unit.dmaSpace(SID).read(0x7edff000n, new Uint8Array(0x2000)), DmaFault);
      assert.equal((guest.read64(FRCD + 8) >> 32n) & 0xffn, BigInt(FR.INTERRUPT_ADDRESS));
      assert.equal(guest.read64(FRCD), 0x7ee00000n, 'the fault names the first page inside the window');
    });
  });
});
