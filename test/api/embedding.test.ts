/** The embedding contract (lib/vtd/embedding.ts): requester ids on any bus, the register window, the registry, shadowing. */
import { strict as assert } from 'node:assert';
import * as sinon from 'sinon';
import { GuestMemory, DmaFault, type DmaSpace } from '../../lib/memory';
import { ViommuError } from '../../lib/errors';
import { ShadowHostBackend } from '../../lib/host/shadow-host-backend';
import {
  DeviceRegistry,
  INTERRUPT_ADDRESS_RANGE,
  IOMMU_WINDOW_SIZE,
  formatRequesterId,
  registerWindow,
  requesterId,
  splitRequesterId,
  type DeviceInterrupt,
  type EmbeddedIommu,
  type IommuHost,
} from '../../lib/vtd/embedding';
import { shadowBackendFor } from '../../lib/vmm/host-backends';
import { EDU_DEVFN, TestbedMachine, type TestbedIommu } from '../../lib/vmm/testbed';
import { VtdUnit } from '../../lib/vtd/unit';
import { decodeBig, encodeBig } from '../../lib/vtd/bitfield';
import { registerOffset } from '../../lib/vtd/register-bits';
import { FRCD_HI_FIELDS, GCMD_FIELDS, RTADDR_FIELDS, REGISTER_WINDOW_SIZE } from '../../lib/vtd/registers';

const PAGE = 4096;

/** A unit over 1 MiB of plain RAM, with the interrupts it delivers. */
function unitWith(config = ''): { memory: GuestMemory; unit: VtdUnit; delivered: [number, number][] } {
  const memory = new GuestMemory();
  memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(1 << 20) });
  const delivered: [number, number][] = [];
  const host: IommuHost = { memory, onInterrupt: (address, data) => void delivered.push([address, data]) };
  return { memory, unit: new VtdUnit({ ...host, config }), delivered };
}

describe('embedding contract', () => {
  describe('requester ids', () => {
    it('packs bus, device and function, and spells them as lspci does', () => {
      assert.equal(requesterId(0x12, 3, 4), 0x121c);
      assert.deepEqual(splitRequesterId(0x121c), { bus: 0x12, device: 3, function: 4, devfn: 0x1c });
      assert.equal(formatRequesterId(0x121c), '12:03.4');
      assert.equal(formatRequesterId(requesterId(0xff, 0x1f, 7)), 'ff:1f.7');
    });

    it('refuses parts out of range with a typed error', () => {
      for (const [bus, device, fn] of [
        [256, 0, 0],
        [0, 32, 0],
        [0, 0, 8],
        [-1, 0, 0],
        [0.5, 0, 0],
      ] as const) {
        assert.throws(
          () => requesterId(bus, device, fn),
          (error: unknown) => error instanceof ViommuError && error.code === 'ERR_REQUESTER_ID',
        );
      }
      assert.throws(() => formatRequesterId(0x10000), /ERR_REQUESTER_ID|not an integer/);
    });
  });

  describe('registerWindow', () => {
    it('passes 4- and 8-byte accesses to the unit, reads narrower ones as 0 and drops their writes', () => {
      const { unit } = unitWith();
      const window = registerWindow(unit);
      assert.equal(window.size, IOMMU_WINDOW_SIZE);
      assert.equal(IOMMU_WINDOW_SIZE, REGISTER_WINDOW_SIZE);
      const rtaddr = registerOffset('RTADDR');
      const value = encodeBig(RTADDR_FIELDS, { RTA: 0x12345 });
      window.write(rtaddr, 8, value);
      assert.equal(window.read(rtaddr, 8), value);
      assert.equal(window.read(rtaddr, 4), value & 0xffffffffn);
      assert.equal(window.read(rtaddr, 2), 0n);
      window.write(rtaddr, 1, 0xffn);
      assert.equal(window.read(rtaddr, 8), value, 'a byte write changed nothing');
      window.write(rtaddr, 4, 0x1_0000_0000n | 0x6000n);
      assert.equal(window.read(rtaddr, 8), (value & ~0xffffffffn) | 0x6000n, 'a 4-byte write takes the low 32 bits of its value');
      assert.equal(window.read(IOMMU_WINDOW_SIZE - 4, 8), 0n, 'an access leaving the window reads 0');
    });
  });

  describe('DeviceRegistry', () => {
    it('gives a device on bus 2 DMA translated for its full requester id, bus included', () => {
      const { memory, unit } = unitWith();
      const devices = new DeviceRegistry({ memory, iommu: unit });
      const sid = requesterId(2, 1, 0);
      const device = devices.attachDevice(sid, 'disk');
      assert.deepEqual([device.sid, device.name], [0x208, 'disk']);
      // Translation off: the device reaches guest RAM at IOVA = GPA.
      device.dma.write(0x3000n, Uint8Array.of(1, 2, 3));
      assert.deepEqual(memory.read(0x3000, 3), Uint8Array.of(1, 2, 3));
      // Translation on with an empty root table: the fault record carries bus 2.
      unit.write(registerOffset('RTADDR'), 8, encodeBig(RTADDR_FIELDS, { RTA: 0x10000 / PAGE }));
      unit.write(registerOffset('GCMD'), 4, Number(encodeBig(GCMD_FIELDS, { SRTP: 1 })));
      unit.write(registerOffset('GCMD'), 4, Number(encodeBig(GCMD_FIELDS, { TE: 1 })));
      assert.throws(() => device.dma.read(0x3000n, new Uint8Array(3)), DmaFault);
      const hi = decodeBig(FRCD_HI_FIELDS, unit.read(registerOffset('FRCD0_HI'), 8));
      assert.equal(Number(hi.SID), sid);
      assert.equal(Number(hi.FR), 0x1, 'no root entry for bus 2');
    });

    it('keys devices by requester id: one per id, listed in order, free again after detach', () => {
      const { memory, unit } = unitWith();
      const devices = new DeviceRegistry({ memory, iommu: unit });
      devices.attachDevice(0x300);
      devices.attachDevice(0x0020, 'edu');
      assert.throws(
        () => devices.attachDevice(0x300, 'again'),
        (error: unknown) =>
          error instanceof ViommuError && error.code === 'ERR_DEVICE_ATTACHED' && /03:00\.0 already holds '03:00\.0'/.test(error.message),
      );
      assert.deepEqual(devices.sourceIds, [0x20, 0x300]);
      assert.deepEqual([...devices].map((d) => d.name).sort(), ['03:00.0', 'edu']);
      assert.equal(devices.detachDevice(0x300), true);
      assert.equal(devices.detachDevice(0x300), false);
      assert.equal(devices.has(0x300), false);
      assert.equal(devices.attachDevice(0x300).sid, 0x300);
      assert.throws(() => devices.attachDevice(0x10000), /ERR_REQUESTER_ID|not an integer/);
    });

    it("sends a device's MSI through the unit's interrupt path, and reports every MSI", () => {
      const { memory, unit, delivered } = unitWith();
      const seen: DeviceInterrupt[] = [];
      const devices = new DeviceRegistry({ memory, iommu: unit, onInterrupt: (interrupt) => seen.push(interrupt) });
      const device = devices.attachDevice(requesterId(1, 0, 0));
      const inRange = device.interrupt(INTERRUPT_ADDRESS_RANGE.start + 0x1000n, 0x41);
      assert.deepEqual(delivered, [[0xfee01000, 0x41]], 'remapping is off: the unit lets it through unchanged');
      assert.equal((inRange.result as { ok: boolean }).ok, true);
      const outside = device.interrupt(0x1000, 0x42);
      assert.equal(outside.result, undefined, 'not an interrupt request: nothing delivered it');
      assert.equal(delivered.length, 1);
      assert.deepEqual(
        seen.map(({ sid, address, data }) => [sid, address, data]),
        [
          [0x100, 0xfee01000n, 0x41],
          [0x100, 0x1000n, 0x42],
        ],
      );
    });

    it('without an IOMMU gives guest RAM itself, and works with any EmbeddedIommu, not only VtdUnit', () => {
      const memory = new GuestMemory();
      memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(PAGE * 4) });
      assert.equal(new DeviceRegistry({ memory }).attachDevice(0x100).dma, memory.dma);
      // An IOMMU that offsets every device's DMA by a page, as a third party might write one.
      const offset: EmbeddedIommu = {
        read: () => 0,
        write: () => undefined,
        dmaSpace: (): DmaSpace => ({
          read: (address, into) => memory.dma.read(address + BigInt(PAGE), into),
          write: (address, data) => memory.dma.write(address + BigInt(PAGE), data),
        }),
      };
      const device = new DeviceRegistry({ memory, iommu: offset }).attachDevice(0x500);
      device.dma.write(0x10n, Uint8Array.of(7));
      assert.deepEqual(memory.read(PAGE + 0x10, 1), Uint8Array.of(7));
      assert.equal(device.interrupt(0xfee00000n, 1).result, undefined, 'an IOMMU without interruptRequest does not remap');
    });
  });

  describe('shadowBackendFor', () => {
    it("shadows only with caching mode, and holds the unit's completions while the backend settles", () => {
      const plain = unitWith();
      assert.equal(shadowBackendFor(plain.unit, plain.memory), undefined);
      const caching = unitWith('caching-mode=on');
      const hold = sinon.spy(caching.unit, 'holdCompletionsWhile');
      const shadow = shadowBackendFor(caching.unit, caching.memory);
      assert.ok(shadow instanceof ShadowHostBackend);
      assert.equal(shadow.name, 'shadow');
      assert.equal(hold.callCount, 1);
      assert.equal(hold.firstCall.args[0]!(), undefined, 'nothing attached: nothing to wait for');
    });
  });

  describe('the testbed on the contract', () => {
    let machine: TestbedMachine | undefined;
    afterEach(() => machine?.close());

    it('registers its edu at 00:04.0 and takes further devices on any bus, translated by the unit', () => {
      let unit: VtdUnit | undefined;
      machine = new TestbedMachine({ ramBytes: 16 << 20, iommu: (memory) => (unit = new VtdUnit({ memory, onInterrupt: () => undefined })) });
      const iommu: TestbedIommu = unit!;
      assert.equal(machine.iommu, iommu);
      assert.deepEqual(machine.devices.sourceIds, [EDU_DEVFN]);
      assert.equal(machine.devices.get(EDU_DEVFN)!.name, 'edu');
      const far = machine.devices.attachDevice(requesterId(0x40, 0, 0), 'far');
      far.dma.write(0x5000n, Uint8Array.of(9));
      assert.deepEqual(machine.memory.read(0x5000, 1), Uint8Array.of(9));
      far.interrupt(0xfee00000n, 0x30);
      assert.deepEqual(
        machine.deviceInterrupts.map(({ sid, data }) => [sid, data]),
        [[0x4000, 0x30]],
      );
    });

    it('keeps refusing a vfio-user device on a taken slot of bus 0 before connecting', async () => {
      machine = new TestbedMachine({ ramBytes: 16 << 20 });
      await assert.rejects(
        machine.attachVfioUser('/nonexistent/socket'),
        (error: unknown) => error instanceof ViommuError && error.code === 'ERR_TESTBED_SLOT_TAKEN',
      );
    });
  });
});
