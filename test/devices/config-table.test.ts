/** The PCI table shapes over the common byte layout: definitions checked at load time, bit fields read and placed, masks, ids. */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { defineConfigBits, defineConfigStructure, defineIdTable, readConfigField, writeConfigField } from '../../lib/devices/config-table';
import { MSI_CONTROL, PCI_CAPABILITIES, PCI_COMMAND, PCI_STATUS, TYPE0_HEADER } from '../../lib/devices/pci-layout';

describe('PCI config tables', () => {
  it('refuse overlapping fields, fields past the size, overlapping or empty bits, and ids listed twice', () => {
    assert.throws(
      () =>
        defineConfigStructure('bad', [
          { key: 'a', spec: 'A', offset: 0, width: 2 },
          { key: 'b', spec: 'B', offset: 1, width: 1 },
        ]),
      /a overlaps b/,
    );
    assert.throws(() => defineConfigStructure('bad', [{ key: 'a', spec: 'A', offset: 4, width: 4 }], 6), /beyond the struct size 6/);
    assert.throws(
      () =>
        defineConfigBits('bad', [
          { key: 'A', mask: 0x3 },
          { key: 'B', mask: 0x2 },
        ]),
      /B has an empty mask or overlaps/,
    );
    assert.throws(() => defineConfigBits('bad', [{ key: 'A', mask: 0 }]), /A has an empty mask/);
    assert.throws(
      () =>
        defineIdTable('bad', [
          { value: 1, name: 'one' },
          { value: 1, name: 'uno' },
        ]),
      /uno and one share the value 1/,
    );
  });

  it('decode a structure by its table, zero past the bytes given', () => {
    const bytes = Uint8Array.of(0x34, 0x12, 0xe8, 0x11);
    const header = TYPE0_HEADER.decode(bytes, 0);
    assert.deepEqual([header.vendorId, header.deviceId, header.command], [0x1234, 0x11e8, 0]);
    assert.equal(TYPE0_HEADER.has('latencyTimer'), true);
    assert.equal(TYPE0_HEADER.has('latency' as 'latencyTimer'), false);
    assert.throws(() => TYPE0_HEADER.field('latency' as 'latencyTimer'), /has no field latency/);
  });

  it('write a field as a register keeps it: the low bytes of the value, nothing beyond the field', () => {
    const bytes = new Uint8Array(8).fill(0xee);
    const field = TYPE0_HEADER.field('command');
    writeConfigField(bytes, 2, field, 0x12345);
    assert.deepEqual([...bytes], [0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0x45, 0x23]);
    assert.equal(readConfigField(bytes, 2, field), 0x2345);
    writeConfigField(bytes, 0, TYPE0_HEADER.field('vendorId'), -1);
    assert.equal(readConfigField(bytes, 0, TYPE0_HEADER.field('vendorId')), 0xffff);
  });

  it('register bits are flag sets: names of the bits set, bits no entry defines', () => {
    assert.deepEqual(PCI_COMMAND.names(PCI_COMMAND.bits.MEMORY_SPACE | PCI_COMMAND.bits.BUS_MASTER), ['MEMORY_SPACE', 'BUS_MASTER']);
    assert.equal(PCI_COMMAND.unknownBits(0x8001), 0x8000);
  });

  it('get and place are inverse on every multi-bit field (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 0xffff }), (value, noise) => {
        const placed = MSI_CONTROL.place('MULTIPLE_MESSAGE_ENABLE', value);
        assert.equal(placed & ~MSI_CONTROL.bits.MULTIPLE_MESSAGE_ENABLE, 0);
        assert.equal(MSI_CONTROL.get(placed | (noise & ~MSI_CONTROL.bits.MULTIPLE_MESSAGE_ENABLE), 'MULTIPLE_MESSAGE_ENABLE'), value);
      }),
    );
  });

  it('derive write masks from the bits marked writable or write-1-to-clear', () => {
    assert.equal(PCI_COMMAND.writable, 0x0507);
    assert.equal(PCI_STATUS.w1c, 0xf900);
    assert.equal(TYPE0_HEADER.field('command').writable, PCI_COMMAND.writable);
    assert.equal(PCI_CAPABILITIES.nameOf(PCI_CAPABILITIES.values.MSIX), 'MSI-X');
    assert.equal(PCI_CAPABILITIES.nameOf(0x7f), undefined);
  });
});
