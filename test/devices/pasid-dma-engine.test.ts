/**
 * The PASID DMA engine: its PCI Express configuration space (PASID extended capability found by walking the chain
 * from 0x100), and transfers end to end through a real VtdUnit in scalable mode: first-stage tables of PASID 7,
 * fault records with PP/PV, requests without PASID, the PASID Control enables, interrupts; and as the testbed
 * hosts it (ports, ECAM, BAR0).
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import sinon from 'sinon';
import {
  ENGINE_CONTROL,
  ENGINE_DIRECTIONS,
  ENGINE_ERRORS,
  ENGINE_PASID_TAG,
  ENGINE_STATUS,
  PASID_ENGINE_BUFFER_OFFSET,
  PASID_ENGINE_IDENTIFICATION,
  PASID_ENGINE_PCI_IDENTITY,
  PASID_ENGINE_REGISTERS as REG,
  PasidDmaEngine,
  type PasidDmaOutcome,
  type PasidDmaPort,
} from '../../lib/devices/pasid-dma-engine';
import {
  EXPRESS_CAPABILITIES,
  EXPRESS_DEVICE_CAPABILITIES_2,
  EXPRESS_ENDPOINT_STRUCTURE,
  EXTENDED_CAPABILITY_HEADER,
  MSI_CONTROL,
  PASID_CAPABILITY,
  PASID_CONTROL,
  PASID_STRUCTURE,
  PCI_CAPABILITY_IDS,
  PCI_COMMAND,
  PCI_EXTENDED_CAPABILITIES,
} from '../../lib/devices/pci-layout';
import { DmaFault, EFAULT, EPERM, type AsyncDmaSpace } from '../../lib/memory';
import { describePciConfig } from '../../lib/vfio-user/client/pci-config';
import { DeviceRegistry, type DeviceInterrupt } from '../../lib/vtd/embedding';
import { ECAM_BASE, TestbedMachine } from '../../lib/vmm/testbed';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { ScalableGuest, frcdHi } from '../vtd/scalable-guest';
import { SID } from '../vtd/unit-guest';

const FIRST = 'x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48';
const NESTED = `${FIRST},x-nested=on`;
const MSI_ADDRESS = 0xfee01000;
const MSI_DATA = 0x4041;

function readU32(engine: PasidDmaEngine, offset: number): number {
  return Number(engine.read(offset, 4));
}

function writeConfig(engine: PasidDmaEngine, offset: number, value: number, width: 1 | 2 | 4): void {
  engine.config.write(
    offset,
    Uint8Array.from({ length: width }, (_, i) => (value >>> (8 * i)) & 0xff),
  );
}

/** Offsets of the extended capabilities, following next pointers from 0x100 as a driver does. */
function walkExtended(engine: PasidDmaEngine): { offset: number; id: number; version: number }[] {
  const found: { offset: number; id: number; version: number }[] = [];
  for (let offset = 0x100; offset !== 0 && found.length < 64;) {
    const header = engine.config.readU32(offset);
    if (header === 0) break;
    found.push({ offset, id: EXTENDED_CAPABILITY_HEADER.get(header, 'ID'), version: EXTENDED_CAPABILITY_HEADER.get(header, 'VERSION') });
    offset = EXTENDED_CAPABILITY_HEADER.get(header, 'NEXT');
  }
  return found;
}

function pasidCapabilityOffset(engine: PasidDmaEngine): number {
  const pasid = walkExtended(engine).find((capability) => capability.id === PCI_EXTENDED_CAPABILITIES.values.PASID);
  assert.ok(pasid, 'a PASID extended capability');
  return pasid.offset;
}

/** What a guest driver does first: bus mastering on, then the PASID enables it wants. */
function enable(engine: PasidDmaEngine, control: number): void {
  writeConfig(engine, 4, PCI_COMMAND.bits.MEMORY_SPACE | PCI_COMMAND.bits.BUS_MASTER, 2);
  writeConfig(engine, pasidCapabilityOffset(engine) + PASID_STRUCTURE.field('control').offset, control, 2);
}

function enableMsi(engine: PasidDmaEngine): void {
  const msi = engine.config.capability(PCI_CAPABILITY_IDS.MSI)!;
  writeConfig(engine, msi.offset + msi.structure.field('address').offset, MSI_ADDRESS, 4);
  writeConfig(engine, msi.offset + msi.structure.field('data').offset, MSI_DATA, 2);
  writeConfig(engine, msi.offset + msi.structure.field('control').offset, MSI_CONTROL.bits.ENABLE, 2);
}

interface Descriptor {
  direction: keyof typeof ENGINE_DIRECTIONS.values;
  source: bigint | number;
  destination: bigint | number;
  length: number;
  pasid?: number;
  privileged?: boolean;
  execute?: boolean;
  interrupt?: boolean;
}

/** Programs a descriptor through MMIO and rings the doorbell. */
function run(engine: PasidDmaEngine, descriptor: Descriptor): void {
  engine.write(REG.sourceLow, 8, BigInt(descriptor.source));
  engine.write(REG.destinationLow, 8, BigInt(descriptor.destination));
  engine.write(REG.length, 4, BigInt(descriptor.length));
  const tag =
    (descriptor.pasid === undefined ? 0 : ENGINE_PASID_TAG.bits.VALID | ENGINE_PASID_TAG.place('PASID', descriptor.pasid)) |
    (descriptor.privileged ? ENGINE_PASID_TAG.bits.PRIVILEGED : 0) |
    (descriptor.execute ? ENGINE_PASID_TAG.bits.EXECUTE : 0);
  engine.write(REG.pasidTag, 4, BigInt(tag >>> 0));
  const control =
    ENGINE_CONTROL.place('DIRECTION', ENGINE_DIRECTIONS.values[descriptor.direction]) | (descriptor.interrupt ? ENGINE_CONTROL.bits.INTERRUPT : 0);
  engine.write(REG.control, 4, BigInt(control));
  engine.write(REG.doorbell, 4, 1n);
}

function status(engine: PasidDmaEngine): { done: boolean; error: boolean; busy: boolean; kind: string; errno: number } {
  const value = readU32(engine, REG.status);
  const kind = ENGINE_STATUS.get(value, 'ERROR_KIND');
  const key = Object.entries(ENGINE_ERRORS.values).find(([, code]) => code === kind)?.[0] ?? `unknown ${kind}`;
  return {
    busy: (value & ENGINE_STATUS.bits.BUSY) !== 0,
    done: (value & ENGINE_STATUS.bits.DONE) !== 0,
    error: (value & ENGINE_STATUS.bits.ERROR) !== 0,
    kind: key,
    errno: ENGINE_STATUS.get(value, 'ERRNO'),
  };
}

function bufferBytes(engine: PasidDmaEngine, offset: number, count: number): Uint8Array {
  return Uint8Array.from({ length: count }, (_, i) => Number(engine.read(PASID_ENGINE_BUFFER_OFFSET + offset + i, 1)));
}

function fillBuffer(engine: PasidDmaEngine, offset: number, data: Uint8Array): void {
  data.forEach((byte, i) => engine.write(PASID_ENGINE_BUFFER_OFFSET + offset + i, 1, BigInt(byte)));
}

function pattern(count: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: count }, (_, i) => (seed + i * 13) & 0xff);
}

function ram(guest: ScalableGuest, address: number, count: number): Uint8Array {
  const into = new Uint8Array(count);
  guest.memory.read(address, into);
  return into;
}

/** A guest with the engine at SID behind its unit, through the embedding contract's device registry. */
function setup(config = FIRST): {
  guest: ScalableGuest;
  engine: PasidDmaEngine;
  interrupts: DeviceInterrupt[];
  outcomes: PasidDmaOutcome[];
  port: PasidDmaPort;
} {
  const guest = new ScalableGuest(config);
  const interrupts: DeviceInterrupt[] = [];
  const registry = new DeviceRegistry({ memory: guest.memory, iommu: guest.unit, onInterrupt: (interrupt) => interrupts.push(interrupt) });
  const port = registry.attachDevice(SID, 'pasid-dma-engine');
  const outcomes: PasidDmaOutcome[] = [];
  const engine = new PasidDmaEngine(port, { onTransfer: (outcome) => outcomes.push(outcome) });
  return { guest, engine, interrupts, outcomes, port };
}

/** RID_PASID (0) and PASID 7 map the same IOVA page to different guest-physical pages. */
function mapTwoSpaces(guest: ScalableGuest): void {
  guest.scalableContext(SID);
  guest.writer.mapFirst(guest.firstStage(SID, 0, 1), 4, 0x10000n, 0x300000);
  guest.writer.mapFirst(guest.firstStage(SID, 7, 2), 4, 0x10000n, 0x400000);
  guest.enableScalable();
}

describe('PasidDmaEngine configuration space', () => {
  const engine = new PasidDmaEngine({ dma: { read() {}, write() {} }, pasidDma: () => ({ read() {}, write() {} }), interrupt() {} });

  it('has its own identity, a PCI Express endpoint capability and MSI in the legacy list', () => {
    assert.equal(engine.config.size, 4096);
    assert.equal(engine.config.readU16(0), PASID_ENGINE_PCI_IDENTITY.vendorId);
    assert.equal(engine.config.readU16(2), PASID_ENGINE_PCI_IDENTITY.deviceId);
    assert.equal(readU32(engine, REG.identification), PASID_ENGINE_IDENTIFICATION);
    const ids: number[] = [];
    for (let at = engine.config.readU8(0x34); at !== 0; at = engine.config.readU8(at + 1)) ids.push(engine.config.readU8(at));
    assert.deepEqual(ids, [PCI_CAPABILITY_IDS.PCI_EXPRESS, PCI_CAPABILITY_IDS.MSI]);
    const express = engine.config.capability(PCI_CAPABILITY_IDS.PCI_EXPRESS)!;
    const fields = EXPRESS_ENDPOINT_STRUCTURE.decode(engine.config.snapshot(), express.offset);
    assert.equal(EXPRESS_CAPABILITIES.get(fields.capabilities, 'VERSION'), 2);
    assert.equal(EXPRESS_CAPABILITIES.get(fields.capabilities, 'PORT_TYPE'), 0, 'endpoint');
    assert.ok(
      (fields.deviceCapabilities2 & EXPRESS_DEVICE_CAPABILITIES_2.bits.END_END_TLP_PREFIX) !== 0,
      'End-End TLP Prefix Supported: what a PASID travels in',
    );
  });

  it('chains the PASID extended capability (ID 0x1b, version 1) from 0x100 with its capability fields', () => {
    assert.deepEqual(walkExtended(engine), [{ offset: 0x100, id: 0x1b, version: 1 }]);
    const supported = engine.config.readU16(0x100 + PASID_STRUCTURE.field('capability').offset);
    assert.equal(PASID_CAPABILITY.get(supported, 'MAX_WIDTH'), 20);
    assert.equal(PASID_CAPABILITY.get(supported, 'EXECUTE_SUPPORTED'), 1);
    assert.equal(PASID_CAPABILITY.get(supported, 'PRIVILEGED_SUPPORTED'), 1);
    assert.deepEqual(engine.config.pasid, {
      enabled: false,
      executeEnabled: false,
      privilegedEnabled: false,
      executeSupported: true,
      privilegedSupported: true,
      maxWidth: 20,
    });
    const probed = describePciConfig(engine.config.snapshot());
    assert.deepEqual(
      probed.extendedCapabilities.map(({ offset, id, version, name }) => ({ offset, id, version, name })),
      [{ offset: 0x100, id: 0x1b, version: 1, name: 'Process Address Space ID' }],
    );
    assert.deepEqual(probed.problems, []);
  });

  it('lets software write the PASID Control enables and nothing read-only', () => {
    const fresh = new PasidDmaEngine({ dma: { read() {}, write() {} }, pasidDma: () => ({ read() {}, write() {} }), interrupt() {} });
    const at = pasidCapabilityOffset(fresh);
    const before = new DataView(fresh.config.snapshot().buffer);
    writeConfig(fresh, at, 0xffffffff, 4);
    writeConfig(fresh, at + 4, 0xffffffff, 4);
    assert.equal(fresh.config.readU32(at), before.getUint32(at, true), 'the header is read-only');
    assert.equal(fresh.config.readU16(at + 4), before.getUint16(at + 4, true), 'the PASID Capability register is read-only');
    assert.equal(fresh.config.readU16(at + 6), PASID_CONTROL.writable, 'PASID Enable, Execute Permission Enable, Privileged Mode Enable');
    assert.deepEqual([fresh.config.pasid!.enabled, fresh.config.pasid!.executeEnabled, fresh.config.pasid!.privilegedEnabled], [true, true, true]);
    fresh.reset();
    assert.equal(fresh.config.readU16(at + 6), 0, 'reset clears the enables');
  });
});

describe('PasidDmaEngine through a VtdUnit in scalable mode', () => {
  it('moves data through the first-stage tables of PASID 7, not those of RID_PASID', () => {
    const { guest, engine, outcomes } = setup();
    mapTwoSpaces(guest);
    enable(engine, PASID_CONTROL.bits.ENABLE);
    const inPasid7 = pattern(64, 1);
    guest.memory.write(0x400010, inPasid7);
    guest.memory.write(0x300010, pattern(64, 99));
    run(engine, { direction: 'FROM_MEMORY', source: 0x10010, destination: 0x20, length: 64, pasid: 7 });
    assert.deepEqual(status(engine), { busy: false, done: true, error: false, kind: 'NONE', errno: 0 });
    assert.deepEqual(bufferBytes(engine, 0x20, 64), inPasid7);
    assert.deepEqual(outcomes[0]!.tag, { pasid: 7, supervisor: false, execute: false });

    engine.write(REG.status, 4, BigInt(ENGINE_STATUS.bits.DONE));
    const outgoing = pattern(32, 50);
    fillBuffer(engine, 0x100, outgoing);
    run(engine, { direction: 'TO_MEMORY', source: 0x100, destination: 0x10800, length: 32, pasid: 7 });
    assert.deepEqual(ram(guest, 0x400800, 32), outgoing);
    assert.notDeepEqual(ram(guest, 0x300800, 32), outgoing);

    run(engine, { direction: 'COPY', source: 0x10010, destination: 0x10c00, length: 64, pasid: 7 });
    assert.deepEqual(ram(guest, 0x400c00, 64), inPasid7, 'both sides of a copy carry the tag');
  });

  it('ends a faulting transfer with the error status, and the unit records the fault with PP = 1 and PV = 7', () => {
    const { guest, engine, outcomes } = setup();
    mapTwoSpaces(guest);
    enable(engine, PASID_CONTROL.bits.ENABLE);
    assert.doesNotThrow(() => run(engine, { direction: 'FROM_MEMORY', source: 0x50000, destination: 0, length: 16, pasid: 7 }));
    assert.deepEqual(status(engine), { busy: false, done: false, error: true, kind: 'DMA_FAULT', errno: EFAULT });
    assert.ok(outcomes[0]!.fault instanceof DmaFault);
    assert.equal(guest.frcdHi(), frcdHi(faultCode('SM_FIRST_STAGE_NOT_PRESENT'), { read: true, pasid: 7 }));
    assert.equal((guest.frcdHi() >> 31n) & 1n, 1n, 'PP');
    assert.equal((guest.frcdHi() >> 40n) & 0xfffffn, 7n, 'PV');
  });

  it('sends requests without PASID through RID_PASID when PASID valid is clear', () => {
    const { guest, engine, outcomes } = setup();
    mapTwoSpaces(guest);
    enable(engine, 0);
    const data = pattern(48, 7);
    fillBuffer(engine, 0, data);
    run(engine, { direction: 'TO_MEMORY', source: 0, destination: 0x10200, length: 48 });
    assert.equal(status(engine).done, true);
    assert.deepEqual(ram(guest, 0x300200, 48), data, 'RID_PASID maps the page to 0x300000');
    assert.equal(outcomes[0]!.tag, undefined);
  });

  it('refuses to tag a request while PASID Enable is clear: the status says so and no DMA happens', () => {
    const { guest, engine, port } = setup();
    mapTwoSpaces(guest);
    enable(engine, 0);
    const pasidDma = sinon.spy(port, 'pasidDma');
    const dma = { read: sinon.spy(port.dma, 'read'), write: sinon.spy(port.dma, 'write') };
    fillBuffer(engine, 0, pattern(16, 3));
    run(engine, { direction: 'TO_MEMORY', source: 0, destination: 0x10000, length: 16, pasid: 7 });
    assert.deepEqual(status(engine), { busy: false, done: false, error: true, kind: 'PASID_DISABLED', errno: 0 });
    assert.equal(pasidDma.callCount, 0);
    assert.equal(dma.read.callCount + dma.write.callCount, 0, 'nor does it fall back to a request without PASID');
    assert.deepEqual(ram(guest, 0x400000, 16), new Uint8Array(16));
    assert.equal(guest.frcdHi(), 0n, 'nothing reached the unit');
  });

  it('sets the privileged and execute flags only when their enables are set', () => {
    const { guest, engine } = setup(NESTED);
    guest.scalableContext(SID);
    const top = guest.firstStage(SID, 7, 2, { SRE: 1 });
    guest.writer.mapFirst(top, 4, 0x20000n, 0x500000, { us: false });
    guest.enableScalable();
    enable(engine, PASID_CONTROL.bits.ENABLE);
    guest.memory.write(0x500000, pattern(8, 5));
    run(engine, { direction: 'FROM_MEMORY', source: 0x20000, destination: 0, length: 8, pasid: 7, privileged: true });
    assert.deepEqual(status(engine), { busy: false, done: false, error: true, kind: 'PRIVILEGED_DISABLED', errno: 0 });
    run(engine, { direction: 'FROM_MEMORY', source: 0x20000, destination: 0, length: 8, pasid: 7, execute: true });
    assert.equal(status(engine).kind, 'EXECUTE_DISABLED');
    assert.equal(guest.frcdHi(), 0n);

    run(engine, { direction: 'FROM_MEMORY', source: 0x20000, destination: 0, length: 8, pasid: 7 });
    assert.deepEqual(
      status(engine),
      { busy: false, done: false, error: true, kind: 'DMA_FAULT', errno: EPERM },
      'a user request to a supervisor page',
    );
    guest.clearFault();
    enable(engine, PASID_CONTROL.bits.ENABLE | PASID_CONTROL.bits.PRIVILEGED_ENABLE);
    run(engine, { direction: 'FROM_MEMORY', source: 0x20000, destination: 0, length: 8, pasid: 7, privileged: true });
    assert.deepEqual(status(engine), { busy: false, done: true, error: false, kind: 'NONE', errno: 0 });
    assert.deepEqual(bufferBytes(engine, 0, 8), pattern(8, 5), 'the supervisor request reached the supervisor page');
  });

  it("raises its MSI on completion and on error, through the contract's interrupt path", () => {
    const { guest, engine, interrupts } = setup();
    mapTwoSpaces(guest);
    enable(engine, PASID_CONTROL.bits.ENABLE);
    enableMsi(engine);
    run(engine, { direction: 'FROM_MEMORY', source: 0x10000, destination: 0, length: 4, pasid: 7, interrupt: true });
    run(engine, { direction: 'FROM_MEMORY', source: 0x90000, destination: 0, length: 4, pasid: 7, interrupt: true });
    run(engine, { direction: 'FROM_MEMORY', source: 0x10000, destination: 0, length: 4, pasid: 7 });
    assert.deepEqual(
      interrupts.map(({ sid, address, data }) => ({ sid, address, data })),
      [
        { sid: SID, address: BigInt(MSI_ADDRESS), data: MSI_DATA },
        { sid: SID, address: BigInt(MSI_ADDRESS), data: MSI_DATA },
      ],
      'one message per transfer with IRQ set',
    );
    assert.equal(guest.interrupts.calledWith(MSI_ADDRESS, MSI_DATA), true, 'delivered by the unit (remapping off)');
  });
});

describe('PasidDmaEngine on its own', () => {
  function withMemory(options: { onIntx?: (asserted: boolean) => void } = {}) {
    const memory = new Uint8Array(0x10000);
    const space: AsyncDmaSpace = {
      read: (address, into) => into.set(memory.subarray(Number(address), Number(address) + into.length)),
      write: (address, data) => memory.set(data, Number(address)),
    };
    const engine = new PasidDmaEngine({ dma: space, pasidDma: () => space, interrupt() {} }, options);
    return { memory, engine };
  }

  it('drives INTx while MSI is off, and lowers it when software clears the status', () => {
    const lines: boolean[] = [];
    const { engine } = withMemory({ onIntx: (asserted) => lines.push(asserted) });
    enable(engine, 0);
    run(engine, { direction: 'FROM_MEMORY', source: 0, destination: 0, length: 4, interrupt: true });
    assert.deepEqual(lines, [true]);
    engine.write(REG.status, 4, BigInt(ENGINE_STATUS.bits.DONE));
    assert.deepEqual(lines, [true, false]);
    assert.equal(readU32(engine, REG.status), 0);
  });

  it('refuses DMA while Bus Master Enable is clear, and malformed descriptors', () => {
    const { engine, memory } = withMemory();
    fillBuffer(engine, 0, pattern(8, 1));
    run(engine, { direction: 'TO_MEMORY', source: 0, destination: 0x100, length: 8 });
    assert.equal(status(engine).kind, 'BUS_MASTER_DISABLED');
    assert.deepEqual(memory.subarray(0x100, 0x108), new Uint8Array(8));
    enable(engine, PASID_CONTROL.bits.ENABLE);
    for (const descriptor of [
      { direction: 'TO_MEMORY', source: 0, destination: 0, length: 0 },
      { direction: 'TO_MEMORY', source: 0xff8, destination: 0, length: 16 },
      { direction: 'COPY', source: 0, destination: 0x2000, length: 0x1001 },
      { direction: 'FROM_MEMORY', source: 0, destination: 0, length: 4, privileged: true },
    ] as const) {
      run(engine, descriptor);
      assert.equal(status(engine).kind, 'BAD_DESCRIPTOR', JSON.stringify(descriptor));
    }
    engine.write(REG.control, 4, 3n);
    engine.write(REG.doorbell, 4, 1n);
    assert.equal(status(engine).kind, 'BAD_DESCRIPTOR', 'direction 3 is none');
  });

  it('keeps BUSY and freezes the descriptor while an asynchronous transfer runs', async () => {
    let settle: () => void = () => {};
    const memory = new Uint8Array(0x1000).fill(0xab);
    const slow: AsyncDmaSpace = {
      read: (address, into) =>
        new Promise<void>((resolve) => {
          settle = () => {
            into.set(memory.subarray(Number(address), Number(address) + into.length));
            resolve();
          };
        }),
      write: () => undefined,
    };
    const engine = new PasidDmaEngine({ dma: slow, pasidDma: () => slow, interrupt() {} });
    enable(engine, 0);
    run(engine, { direction: 'FROM_MEMORY', source: 0x10, destination: 0, length: 4 });
    assert.deepEqual(status(engine), { busy: true, done: false, error: false, kind: 'NONE', errno: 0 });
    engine.write(REG.length, 4, 99n);
    assert.equal(readU32(engine, REG.length), 4, 'the descriptor does not change under a running transfer');
    settle();
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(status(engine), { busy: false, done: true, error: false, kind: 'NONE', errno: 0 });
    assert.deepEqual(bufferBytes(engine, 0, 4), new Uint8Array(4).fill(0xab));
  });

  it('never throws out of an MMIO access, whatever is written where (property)', () => {
    const failing: AsyncDmaSpace = {
      read: () => {
        throw new DmaFault(0n, 1, 'read', 'refused', EFAULT);
      },
      write: () => {
        throw new Error('not a DmaFault');
      },
    };
    const engine = new PasidDmaEngine({ dma: failing, pasidDma: () => failing, interrupt() {} });
    enable(engine, PASID_CONTROL.writable);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0x2000 - 8 }),
        fc.constantFrom(1, 2, 4, 8) as fc.Arbitrary<1 | 2 | 4 | 8>,
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        (offset, size, value) => {
          engine.write(offset, size, value);
          engine.write(REG.doorbell, 4, 1n);
          engine.read(offset, size);
          assert.equal(readU32(engine, REG.identification), PASID_ENGINE_IDENTIFICATION);
          const after = status(engine);
          assert.ok(!after.done || after.kind === 'NONE');
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('PasidDmaEngine in the testbed (pasidEngineSlot)', () => {
  const slot = 6;
  const bar = 0xfe100000n;
  const ecam = BigInt(ECAM_BASE + (slot << 15));
  let machine: TestbedMachine;
  const outcomes: PasidDmaOutcome[] = [];

  before(() => {
    machine = new TestbedMachine({ ramBytes: 16 << 20, pasidEngineSlot: slot, onPasidTransfer: (outcome) => outcomes.push(outcome) });
  });
  after(() => machine.close());

  function selectConfig(register: number): void {
    machine.writePort(0xcf8, 4, (0x80000000 | (slot << 11) | register) >>> 0);
  }

  it('enumerates through the config ports next to the edu, and shows its extended space through ECAM', () => {
    selectConfig(0);
    assert.equal(machine.readPort(0xcfc, 4), (PASID_ENGINE_PCI_IDENTITY.deviceId << 16) | PASID_ENGINE_PCI_IDENTITY.vendorId);
    machine.writePort(0xcf8, 4, 0x80002000);
    assert.equal(machine.readPort(0xcfc, 4), 0x11e81234, 'the edu stays at 00:04.0');
    assert.equal(machine.readMemory(ecam, 4), (PASID_ENGINE_PCI_IDENTITY.deviceId << 16) | PASID_ENGINE_PCI_IDENTITY.vendorId);
    const header = machine.readMemory(ecam + 0x100n, 4) as number;
    assert.equal(EXTENDED_CAPABILITY_HEADER.get(header, 'ID'), PCI_EXTENDED_CAPABILITIES.values.PASID);
    assert.equal(machine.devices.get(slot << 3)?.name, 'pasid-dma-engine');
  });

  it('runs a PASID-tagged transfer once the guest has set PASID Enable through ECAM, and logs its MSI', () => {
    selectConfig(0x10);
    machine.writePort(0xcfc, 4, Number(bar));
    selectConfig(0x04);
    machine.writePort(0xcfc, 2, PCI_COMMAND.bits.MEMORY_SPACE | PCI_COMMAND.bits.BUS_MASTER);
    assert.equal(machine.readMemory(bar, 4), PASID_ENGINE_IDENTIFICATION);
    const msi = machine.pasidEngine!.config.capability(PCI_CAPABILITY_IDS.MSI)!;
    machine.writeMemory(ecam + BigInt(msi.offset + 4), 4, MSI_ADDRESS);
    machine.writeMemory(ecam + BigInt(msi.offset + 0xc), 2, MSI_DATA);
    machine.writeMemory(ecam + BigInt(msi.offset + 2), 2, MSI_CONTROL.bits.ENABLE);
    machine.writeBytes(0x20000n, pattern(32, 4));
    const program = (pasid: boolean) => {
      machine.writeMemory64(bar + BigInt(REG.sourceLow), 0x20000n);
      machine.writeMemory64(bar + BigInt(REG.destinationLow), 0x30000n);
      machine.writeMemory(bar + BigInt(REG.length), 4, 32);
      machine.writeMemory(bar + BigInt(REG.pasidTag), 4, pasid ? (ENGINE_PASID_TAG.bits.VALID | 7) >>> 0 : 0);
      machine.writeMemory(
        bar + BigInt(REG.control),
        4,
        ENGINE_CONTROL.place('DIRECTION', ENGINE_DIRECTIONS.values.COPY) | ENGINE_CONTROL.bits.INTERRUPT,
      );
      machine.writeMemory(bar + BigInt(REG.doorbell), 4, 1);
      return ENGINE_STATUS.get(machine.readMemory(bar + BigInt(REG.status), 4) as number, 'ERROR_KIND');
    };
    assert.equal(program(true), ENGINE_ERRORS.values.PASID_DISABLED);
    assert.deepEqual(machine.readBytes(0x30000n, 32), new Uint8Array(32));
    machine.writeMemory(ecam + BigInt(0x100 + PASID_STRUCTURE.field('control').offset), 2, PASID_CONTROL.bits.ENABLE);
    assert.equal(program(true), ENGINE_ERRORS.values.NONE);
    assert.deepEqual(machine.readBytes(0x30000n, 32), pattern(32, 4), 'without an IOMMU, the PASID resolves to nothing and RAM is reached directly');
    assert.deepEqual(
      outcomes.map((outcome) => outcome.tag?.pasid),
      [undefined, 7],
    );
    assert.deepEqual(
      machine.deviceInterrupts.map(({ sid, address, data }) => ({ sid, address, data })),
      [
        { sid: slot << 3, address: BigInt(MSI_ADDRESS), data: MSI_DATA },
        { sid: slot << 3, address: BigInt(MSI_ADDRESS), data: MSI_DATA },
      ],
    );
  });

  it('refuses a slot that already holds a device', () => {
    assert.throws(() => new TestbedMachine({ ramBytes: 1 << 20, pasidEngineSlot: 4 }), /already holds 'edu'/);
  });
});
