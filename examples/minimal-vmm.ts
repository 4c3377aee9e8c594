/**
 * A minimal VMM that embeds the VT-d unit with its own guest RAM and its own MMIO dispatch (no part of viommu's
 * testbed): it maps the unit's register window, puts a device at 01:00.0 behind it, plays the guest driver
 * (root table, context entry, one page mapped, translation on, all from the field tables), and lets the device do
 * a translated DMA and a faulting one. `node dist/examples/minimal-vmm.js`; docs/embedding.md walks through it.
 *
 * In your own project the imports read `from 'viommu/vtd'`, `'viommu/vmm'` and `'viommu/memory'`: the three
 * files imported here are exactly those entry points.
 */
import {
  CAP_FIELDS,
  CCMD_FIELDS,
  EVENT_CONTROL_FIELDS,
  FRCD_HI_FIELDS,
  FRCD_LO_FIELDS,
  FSTS_FIELDS,
  GCMD_FIELDS,
  GSTS_FIELDS,
  IOTLB_FIELDS,
  LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY,
  MSI_ADDRESS_FIELDS,
  MSI_DATA_FIELDS,
  RTADDR_FIELDS,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
  VtdUnit,
  decodeBig,
  describeFaultReason,
  encodeBig,
  registerOffset,
  type RegisterName,
  type Field,
  type FieldTable,
} from '../lib/api/vtd';
import { DeviceRegistry, formatRequesterId, registerWindow, requesterId, splitRequesterId, type RegisterWindow } from '../lib/api/vmm';
import { DmaFault, GuestMemory, INTERRUPT_WINDOW_START, PAGE_BYTES as PAGE, SharedRegion } from '../lib/memory';
const RAM_BYTES = 16 << 20;
/** Where this VMM puts the unit's registers (q35's choice; your ACPI DMAR table names it). */
const DMAR_BASE = 0xfed90000;

// ---- the VMM: guest RAM, an MMIO dispatch of its own, the unit and its devices ----

/** The VMM's own MMIO dispatch: a list of windows, each with a handler taking offsets into it. */
class Mmio {
  private readonly windows: { name: string; base: number; handler: RegisterWindow }[] = [];

  map(name: string, base: number, handler: RegisterWindow): void {
    this.windows.push({ name, base, handler });
  }

  find(address: number, size: number): { handler: RegisterWindow; offset: number } | undefined {
    const window = this.windows.find((w) => address >= w.base && address + size <= w.base + w.handler.size);
    return window && { handler: window.handler, offset: address - window.base };
  }
}

/** The vCPU's memory accesses, as a VMM handles them: RAM first, then MMIO windows, else nothing. */
class Cpu {
  constructor(
    private readonly memory: GuestMemory,
    private readonly mmio: Mmio,
  ) {}

  read(address: number, size: 4 | 8): bigint {
    const target = this.mmio.find(address, size);
    if (target) return target.handler.read(target.offset, size);
    const bytes = this.memory.read(address, size);
    return bytes.reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n);
  }

  write(address: number, size: 4 | 8, value: bigint): void {
    const target = this.mmio.find(address, size);
    if (target) return target.handler.write(target.offset, size, value);
    this.memory.write(
      address,
      Uint8Array.from({ length: size }, (_, i) => Number((value >> BigInt(8 * i)) & 0xffn)),
    );
  }
}

export function runMinimalVmm(print: (line: string) => void): boolean {
  const hex = (value: number | bigint): string => `0x${value.toString(16)}`;
  let ok = true;
  const check = (condition: boolean, what: string): void => {
    if (!condition) {
      ok = false;
      print(`CHECK FAILED: ${what}`);
    }
  };

  const ram = SharedRegion.create('guest-ram', RAM_BYTES);
  const memory = new GuestMemory();
  memory.addSharedRegion('ram', 0, ram);
  const mmio = new Mmio();
  const cpu = new Cpu(memory, mmio);
  const delivered: string[] = [];

  // What the VMM gives the unit (an IommuHost): guest memory and an interrupt sink.
  const unit = new VtdUnit({
    memory,
    config: 'aw-bits=48',
    onInterrupt: (address, data) => {
      delivered.push(`${hex(address)}/${hex(data)}`);
      print(`cpu: MSI ${hex(address)} data ${hex(data)}`);
    },
  });
  // Its register window on the VMM's own MMIO dispatch.
  mmio.map('dmar', DMAR_BASE, registerWindow(unit));
  // A device on bus 1: the registry takes full requester ids.
  const devices = new DeviceRegistry({ memory, iommu: unit });
  const nic = devices.attachDevice(requesterId(1, 0, 0), 'nic');
  const nicName = formatRequesterId(nic.sid);
  print(`vmm: ${RAM_BYTES >> 20} MiB of guest RAM, VT-d registers at ${hex(DMAR_BASE)}, '${nic.name}' at ${nicName}`);

  // ---- the guest driver: everything below goes through the vCPU's accesses ----

  const reg = (name: RegisterName): number => DMAR_BASE + registerOffset(name);
  /** Writes a structure (its encoded value, qword by qword) into guest RAM. */
  const writeStructure = <N extends string>(address: number, table: FieldTable<N>, values: Partial<Record<N, bigint | number>>): void => {
    const value = encodeBig(table, values);
    for (let q = 0; q < table.sizeBits / 64; q++) cpu.write(address + 8 * q, 8, BigInt.asUintN(64, value >> BigInt(64 * q)));
  };
  /** Polls a one-bit field until it reads `want`, as a driver does (bounded, so a unit that never answers fails the run). */
  const waitFor = (register: RegisterName, field: Field, want: bigint): void => {
    const size = field.msb < 32 ? 4 : 8;
    for (let polls = 0; polls < 1000; polls++) if (((cpu.read(reg(register), size) >> BigInt(field.lsb)) & 1n) === want) return;
    check(false, `${register}.${field.name} never became ${want}`);
  };

  const cap = decodeBig(CAP_FIELDS, cpu.read(reg('CAP'), 8));
  const fourLevel = ((cap.SAGAW >> 2n) & 1n) === 1n;
  check(fourLevel, 'the unit offers 4-level (48-bit) second-stage tables');
  print(`guest: CAP SAGAW ${hex(cap.SAGAW)} (4-level: ${fourLevel ? 'yes' : 'no'}), ${cap.NFR + 1n} fault record(s) at ${hex(cap.FRO * 16n)}`);

  // Tables in guest RAM: root, one context table, a 4-level second-stage walk mapping one page.
  const root = 0x100000;
  const contextTable = root + PAGE;
  const [pml4, pdpt, pd, pt] = [2, 3, 4, 5].map((n) => root + n * PAGE) as [number, number, number, number];
  const buffer = 0x200000;
  const iova = 0x4000_0000n;
  const index = (level: number): number => Number((iova >> BigInt(12 + 9 * (level - 1))) & 511n);
  const { bus, devfn } = splitRequesterId(nic.sid);
  const rw = { R: 1, W: 1 } as const;
  writeStructure(root + bus * 16, LEGACY_ROOT_ENTRY, { P: 1, CTP: contextTable / PAGE });
  writeStructure(contextTable + devfn * 16, LEGACY_CONTEXT_ENTRY, { P: 1, TT: 0, SLPTPTR: pml4 / PAGE, AW: 2, DID: 1 });
  writeStructure(pml4 + 8 * index(4), SECOND_STAGE_TOP_ENTRY, { ...rw, ADDR: pdpt / PAGE });
  writeStructure(pdpt + 8 * index(3), SECOND_STAGE_TABLE_ENTRY, { ...rw, ADDR: pd / PAGE });
  writeStructure(pd + 8 * index(2), SECOND_STAGE_TABLE_ENTRY, { ...rw, ADDR: pt / PAGE });
  writeStructure(pt + 8 * index(1), SECOND_STAGE_4K_LEAF, { ...rw, ADDR: buffer / PAGE });
  print(`guest: root table ${hex(root)}, context entry for ${nicName} (domain 1), IOVA ${hex(iova)} -> ${hex(buffer)} read/write`);

  // Fault events to vector 0x31 of CPU 0, unmasked.
  cpu.write(reg('FEDATA'), 4, encodeBig(MSI_DATA_FIELDS, { IMD: 0x31 }));
  cpu.write(reg('FEADDR'), 4, encodeBig(MSI_ADDRESS_FIELDS, { MA: INTERRUPT_WINDOW_START / 4 }));
  cpu.write(reg('FECTL'), 4, encodeBig(EVENT_CONTROL_FIELDS, { IM: 0 }));

  // Root table pointer, global context-cache and IOTLB invalidation (register based), then translation on.
  cpu.write(reg('RTADDR'), 8, encodeBig(RTADDR_FIELDS, { RTA: root / PAGE, TTM: 0 }));
  cpu.write(reg('GCMD'), 4, encodeBig(GCMD_FIELDS, { SRTP: 1 }));
  waitFor('GSTS', GSTS_FIELDS.f.RTPS, 1n);
  cpu.write(reg('CCMD'), 8, encodeBig(CCMD_FIELDS, { ICC: 1, CIRG: 1 }));
  waitFor('CCMD', CCMD_FIELDS.f.ICC, 0n);
  cpu.write(reg('IOTLB'), 8, encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 1 }));
  waitFor('IOTLB', IOTLB_FIELDS.f.IVT, 0n);
  cpu.write(reg('GCMD'), 4, encodeBig(GCMD_FIELDS, { TE: 1 }));
  waitFor('GSTS', GSTS_FIELDS.f.TES, 1n);
  const gsts = decodeBig(GSTS_FIELDS, cpu.read(reg('GSTS'), 4));
  print(
    `guest: GSTS ${Object.entries(gsts)
      .filter(([, v]) => v !== 0n)
      .map(([name]) => name)
      .join(' ')}`,
  );

  // ---- the device: DMA through its DmaSpace, as a device model (or a vfio-user client) does ----

  const text = new TextEncoder();
  const words = new TextDecoder();
  memory.write(buffer, text.encode('hello from the guest'));
  const into = new Uint8Array(20);
  nic.dma.read(iova, into);
  print(`device ${nicName}: read "${words.decode(into)}" at IOVA ${hex(iova)}`);
  check(words.decode(into) === 'hello from the guest', 'the translated read sees the guest buffer');

  nic.dma.write(iova + 0x100n, text.encode('hello from the device'));
  const landed = words.decode(memory.read(buffer + 0x100, 21));
  print(`device ${nicName}: wrote at IOVA ${hex(iova + 0x100n)}; the guest reads "${landed}" at ${hex(buffer + 0x100)}`);
  check(landed === 'hello from the device', 'the translated write lands in the guest buffer');

  const stray = iova + BigInt(PAGE);
  try {
    nic.dma.write(stray, Uint8Array.of(1, 2, 3, 4));
    check(false, 'a write to an unmapped IOVA faults');
  } catch (error) {
    if (!(error instanceof DmaFault)) throw error;
    print(`device ${nicName}: write at IOVA ${hex(stray)} refused (errno ${error.errno}): ${error.reason}`);
  }
  check(delivered.length === 1, 'the fault raised one fault event');

  // The guest's fault handler: FSTS, then the record FSTS.FRI names, then clear it.
  const fsts = decodeBig(FSTS_FIELDS, cpu.read(reg('FSTS'), 4));
  const record = DMAR_BASE + Number(cap.FRO) * 16 + Number(fsts.FRI) * 16;
  const lo = decodeBig(FRCD_LO_FIELDS, cpu.read(record, 8));
  const hi = decodeBig(FRCD_HI_FIELDS, cpu.read(record + 8, 8));
  print(
    `guest: FSTS PPF ${fsts.PPF}, FRCD${fsts.FRI}: ${formatRequesterId(Number(hi.SID))} ${hi.T === 0n ? 'write' : 'read'} at ${hex(lo.FI * BigInt(PAGE))}, reason ${describeFaultReason(Number(hi.FR))}`,
  );
  check(hi.F === 1n && Number(hi.SID) === nic.sid && lo.FI * BigInt(PAGE) === stray, 'the fault record names the device and the page');
  cpu.write(record + 8, 8, encodeBig(FRCD_HI_FIELDS, { F: 1 }));
  print(`guest: record cleared, FSTS PPF ${decodeBig(FSTS_FIELDS, cpu.read(reg('FSTS'), 4)).PPF}`);

  // The device's MSI goes through the unit too (interrupt remapping is off here, so it passes unchanged).
  const msi = nic.interrupt(0xfee01000n, 0x41);
  print(
    `device ${nicName}: MSI ${hex(msi.address)} data ${hex(msi.data)} -> ${(msi.result as { ok?: boolean } | undefined)?.ok ? 'delivered' : 'blocked'}`,
  );
  check(delivered.length === 2, 'the device MSI reached the CPU');

  ram.close();
  print(ok ? 'ok' : 'FAILED');
  return ok;
}

if (require.main === module) {
  process.exitCode = runMinimalVmm((line) => console.log(line)) ? 0 : 1;
}
