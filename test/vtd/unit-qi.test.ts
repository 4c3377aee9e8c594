/** VtdUnit queued invalidation: IQA/IQH/IQT, descriptors, wait status and completion event, IQE cases, QIE disable. */
import { strict as assert } from 'node:assert';
import { encodeBig } from '../../lib/vtd/bitfield';
import { GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';
import { IQA_FIELDS } from '../../lib/vtd/registers';
import { INVALIDATION_WAIT, PASID_CACHE_INVALIDATE } from '../../lib/vtd/structures';
import { descriptor, SID, TestGuest } from './unit-guest';

function mappedGuest(config = ''): TestGuest {
  const guest = new TestGuest(config);
  guest.setContext(SID);
  guest.map(SID, 0x1000, 0x300000);
  guest.enable();
  assert.ok(guest.translate(0x1000).ok);
  guest.map(SID, 0x1000, 0x500000);
  return guest;
}

describe('VtdUnit queued invalidation', () => {
  it('runs context + IOTLB + wait(SW): IQH 0x30 and the status dword written (QEMU)', () => {
    const guest = mappedGuest();
    guest.setupQueue();
    assert.equal(guest.read32(OFFSET.GSTS) & GCMD.QIE, GCMD.QIE, 'QIES');
    const status = guest.allocPage();
    guest.submit([descriptor.contextGlobal(), descriptor.iotlbGlobal(), descriptor.wait({ sw: true, data: 0xabcd1234, address: status + 8 })], 0);
    assert.equal(guest.read64(OFFSET.IQH), 0x30n);
    assert.equal(guest.memory.readU32(status + 8), 0xabcd1234);
    const result = guest.translate(0x1000);
    assert.ok(result.ok && result.address === 0x500000);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
  });

  it('page-selective IOTLB descriptors drop only their pages', () => {
    const guest = mappedGuest();
    guest.map(SID, 0x2000, 0x301000);
    assert.ok(guest.translate(0x2000).ok);
    guest.map(SID, 0x2000, 0x601000);
    guest.setupQueue();
    guest.submit([descriptor.iotlbPage(1, 0x1000)], 0);
    const a = guest.translate(0x1000);
    const b = guest.translate(0x2000);
    assert.ok(a.ok && a.address === 0x500000 && b.ok && b.address === 0x301000);
    guest.submit([descriptor.iotlbDomain(1)], 1);
    const c = guest.translate(0x2000);
    assert.ok(c.ok && c.address === 0x601000);
  });

  it('wait with IF sets ICS.IWC and sends the completion MSI; masked it sets IECTL.IP; ICS W1C clears IP', () => {
    const guest = new TestGuest();
    guest.setupQueue();
    guest.unit.write(OFFSET.IEADDR, 4, 0xfee02000);
    guest.unit.write(OFFSET.IEDATA, 4, 0x51);
    guest.submit([descriptor.wait({ if: true })], 0);
    assert.equal(guest.read32(OFFSET.ICS), 1);
    assert.equal(guest.read32(OFFSET.IECTL), 0xc0000000, 'IM set at reset: IP held');
    assert.equal(guest.interrupts.callCount, 0);
    guest.unit.write(OFFSET.ICS, 4, 1);
    assert.equal(guest.read32(OFFSET.ICS), 0);
    assert.equal(guest.read32(OFFSET.IECTL), 0x80000000);
    guest.unit.write(OFFSET.IECTL, 4, 0);
    guest.submit([descriptor.wait({ if: true })], 1);
    assert.ok(guest.interrupts.calledOnceWithExactly(0xfee02000, 0x51));
    assert.equal(guest.read32(OFFSET.IECTL), 0);
  });

  it('unmasking IECTL with IP set delivers the held completion event', () => {
    const guest = new TestGuest();
    guest.setupQueue();
    guest.unit.write(OFFSET.IEADDR, 4, 0xfee03000);
    guest.submit([descriptor.wait({ if: true })], 0);
    guest.unit.write(OFFSET.IECTL, 4, 0);
    assert.ok(guest.interrupts.calledOnceWithExactly(0xfee03000, 0));
  });

  it('an unknown descriptor type sets IQE and parks IQH on it; later IQT writes do nothing until IQE is cleared', () => {
    const guest = new TestGuest();
    guest.setupQueue();
    guest.submit([descriptor.iotlbGlobal(), 0xfn, descriptor.iotlbGlobal()], 0);
    assert.equal(guest.read32(OFFSET.FSTS), 0x10);
    assert.equal(guest.read64(OFFSET.IQH), 0x10n);
    assert.equal(guest.read32(OFFSET.FECTL), 0xc0000000, 'fault event held (IM)');
    guest.unit.write(OFFSET.IQT, 8, 0x30n);
    assert.equal(guest.read64(OFFSET.IQH), 0x10n);
    // Software fixes the descriptor, clears IQE and rings the doorbell again.
    guest.write128(guest.queue + 0x10, descriptor.contextGlobal());
    guest.unit.write(OFFSET.FSTS, 4, 0x10);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    assert.equal(guest.read32(OFFSET.FECTL), 0x80000000);
    guest.unit.write(OFFSET.IQT, 8, 0x30n);
    assert.equal(guest.read64(OFFSET.IQH), 0x30n);
  });

  it('reserved bits in a descriptor, or a granularity of 0, set IQE', () => {
    for (const bad of [encodeBig(INVALIDATION_WAIT, { TYPE_LO: 5, SW: 0 }) | (1n << 8n), descriptor.contextGlobal() & ~(3n << 4n)]) {
      const guest = new TestGuest();
      guest.setupQueue();
      guest.submit([bad], 0);
      assert.equal(guest.read32(OFFSET.FSTS), 0x10);
      assert.equal(guest.read64(OFFSET.IQH), 0n);
    }
  });

  it('a tail beyond the queue size sets IQE', () => {
    const guest = new TestGuest();
    guest.setupQueue(0);
    guest.unit.write(OFFSET.IQT, 8, 0x1000n);
    assert.equal(guest.read32(OFFSET.FSTS), 0x10);
    assert.equal(guest.read64(OFFSET.IQH), 0n);
  });

  it('a 256-bit-only type in a 128-bit queue sets IQE (QEMU)', () => {
    const guest = new TestGuest();
    guest.setupQueue();
    guest.submit([encodeBig(PASID_CACHE_INVALIDATE, { TYPE_LO: 7, G: 3 })], 0);
    assert.equal(guest.read32(OFFSET.FSTS), 0x10);
  });

  it('a descriptor outside RAM sets IQE', () => {
    const guest = new TestGuest();
    guest.unit.write(OFFSET.IQA, 8, encodeBig(IQA_FIELDS, { IQA: 0x4000000 / 4096 }));
    guest.command(GCMD.QIE);
    guest.unit.write(OFFSET.IQT, 8, 0x10n);
    assert.equal(guest.read32(OFFSET.FSTS), 0x10);
  });

  it('wraps around the end of the queue and never reports ITE', () => {
    const guest = new TestGuest();
    guest.setupQueue(0);
    guest.unit.write(OFFSET.IQT, 8, 0n);
    const last = 255;
    for (let i = 0; i < 256; i++) guest.write128(guest.queue + i * 16, descriptor.iotlbGlobal());
    guest.unit.write(OFFSET.IQT, 8, BigInt(last * 16));
    assert.equal(guest.read64(OFFSET.IQH), BigInt(last * 16));
    guest.unit.write(OFFSET.IQT, 8, 0x20n);
    assert.equal(guest.read64(OFFSET.IQH), 0x20n);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
  });

  it('disabling QIE resets IQH to 0 and clears QIES', () => {
    const guest = new TestGuest();
    guest.setupQueue();
    guest.submit([descriptor.iotlbGlobal(), descriptor.wait({})], 0);
    assert.equal(guest.read64(OFFSET.IQH), 0x20n);
    guest.command(0, GCMD.QIE);
    assert.equal(guest.read64(OFFSET.IQH), 0n);
    assert.equal(guest.read32(OFFSET.GSTS) & GCMD.QIE, 0);
  });

  it('IQA reads back as written (spec); compat qemu-7.2 shows the base latched at QIE, no DW; 256-bit queues step IQH by 0x20', () => {
    const old = new TestGuest('x-scalable-mode=on,compat=qemu-7.2');
    const queue = old.allocPage();
    old.unit.write(OFFSET.IQA, 8, BigInt(queue) | (1n << 11n) | 1n);
    assert.equal(old.read64(OFFSET.IQA), 1n, 'QEMU 7.2: nothing latched before QIE, only QS shows');
    old.setupQueue(0, 1);
    assert.equal(old.read64(OFFSET.IQA), BigInt(old.queue));
    old.submit([descriptor.contextGlobal(), descriptor.iotlbGlobal(), descriptor.wait({})], 0, 32);
    assert.equal(old.read64(OFFSET.IQH), 0x60n);
    for (const config of ['x-scalable-mode=on', 'x-scalable-mode=on,compat=qemu-latest']) {
      const spec = new TestGuest(config);
      spec.setupQueue(0, 1);
      assert.equal(spec.read64(OFFSET.IQA), BigInt(spec.queue) | (1n << 11n), config);
    }
  });

  it('IQA takes effect when QI is enabled: a write while enabled does not move the queue', () => {
    const guest = new TestGuest();
    guest.setupQueue(0);
    const status = guest.allocPage();
    const elsewhere = guest.allocPage();
    guest.unit.write(OFFSET.IQA, 8, BigInt(elsewhere));
    guest.submit([descriptor.wait({ sw: true, data: 9, address: status })], 0);
    assert.equal(guest.memory.readU32(status), 9);
    assert.equal(guest.read64(OFFSET.IQH), 0x10n);
  });

  it('disabling QI resets IQH (spec); compat qemu-7.2 refuses unless the queue ended with a wait descriptor', () => {
    for (const [config, disabled] of [
      ['', true],
      ['compat=qemu-7.2', false],
    ] as const) {
      const guest = new TestGuest(config);
      guest.setupQueue(0);
      guest.submit([descriptor.contextGlobal()], 0);
      guest.command(0, GCMD.QIE);
      assert.equal((guest.read32(OFFSET.GSTS) & GSTS.QIES) === 0, disabled, config);
      assert.equal(guest.read64(OFFSET.IQH), disabled ? 0n : 0x10n, config);
      guest.submit([descriptor.wait({})], 1);
      guest.command(0, GCMD.QIE);
      assert.equal(guest.read32(OFFSET.GSTS) & GSTS.QIES, 0, `${config}: disabled after a wait`);
      assert.equal(guest.read64(OFFSET.IQH), 0n);
    }
  });

  it('an IQT with bit 4 set in a 256-bit queue sets IQE', () => {
    const guest = new TestGuest('x-scalable-mode=on');
    guest.setupQueue(0, 1);
    guest.unit.write(OFFSET.IQT, 8, 0x10n);
    assert.equal(guest.read32(OFFSET.FSTS), 0x10);
  });

  it('PASID-based descriptors are accepted in a 256-bit queue', () => {
    const guest = new TestGuest('x-scalable-mode=on');
    guest.setupQueue(0, 1);
    guest.submit([encodeBig(PASID_CACHE_INVALIDATE, { TYPE_LO: 7, G: 3 })], 0, 32);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    assert.equal(guest.read64(OFFSET.IQH), 0x20n);
  });
});
