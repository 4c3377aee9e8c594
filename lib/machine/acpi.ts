/** The ACPI tables a guest reads to find its CPUs, its I/O APIC and the VT-d unit: RSDP, XSDT/RSDT, MADT and DMAR. */

import { ViommuError } from '../errors';
import { INTERRUPT_WINDOW_START, PAGE_BYTES } from '../memory/geometry';
import type { VtdConfig } from '../vtd/config';

export interface AcpiPlatform {
  /** Local APIC ids of the CPUs, in order (the BSP first). */
  readonly cpuApicIds: readonly number[];
  readonly ioapic: {
    readonly id: number;
    readonly address: number;
    readonly gsiBase: number;
    readonly bus: number;
    readonly device: number;
    readonly function: number;
  };
  readonly dmar: {
    readonly registerBase: number;
    readonly addressWidthBits: number;
    readonly interruptRemapping: boolean;
    readonly x2apicOptOut: boolean;
  };
}

export interface AcpiTableImage {
  /** Guest-physical address of the blob's first byte (the RSDP). */
  readonly address: number;
  readonly bytes: Uint8Array;
  /** Each table, for reports and tests: its signature, where it landed and its length. */
  readonly tables: readonly { readonly signature: string; readonly address: number; readonly length: number }[];
}

/** Where the machine wired the I/O APIC and the unit; the unit's configuration supplies the rest of the DMAR. */
export interface AcpiMachineWiring {
  readonly cpuApicIds: readonly number[];
  readonly ioapic: AcpiPlatform['ioapic'];
  readonly iommuRegisterBase: number;
}

// ---- layouts: each structure described once, by byte offset, as the ACPI and VT-d specifications draw it ----

interface ByteFieldSpec<N extends string = string> {
  readonly name: N;
  readonly offset: number;
  readonly size: number;
  /**
   * 'text': ASCII, space-padded (signatures and OEM strings); 'reserved': always zero, listed so the table
   * accounts for every byte; otherwise a little-endian unsigned integer.
   */
  readonly kind?: 'text' | 'reserved';
}

type FieldValue = number | bigint | string;
type FieldValues<N extends string> = { readonly [K in N]?: FieldValue };

interface ByteLayout<N extends string> {
  readonly name: string;
  readonly size: number;
  readonly fields: { readonly [K in N]: ByteFieldSpec<K> };
  /** Writes the structure at `at`; fields not given (reserved ones among them) stay zero. */
  encode(into: Uint8Array, at: number, values: FieldValues<N>): void;
}

function layoutError(message: string): ViommuError {
  return new ViommuError('ERR_ACPI_LAYOUT', message);
}

/**
 * Checks the field table (inside `size`, no overlaps) and derives its encoder. `constants` are values the
 * structure always carries, such as a sub-structure's type and fixed length, so callers cannot get them wrong.
 */
function defineLayout<const F extends readonly ByteFieldSpec[]>(
  name: string,
  size: number,
  specs: F,
  constants: FieldValues<F[number]['name']> = {},
): ByteLayout<F[number]['name']> {
  type N = F[number]['name'];
  const owner = new Array<string | undefined>(size);
  const fields = {} as Record<string, ByteFieldSpec>;
  for (const spec of specs) {
    if (spec.offset < 0 || spec.size < 1 || spec.offset + spec.size > size || (spec.kind === undefined && spec.size > 8)) {
      throw layoutError(`${name}.${spec.name}: ${spec.size} bytes at ${spec.offset} do not fit the ${size}-byte structure`);
    }
    for (let i = spec.offset; i < spec.offset + spec.size; i++) {
      if (owner[i] !== undefined) throw layoutError(`${name}.${spec.name} overlaps ${name}.${owner[i]} at byte ${i}`);
      owner[i] = spec.name;
    }
    fields[spec.name] = spec;
  }
  const unaccounted = owner.findIndex((o) => o === undefined);
  if (unaccounted >= 0) throw layoutError(`${name}: no field covers byte ${unaccounted}; list reserved bytes too`);
  const encode = (into: Uint8Array, at: number, values: FieldValues<N>): void => {
    const merged: Record<string, FieldValue | undefined> = { ...values, ...constants };
    for (const [fieldName, value] of Object.entries(merged)) {
      if (value === undefined) continue;
      const spec = fields[fieldName];
      if (!spec) throw layoutError(`${name} has no field ${fieldName}`);
      if (spec.kind === 'reserved') throw layoutError(`${name}.${fieldName} is reserved and stays zero`);
      if (spec.kind === 'text') writeText(into, at + spec.offset, spec, value, name);
      else writeUnsigned(into, at + spec.offset, spec, value, name);
    }
  };
  return { name, size, fields: fields as ByteLayout<N>['fields'], encode };
}

function writeText(into: Uint8Array, at: number, spec: ByteFieldSpec, value: FieldValue, structName: string): void {
  if (typeof value !== 'string' || value.length > spec.size || !/^[\x20-\x7e]*$/.test(value)) {
    throw layoutError(`${structName}.${spec.name} takes up to ${spec.size} printable ASCII characters, got ${JSON.stringify(value)}`);
  }
  for (let i = 0; i < spec.size; i++) into[at + i] = i < value.length ? value.charCodeAt(i) : 0x20;
}

function writeUnsigned(into: Uint8Array, at: number, spec: ByteFieldSpec, value: FieldValue, structName: string): void {
  if (typeof value === 'string' || (typeof value === 'number' && !Number.isSafeInteger(value))) {
    throw layoutError(`${structName}.${spec.name} takes an integer, got ${String(value)}`);
  }
  let rest = BigInt(value);
  if (rest < 0n || rest >> BigInt(spec.size * 8) !== 0n) {
    throw layoutError(`${structName}.${spec.name}: ${String(value)} does not fit ${spec.size} byte(s)`);
  }
  for (let i = 0; i < spec.size; i++, rest >>= 8n) into[at + i] = Number(rest & 0xffn);
}

/** ACPI 6.5 table 5.4: the header every system description table starts with. */
const HEADER_FIELDS = [
  { name: 'Signature', offset: 0, size: 4, kind: 'text' },
  { name: 'Length', offset: 4, size: 4 },
  { name: 'Revision', offset: 8, size: 1 },
  { name: 'Checksum', offset: 9, size: 1 },
  { name: 'OemId', offset: 10, size: 6, kind: 'text' },
  { name: 'OemTableId', offset: 16, size: 8, kind: 'text' },
  { name: 'OemRevision', offset: 24, size: 4 },
  { name: 'CreatorId', offset: 28, size: 4, kind: 'text' },
  { name: 'CreatorRevision', offset: 32, size: 4 },
] as const;
const HEADER_SIZE = 36;

/** ACPI 6.5 table 5.3. The first checksum covers only the ACPI 1.0 part, so 1.0 readers can still verify it. */
const RSDP = defineLayout(
  'RSDP',
  36,
  [
    { name: 'Signature', offset: 0, size: 8, kind: 'text' },
    { name: 'Checksum', offset: 8, size: 1 },
    { name: 'OemId', offset: 9, size: 6, kind: 'text' },
    { name: 'Revision', offset: 15, size: 1 },
    { name: 'RsdtAddress', offset: 16, size: 4 },
    { name: 'Length', offset: 20, size: 4 },
    { name: 'XsdtAddress', offset: 24, size: 8 },
    { name: 'ExtendedChecksum', offset: 32, size: 1 },
    { name: 'Reserved', offset: 33, size: 3, kind: 'reserved' },
  ],
  { Signature: 'RSD PTR ', Revision: 2, Length: 36 },
);
const RSDP_V1_LENGTH = 20;

/** ACPI 6.5 table 5.9: the header, then one 64-bit table address per entry. */
const XSDT = defineLayout('XSDT', HEADER_SIZE, HEADER_FIELDS, { Signature: 'XSDT', Revision: 1 });
const XSDT_ENTRY = defineLayout('XSDT entry', 8, [{ name: 'Address', offset: 0, size: 8 }]);
/**
 * ACPI 6.5 table 5.7: the same list with 32-bit addresses. ACPI 2.0 readers ignore it, but kvm-unit-tests'
 * find_acpi_table_addr (lib/x86/acpi.c) follows only RsdtAddress, so the guest this machine boots needs it.
 */
const RSDT = defineLayout('RSDT', HEADER_SIZE, HEADER_FIELDS, { Signature: 'RSDT', Revision: 1 });
const RSDT_ENTRY = defineLayout('RSDT entry', 4, [{ name: 'Address', offset: 0, size: 4 }]);

/** ACPI 6.5 table 5.19. Revision 1: every entry used here has had the same layout since ACPI 1.0. */
const MADT = defineLayout('MADT', 44, [...HEADER_FIELDS, { name: 'LocalApicAddress', offset: 36, size: 4 }, { name: 'Flags', offset: 40, size: 4 }], {
  Signature: 'APIC',
  Revision: 1,
});
const MADT_FLAG_PCAT_COMPAT = 0x1;
/** ACPI 6.5 table 5.23. */
const MADT_LOCAL_APIC = defineLayout(
  'MADT Processor Local APIC',
  8,
  [
    { name: 'Type', offset: 0, size: 1 },
    { name: 'Length', offset: 1, size: 1 },
    { name: 'ProcessorUid', offset: 2, size: 1 },
    { name: 'ApicId', offset: 3, size: 1 },
    { name: 'Flags', offset: 4, size: 4 },
  ],
  { Type: 0, Length: 8 },
);
const LOCAL_APIC_ENABLED = 0x1;
/** ACPI 6.5 table 5.25. */
const MADT_IOAPIC = defineLayout(
  'MADT I/O APIC',
  12,
  [
    { name: 'Type', offset: 0, size: 1 },
    { name: 'Length', offset: 1, size: 1 },
    { name: 'IoApicId', offset: 2, size: 1 },
    { name: 'Reserved', offset: 3, size: 1, kind: 'reserved' },
    { name: 'Address', offset: 4, size: 4 },
    { name: 'GsiBase', offset: 8, size: 4 },
  ],
  { Type: 1, Length: 12 },
);
/** ACPI 6.5 table 5.26. */
const MADT_INTERRUPT_OVERRIDE = defineLayout(
  'MADT Interrupt Source Override',
  10,
  [
    { name: 'Type', offset: 0, size: 1 },
    { name: 'Length', offset: 1, size: 1 },
    { name: 'Bus', offset: 2, size: 1 },
    { name: 'Source', offset: 3, size: 1 },
    { name: 'GlobalIrq', offset: 4, size: 4 },
    { name: 'Flags', offset: 8, size: 2 },
  ],
  { Type: 2, Length: 10, Bus: 0 },
);

/** VT-d 4.1 section 8.1. */
const DMAR = defineLayout(
  'DMAR',
  48,
  [
    ...HEADER_FIELDS,
    { name: 'HostAddressWidth', offset: 36, size: 1 },
    { name: 'Flags', offset: 37, size: 1 },
    { name: 'Reserved', offset: 38, size: 10, kind: 'reserved' },
  ],
  { Signature: 'DMAR', Revision: 1 },
);
const DMAR_FLAG_INTR_REMAP = 0x1;
const DMAR_FLAG_X2APIC_OPT_OUT = 0x2;
/** VT-d 4.1 section 8.3. Size stays 0: the unit's registers fit one 4 KiB page (2^0 pages). */
const DMAR_DRHD = defineLayout(
  'DMAR DRHD',
  16,
  [
    { name: 'Type', offset: 0, size: 2 },
    { name: 'Length', offset: 2, size: 2 },
    { name: 'Flags', offset: 4, size: 1 },
    { name: 'Size', offset: 5, size: 1 },
    { name: 'Segment', offset: 6, size: 2 },
    { name: 'RegisterBase', offset: 8, size: 8 },
  ],
  { Type: 0 },
);
const DRHD_FLAG_INCLUDE_PCI_ALL = 0x1;
/** VT-d 4.1 section 8.3.1: a scope header, then one (device, function) pair per bridge hop. */
const DMAR_DEVICE_SCOPE = defineLayout('DMAR Device Scope', 6, [
  { name: 'Type', offset: 0, size: 1 },
  { name: 'Length', offset: 1, size: 1 },
  { name: 'Flags', offset: 2, size: 1 },
  { name: 'Reserved', offset: 3, size: 1, kind: 'reserved' },
  { name: 'EnumerationId', offset: 4, size: 1 },
  { name: 'StartBus', offset: 5, size: 1 },
]);
const DMAR_SCOPE_PATH = defineLayout('DMAR Device Scope path entry', 2, [
  { name: 'Device', offset: 0, size: 1 },
  { name: 'Function', offset: 1, size: 1 },
]);
const DEVICE_SCOPE_IOAPIC = 3;

const OEM = { OemId: 'VIOMMU', OemTableId: 'VIOMMU  ', OemRevision: 1, CreatorId: 'VIOM', CreatorRevision: 1 } as const;

/** The architectural xAPIC MMIO base, where the interrupt window starts; x2APIC guests ignore it, but the field is mandatory. */
const LOCAL_APIC_ADDRESS = INTERRUPT_WINDOW_START;
/**
 * On PCs the 8254 timer's output reaches the I/O APIC on pin 2 (pin 0 carries the 8259's ExtINT), so ISA IRQ 0
 * needs an override; QEMU declares the same one. Flags 0: polarity and trigger conform to the ISA bus.
 */
const TIMER_OVERRIDE = { isaIrq: 0, ioapicPin: 2, flags: 0 } as const;

const TABLE_ALIGNMENT = 16;
const U32_LIMIT = 2 ** 32;
/** One Processor Local APIC entry per CPU has an 8-bit APIC id; 0xff is the xAPIC broadcast id, never a CPU's. */
const MAX_XAPIC_ID = 0xfe;
/** The widths VT-d page tables can cover: 3-, 4- and 5-level (SAGAW values). */
const ADDRESS_WIDTHS: readonly number[] = [39, 48, 57];

// ---- encoding ----

/** Sums to zero with the other bytes; ACPI readers reject a table whose bytes do not add up to 0 mod 256. */
function checksumByte(bytes: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum += bytes[i]!;
  return (0x100 - (sum & 0xff)) & 0xff;
}

function piece<N extends string>(layout: ByteLayout<N>, values: FieldValues<N>): Uint8Array {
  const bytes = new Uint8Array(layout.size);
  layout.encode(bytes, 0, values);
  return bytes;
}

function concat(pieces: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A system description table: its fixed part with Length and Checksum filled in over the whole table. */
function table<N extends string>(layout: ByteLayout<N | 'Length' | 'Checksum'>, values: FieldValues<N>, body: readonly Uint8Array[]): Uint8Array {
  const bodyBytes = concat(body);
  const bytes = new Uint8Array(layout.size + bodyBytes.length);
  layout.encode(bytes, 0, { ...values, ...OEM, Length: bytes.length } as FieldValues<N | 'Length' | 'Checksum'>);
  bytes.set(bodyBytes, layout.size);
  bytes[layout.fields.Checksum.offset] = checksumByte(bytes, 0, bytes.length);
  return bytes;
}

function buildMadt(platform: AcpiPlatform): Uint8Array {
  const { ioapic } = platform;
  return table(MADT, { LocalApicAddress: LOCAL_APIC_ADDRESS, Flags: MADT_FLAG_PCAT_COMPAT }, [
    ...platform.cpuApicIds.map((apicId, uid) => piece(MADT_LOCAL_APIC, { ProcessorUid: uid, ApicId: apicId, Flags: LOCAL_APIC_ENABLED })),
    piece(MADT_IOAPIC, { IoApicId: ioapic.id, Address: ioapic.address, GsiBase: ioapic.gsiBase }),
    piece(MADT_INTERRUPT_OVERRIDE, {
      Source: TIMER_OVERRIDE.isaIrq,
      GlobalIrq: ioapic.gsiBase + TIMER_OVERRIDE.ioapicPin,
      Flags: TIMER_OVERRIDE.flags,
    }),
  ]);
}

function buildDmar(platform: AcpiPlatform): Uint8Array {
  const { dmar, ioapic } = platform;
  const path = [piece(DMAR_SCOPE_PATH, { Device: ioapic.device, Function: ioapic.function })];
  const scopeLength = DMAR_DEVICE_SCOPE.size + path.length * DMAR_SCOPE_PATH.size;
  const scope = piece(DMAR_DEVICE_SCOPE, {
    Type: DEVICE_SCOPE_IOAPIC,
    Length: scopeLength,
    EnumerationId: ioapic.id,
    StartBus: ioapic.bus,
  });
  const drhd = piece(DMAR_DRHD, {
    Length: DMAR_DRHD.size + scopeLength,
    Flags: DRHD_FLAG_INCLUDE_PCI_ALL,
    Size: 0,
    Segment: 0,
    RegisterBase: dmar.registerBase,
  });
  const flags = (dmar.interruptRemapping ? DMAR_FLAG_INTR_REMAP : 0) | (dmar.x2apicOptOut ? DMAR_FLAG_X2APIC_OPT_OUT : 0);
  // The field holds the width minus one (VT-d 8.1), so a 39-bit platform writes 38.
  return table(DMAR, { HostAddressWidth: dmar.addressWidthBits - 1, Flags: flags }, [drhd, scope, ...path]);
}

function buildXsdt(entries: readonly number[]): Uint8Array {
  return table(
    XSDT,
    {},
    entries.map((address) => piece(XSDT_ENTRY, { Address: address })),
  );
}

function buildRsdt(entries: readonly number[]): Uint8Array {
  return table(
    RSDT,
    {},
    entries.map((address) => piece(RSDT_ENTRY, { Address: address })),
  );
}

function buildRsdp(xsdtAddress: number, rsdtAddress: number): Uint8Array {
  const bytes = new Uint8Array(RSDP.size);
  RSDP.encode(bytes, 0, { OemId: OEM.OemId, RsdtAddress: rsdtAddress, XsdtAddress: xsdtAddress });
  bytes[RSDP.fields.Checksum.offset] = checksumByte(bytes, 0, RSDP_V1_LENGTH);
  bytes[RSDP.fields.ExtendedChecksum.offset] = checksumByte(bytes, 0, RSDP.size);
  return bytes;
}

const alignUp = (value: number, alignment: number): number => Math.ceil(value / alignment) * alignment;
const hex = (value: number): string => `0x${value.toString(16)}`;

// ---- validation ----

function invalid(code: string, message: string): ViommuError {
  return new ViommuError(code, message);
}

function requireInteger(value: number, min: number, maxExclusive: number, code: string, what: string, advice: string): void {
  if (!Number.isSafeInteger(value) || value < min || value >= maxExclusive) {
    throw invalid(code, `${what} is ${String(value)}; ${advice}`);
  }
}

function validate(platform: AcpiPlatform, address: number): void {
  if (!Number.isSafeInteger(address) || address < 0 || address % TABLE_ALIGNMENT !== 0) {
    throw invalid(
      'ERR_ACPI_ADDRESS',
      `ACPI tables address ${String(address)} must be a non-negative multiple of 16, because guests look for the RSDP only on 16-byte boundaries (e.g. 0xe0000)`,
    );
  }
  const ids = platform.cpuApicIds;
  if (ids.length === 0) throw invalid('ERR_ACPI_CPUS', "cpuApicIds is empty; list at least the BSP's local APIC id");
  const seen = new Set<number>();
  for (const id of ids) {
    requireInteger(
      id,
      0,
      MAX_XAPIC_ID + 1,
      'ERR_ACPI_CPU_APIC_ID',
      `CPU local APIC id ${String(id)}`,
      `use ids 0..${MAX_XAPIC_ID} (0xff is the broadcast id; larger ids would need x2APIC entries, which this MADT does not emit)`,
    );
    if (seen.has(id)) throw invalid('ERR_ACPI_CPU_APIC_ID', `CPU local APIC id ${id} appears twice in cpuApicIds; give each CPU its own id`);
    seen.add(id);
  }
  const { ioapic, dmar } = platform;
  requireInteger(ioapic.id, 0, 0x100, 'ERR_ACPI_IOAPIC', 'I/O APIC id', 'use 0..255');
  requireInteger(
    ioapic.address,
    0,
    U32_LIMIT,
    'ERR_ACPI_IOAPIC',
    'I/O APIC address',
    'the MADT holds a 32-bit address; place it below 4 GiB (e.g. 0xfec00000)',
  );
  requireInteger(ioapic.gsiBase, 0, U32_LIMIT - TIMER_OVERRIDE.ioapicPin, 'ERR_ACPI_IOAPIC', 'I/O APIC GSI base', 'use a 32-bit value (usually 0)');
  requireInteger(ioapic.bus, 0, 0x100, 'ERR_ACPI_IOAPIC', 'I/O APIC source-id bus', 'use 0..255 (QEMU uses 0xff)');
  requireInteger(ioapic.device, 0, 32, 'ERR_ACPI_IOAPIC', 'I/O APIC source-id device', 'use 0..31');
  requireInteger(ioapic.function, 0, 8, 'ERR_ACPI_IOAPIC', 'I/O APIC source-id function', 'use 0..7');
  if (!ADDRESS_WIDTHS.includes(dmar.addressWidthBits)) {
    throw invalid(
      'ERR_ACPI_ADDRESS_WIDTH',
      `DMAR address width ${String(dmar.addressWidthBits)} bits is not one VT-d page tables cover; use ${ADDRESS_WIDTHS.join(', ')} (the unit's aw-bits)`,
    );
  }
  if (!Number.isSafeInteger(dmar.registerBase) || dmar.registerBase <= 0 || dmar.registerBase % PAGE_BYTES !== 0) {
    throw invalid(
      'ERR_ACPI_REGISTER_BASE',
      `DMAR register base ${String(dmar.registerBase)} must be a non-zero 4 KiB-aligned address (e.g. 0xfed90000), where the unit's registers are mapped`,
    );
  }
}

// ---- the API ----

/**
 * Lays out RSDP then XSDT, RSDT, MADT, DMAR from `address` (16-byte aligned, e.g. 0xe0000 in the BIOS area where
 * a guest scans for "RSD PTR "), each table on a 16-byte boundary.
 */
export function buildAcpiTables(platform: AcpiPlatform, address: number): AcpiTableImage {
  validate(platform, address);
  const madt = buildMadt(platform);
  const dmar = buildDmar(platform);
  // The roots list MADT and DMAR; their sizes fix where everything after them lands.
  const rootEntryCount = 2;
  const xsdtAddress = alignUp(address + RSDP.size, TABLE_ALIGNMENT);
  const rsdtAddress = alignUp(xsdtAddress + XSDT.size + rootEntryCount * XSDT_ENTRY.size, TABLE_ALIGNMENT);
  const madtAddress = alignUp(rsdtAddress + RSDT.size + rootEntryCount * RSDT_ENTRY.size, TABLE_ALIGNMENT);
  const dmarAddress = alignUp(madtAddress + madt.length, TABLE_ALIGNMENT);
  const end = dmarAddress + dmar.length;
  if (end > U32_LIMIT) {
    throw invalid(
      'ERR_ACPI_ADDRESS',
      `ACPI tables at ${hex(address)} would end at ${hex(end)}, above 4 GiB; place them lower (e.g. 0xe0000), since the RSDT holds 32-bit addresses`,
    );
  }
  const entries = [madtAddress, dmarAddress];
  const placed = [
    { signature: 'RSD PTR ', address, bytes: buildRsdp(xsdtAddress, rsdtAddress) },
    { signature: 'XSDT', address: xsdtAddress, bytes: buildXsdt(entries) },
    { signature: 'RSDT', address: rsdtAddress, bytes: buildRsdt(entries) },
    { signature: 'APIC', address: madtAddress, bytes: madt },
    { signature: 'DMAR', address: dmarAddress, bytes: dmar },
  ];
  const bytes = new Uint8Array(end - address);
  for (const t of placed) bytes.set(t.bytes, t.address - address);
  return { address, bytes, tables: placed.map((t) => ({ signature: t.signature, address: t.address, length: t.bytes.length })) };
}

/**
 * The platform description for a unit configured like QEMU's intel-iommu: aw-bits is the host address width,
 * and without eim the firmware asks the guest to stay in xAPIC mode, since interrupt remapping then cannot
 * address x2APIC ids. X2APIC_OPT_OUT is only defined alongside INTR_REMAP (VT-d 8.1), so it follows intremap.
 */
export function acpiPlatformFromUnit(unit: Pick<VtdConfig, 'aw-bits' | 'intremap' | 'eim'>, machine: AcpiMachineWiring): AcpiPlatform {
  return {
    cpuApicIds: machine.cpuApicIds,
    ioapic: machine.ioapic,
    dmar: {
      registerBase: machine.iommuRegisterBase,
      addressWidthBits: unit['aw-bits'],
      interruptRemapping: unit.intremap,
      x2apicOptOut: unit.intremap && !unit.eim,
    },
  };
}
