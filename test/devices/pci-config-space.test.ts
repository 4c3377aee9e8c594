/** PciConfigSpace: BAR sizing for 32-bit, 64-bit and I/O BARs and the ROM, command/status masks, capabilities, extended capabilities. */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { EDU_BAR_SIZE, EDU_PCI_CAPABILITIES, EDU_PCI_IDENTITY } from '../../lib/devices/edu';
import { PciConfigSpace } from '../../lib/devices/pci-config-space';
import {
  EXPRESS_CAPABILITIES,
  EXPRESS_DEVICE_CONTROL,
  EXPRESS_DEVICE_STATUS,
  EXPRESS_ENDPOINT_STRUCTURE,
  EXTENDED_CAPABILITY_HEADER,
  MSI_CONTROL,
  MSIX_CONTROL,
  PASID_CAPABILITY,
  PASID_CONTROL,
  PASID_STRUCTURE,
  PCI_CAPABILITY_IDS,
  PCI_EXTENDED_CAPABILITIES,
  PCI_STATUS,
  SERIAL_NUMBER_STRUCTURE,
  TYPE0_HEADER,
} from '../../lib/devices/pci-layout';
import { alignedAccesses } from '../../lib/devices/register-access';

const identity = { vendorId: 0x1234, deviceId: 0x5678, classCode: 0x020000, revision: 3 };

function write32(config: PciConfigSpace, offset: number, value: number): void {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
  config.write(offset, bytes);
}

describe('PciConfigSpace', () => {
  it('sizes 32-bit, prefetchable 64-bit and I/O BARs: all ones reads back the size mask with the type bits', () => {
    const config = new PciConfigSpace({
      identity,
      bars: [{ size: 0x1000 }, { size: 1n << 33n, kind: 'mem64', prefetchable: true }, undefined, { size: 0x20, kind: 'io' }],
    });
    for (const offset of [0x10, 0x14, 0x18, 0x1c, 0x20]) write32(config, offset, 0xffffffff);
    assert.equal(config.readU32(0x10), 0xfffff000);
    assert.equal(config.readU32(0x14), 0x0000000c, 'low half: address bits below 8 GiB are read-only, type 64-bit prefetchable');
    assert.equal(config.readU32(0x18), 0xfffffffe, 'high half: bit 32 is below the size');
    assert.equal(config.readU32(0x1c), 0xffffffe1);
    assert.equal(config.readU32(0x20), 0, 'an unused BAR reads zero');
    write32(config, 0x14, 0);
    write32(config, 0x18, 0x4);
    assert.equal(config.barAddress(1), 0x4_0000_0000n);
    assert.equal(config.barSize(1), 1n << 33n);
  });

  it('sizes the expansion ROM and keeps its enable bit writable', () => {
    const config = new PciConfigSpace({ identity, romSize: 0x10000 });
    write32(config, 0x30, 0xffffffff);
    assert.equal(config.readU32(0x30), 0xffff0001);
  });

  it('keeps IDs read-only, masks the command register and clears status error bits written with 1', () => {
    const config = new PciConfigSpace({ identity });
    write32(config, 0, 0);
    assert.equal(config.header('vendorId'), 0x1234);
    config.write(4, Uint8Array.of(0xff, 0xff, 0, 0));
    assert.equal(config.command, 0x0507, 'I/O, Mem, BusMaster, SERR, DisINTx: what QEMU 7.2 lets software set');
    config.write(TYPE0_HEADER.field('cacheLineSize').offset, Uint8Array.of(0xff, 0xff));
    assert.deepEqual([config.header('cacheLineSize'), config.header('latencyTimer')], [0xff, 0], 'the latency timer is read-only zero');
    const status = TYPE0_HEADER.field('status').offset;
    // Hardware would set error bits; emulate one by the internal path and clear it the way software does.
    (config as unknown as { bytes: Uint8Array }).bytes[status + 1] = 0x20; // Received Master Abort
    config.write(status, Uint8Array.of(0, 0x20));
    assert.equal(config.header('status') & PCI_STATUS.bits.RECEIVED_MASTER_ABORT, 0);
  });

  it('links MSI and MSI-X from 0x34 and sets the capabilities-list status bit', () => {
    const config = new PciConfigSpace({
      identity,
      bars: [{ size: 0x1000 }],
      capabilities: [
        { kind: 'msi', vectors: 8, address64: false, perVectorMasking: true },
        { kind: 'msix', tableSize: 16, tableBar: 0, tableOffset: 0x800, pbaBar: 0, pbaOffset: 0xc00 },
      ],
    });
    assert.ok((config.header('status') & PCI_STATUS.bits.CAPABILITIES_LIST) !== 0);
    const [msi, msix] = config.capabilities;
    assert.equal(config.header('capabilitiesPointer'), msi!.offset);
    assert.equal(config.readU8(msi!.offset + 1), msix!.offset);
    assert.equal(config.readU8(msix!.offset + 1), 0);
    const msiFields = msi!.structure.decode(config.snapshot(), msi!.offset);
    assert.equal(msiFields.id, PCI_CAPABILITY_IDS.MSI);
    assert.equal(msiFields.control, (3 << 1) | MSI_CONTROL.bits.PER_VECTOR_MASKING);
    const msixFields = msix!.structure.decode(config.snapshot(), msix!.offset);
    assert.equal(msixFields.control, 15);
    assert.equal(msixFields.tableOffsetBir, 0x800);
    assert.equal(msixFields.pbaOffsetBir, 0xc00);
    // Software enables 4 of the 8 MSI vectors and masks vector 9 (not implemented: stays clear).
    config.write(msi!.offset + 2, Uint8Array.of(MSI_CONTROL.bits.ENABLE | (2 << 4), 0xff));
    config.write(msi!.offset + 0x0c, Uint8Array.of(0xff, 0xff, 0, 0));
    assert.equal(config.msi!.enabled, true);
    assert.equal(config.msi!.vectorsEnabled, 4);
    assert.equal(config.readU32(msi!.offset + 0x0c), 0xff);
    assert.equal(config.readU16(msi!.offset + 2) & MSI_CONTROL.bits.PER_VECTOR_MASKING, MSI_CONTROL.bits.PER_VECTOR_MASKING, 'read-only bits stay');
    config.write(msix!.offset + 2, Uint8Array.of(0xff, 0xff));
    assert.equal(config.readU16(msix!.offset + 2), MSIX_CONTROL.bits.ENABLE | MSIX_CONTROL.bits.FUNCTION_MASK | 15);
    config.reset();
    assert.equal(config.msi!.enabled, false);
  });

  it("lays out the edu's configuration space as QEMU 7.2 does (dwords 0x00-0x5c and write masks, measured)", () => {
    const config = new PciConfigSpace({ identity: EDU_PCI_IDENTITY, bars: [{ size: EDU_BAR_SIZE }], capabilities: EDU_PCI_CAPABILITIES });
    const measured: Record<number, number> = {
      0x00: 0x11e81234,
      0x04: 0x00100000,
      0x08: 0x00ff0010,
      0x2c: 0x11001af4,
      0x34: 0x40,
      0x3c: 0x100,
      0x40: 0x00800005,
    };
    for (let offset = 0; offset < 0x60; offset += 4) assert.equal(config.readU32(offset), measured[offset] ?? 0, `dword 0x${offset.toString(16)}`);
    const writeAllOnes = (offset: number, width: 1 | 2 | 4) => config.write(offset, new Uint8Array(width).fill(0xff));
    const readsBack: [number, 1 | 2 | 4, number][] = [
      [0x04, 2, 0x0507],
      [0x0c, 1, 0xff],
      [0x0d, 1, 0],
      [0x0f, 1, 0],
      [0x3c, 1, 0xff],
      [0x30, 4, 0],
      [0x14, 4, 0],
      [0x10, 4, 0xfff00000],
    ];
    for (const [offset, width, value] of readsBack) {
      writeAllOnes(offset, width);
      assert.equal(
        width === 1 ? config.readU8(offset) : width === 2 ? config.readU16(offset) : config.readU32(offset),
        value,
        `0x${offset.toString(16)} after writing all ones`,
      );
    }
  });

  it('refuses impossible definitions with typed errors', () => {
    assert.throws(() => new PciConfigSpace({ identity, bars: [{ size: 0x1800 }] }), /power of two/);
    assert.throws(() => new PciConfigSpace({ identity, bars: [{ size: 0x1000, kind: 'mem64' }, { size: 0x1000 }] }), /upper half/);
    assert.throws(() => new PciConfigSpace({ identity, capabilities: [{ kind: 'msi', vectors: 3 }] }), /MSI vectors/);
    assert.throws(
      () => new PciConfigSpace({ identity, capabilities: [{ kind: 'msix', tableSize: 4, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 8 }] }),
      /not a defined BAR/,
    );
  });

  it('never lets a write change a read-only bit (property)', () => {
    const config = new PciConfigSpace({ identity, bars: [{ size: 0x100 }], capabilities: [{ kind: 'msi' }] });
    const before = config.snapshot();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ minLength: 1, maxLength: 8 }), (offset, data) => {
        const length = Math.min(data.length, 256 - offset);
        config.write(offset, data.subarray(0, length));
        assert.equal(config.header('vendorId'), 0x1234);
        assert.equal(config.header('deviceId'), 0x5678);
        assert.equal(config.readU32(0x10) & 0xff, 0, 'BAR0 bits below its 256-byte size stay zero');
        assert.equal(config.readU8(0x34), before[0x34]);
      }),
      { numRuns: 500 },
    );
  });
});

describe('PciConfigSpace extended capabilities', () => {
  /** The chain as software walks it: from 0x100, each header's next offset, until a zero header or next. */
  function walk(config: PciConfigSpace): { offset: number; id: number; version: number; next: number }[] {
    const found: { offset: number; id: number; version: number; next: number }[] = [];
    for (let offset = 0x100; offset !== 0 && found.length < 16;) {
      const header = config.readU32(offset);
      if (header === 0) break;
      const next = EXTENDED_CAPABILITY_HEADER.get(header, 'NEXT');
      found.push({ offset, id: EXTENDED_CAPABILITY_HEADER.get(header, 'ID'), version: EXTENDED_CAPABILITY_HEADER.get(header, 'VERSION'), next });
      offset = next;
    }
    return found;
  }

  const serial = 0x0123456789abcdefn;

  it('links extended capabilities from 0x100 through real headers (ID, version, next offset), the last with next 0', () => {
    const config = new PciConfigSpace({
      identity,
      size: 4096,
      extendedCapabilities: [
        { kind: 'serial-number', serial },
        { kind: 'pasid', privilegedSupported: true, maxPasidWidth: 16 },
      ],
    });
    const chain = walk(config);
    assert.deepEqual(
      chain.map(({ id, version }) => [id, version]),
      [
        [PCI_EXTENDED_CAPABILITIES.values.SERIAL_NUMBER, 1],
        [PCI_EXTENDED_CAPABILITIES.values.PASID, 1],
      ],
    );
    assert.equal(chain[0]!.offset, 0x100);
    assert.equal(chain[0]!.next, chain[1]!.offset);
    assert.equal(chain[1]!.offset % 4, 0, 'dword aligned');
    assert.ok(chain[1]!.offset >= 0x100 + SERIAL_NUMBER_STRUCTURE.size, 'after the serial number');
    assert.equal(chain[1]!.next, 0);
    assert.deepEqual(
      config.extendedCapabilities.map(({ id, offset, version }) => ({ id, offset, version })),
      chain.map(({ id, offset, version }) => ({ id, offset, version })),
    );
    const bytes = config.snapshot();
    const dsn = SERIAL_NUMBER_STRUCTURE.decode(bytes, 0x100);
    assert.equal((BigInt(dsn.serialHigh) << 32n) | BigInt(dsn.serialLow), serial);
    const pasid = PASID_STRUCTURE.decode(bytes, chain[1]!.offset);
    assert.equal(PASID_CAPABILITY.get(pasid.capability, 'MAX_WIDTH'), 16);
    assert.equal(pasid.capability & PASID_CAPABILITY.bits.EXECUTE_SUPPORTED, 0);
    assert.ok((pasid.capability & PASID_CAPABILITY.bits.PRIVILEGED_SUPPORTED) !== 0);
  });

  it('lets software set only the PASID enables the function supports, and keeps headers and capabilities read-only', () => {
    const config = new PciConfigSpace({
      identity,
      size: 4096,
      extendedCapabilities: [
        { kind: 'serial-number', serial },
        { kind: 'pasid', privilegedSupported: true },
      ],
    });
    const at = config.extendedCapability(PCI_EXTENDED_CAPABILITIES.values.PASID)!.offset;
    const before = config.snapshot();
    for (let offset = 0x100; offset < at + PASID_STRUCTURE.size; offset += 4) config.write(offset, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
    const control = at + PASID_STRUCTURE.field('control').offset;
    assert.equal(
      config.readU16(control),
      PASID_CONTROL.bits.ENABLE | PASID_CONTROL.bits.PRIVILEGED_ENABLE,
      'Execute Permission Enable stays zero without support',
    );
    const after = config.snapshot();
    for (let offset = 0x100; offset < at + PASID_STRUCTURE.size; offset++) {
      if (offset !== control && offset !== control + 1) assert.equal(after[offset], before[offset], `byte 0x${offset.toString(16)}`);
    }
    assert.deepEqual(config.pasid, {
      enabled: true,
      executeEnabled: false,
      privilegedEnabled: true,
      executeSupported: false,
      privilegedSupported: true,
      maxWidth: 20,
    });
    config.write(control, Uint8Array.of(0, 0));
    assert.equal(config.pasid!.enabled, false);
  });

  it('keeps extended space zero without extended capabilities, and has no PASID state then', () => {
    const config = new PciConfigSpace({ identity, size: 4096 });
    assert.equal(config.readU32(0x100), 0, 'a zero header at 0x100 ends an empty chain');
    assert.deepEqual(walk(config), []);
    assert.equal(config.pasid, undefined);
  });

  it('places a PCI Express endpoint capability with its writable Device Control and write-1-to-clear Device Status', () => {
    const config = new PciConfigSpace({ identity, size: 4096, capabilities: [{ kind: 'express' }, { kind: 'msi' }] });
    const express = config.capability(PCI_CAPABILITY_IDS.PCI_EXPRESS)!;
    assert.equal(express.offset, 0x40);
    assert.equal(config.readU8(express.offset + 1), config.capability(PCI_CAPABILITY_IDS.MSI)!.offset);
    assert.ok(config.capability(PCI_CAPABILITY_IDS.MSI)!.offset >= 0x40 + EXPRESS_ENDPOINT_STRUCTURE.size);
    const fields = EXPRESS_ENDPOINT_STRUCTURE.decode(config.snapshot(), express.offset);
    assert.equal(EXPRESS_CAPABILITIES.get(fields.capabilities, 'VERSION'), 2);
    assert.equal(fields.deviceCapabilities2, 0, 'no End-End TLP Prefix unless asked');
    const control = express.offset + EXPRESS_ENDPOINT_STRUCTURE.field('deviceControl').offset;
    config.write(control, Uint8Array.of(0xff, 0xff));
    assert.equal(config.readU16(control), EXPRESS_DEVICE_CONTROL.writable);
    const status = express.offset + EXPRESS_ENDPOINT_STRUCTURE.field('deviceStatus').offset;
    (config as unknown as { bytes: Uint8Array }).bytes[status] = EXPRESS_DEVICE_STATUS.bits.UNSUPPORTED_REQUEST;
    config.write(status, Uint8Array.of(EXPRESS_DEVICE_STATUS.bits.UNSUPPORTED_REQUEST, 0));
    assert.equal(config.readU16(status), 0);
  });

  it('refuses extended capabilities it cannot place', () => {
    assert.throws(() => new PciConfigSpace({ identity, extendedCapabilities: [{ kind: 'pasid' }] }), /4096-byte/);
    assert.throws(() => new PciConfigSpace({ identity, size: 4096, extendedCapabilities: [{ kind: 'pasid' }, { kind: 'pasid' }] }), /listed twice/);
    assert.throws(
      () => new PciConfigSpace({ identity, size: 4096, extendedCapabilities: [{ kind: 'pasid', maxPasidWidth: 21 }] }),
      /Max PASID Width/,
    );
    assert.throws(() => new PciConfigSpace({ identity, size: 4096, extendedCapabilities: [{ kind: 'serial-number', serial: 1n << 64n }] }), /64-bit/);
  });

  it('never lets a write change a read-only bit of extended space (property)', () => {
    const config = new PciConfigSpace({
      identity,
      size: 4096,
      extendedCapabilities: [
        { kind: 'serial-number', serial },
        { kind: 'pasid', executeSupported: true },
      ],
    });
    const control = config.extendedCapability(PCI_EXTENDED_CAPABILITIES.values.PASID)!.offset + PASID_STRUCTURE.field('control').offset;
    const before = config.snapshot();
    fc.assert(
      fc.property(fc.integer({ min: 0x100, max: 0xff8 }), fc.uint8Array({ minLength: 1, maxLength: 8 }), (offset, data) => {
        config.write(offset, data);
        const after = config.snapshot();
        for (let at = 0x100; at < 0x1000; at++) {
          if (at === control) assert.equal(after[at]! & ~(PASID_CONTROL.bits.ENABLE | PASID_CONTROL.bits.EXECUTE_ENABLE), 0);
          else if (at !== control + 1) assert.equal(after[at], before[at], `byte 0x${at.toString(16)}`);
          else assert.equal(after[at], 0);
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('alignedAccesses', () => {
  it('splits a byte range into naturally aligned accesses of 1 to 8 bytes', () => {
    assert.deepEqual(alignedAccesses(1, 14), [
      { offset: 1, size: 1 },
      { offset: 2, size: 2 },
      { offset: 4, size: 4 },
      { offset: 8, size: 4 },
      { offset: 12, size: 2 },
      { offset: 14, size: 1 },
    ]);
    assert.deepEqual(alignedAccesses(0x80, 16), [
      { offset: 0x80, size: 8 },
      { offset: 0x88, size: 8 },
    ]);
  });
});
