/** The machine's ACPI tables: checksums, the guest's RSDP scan and pointer chain, iasl's reading of every field, bad input. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acpiPlatformFromUnit, buildAcpiTables, type AcpiPlatform, type AcpiTableImage } from '../../lib/machine/acpi';
import { ViommuError } from '../../lib/errors';
import { vtdConfigFromString } from '../../lib/vtd/config';

const BIOS_AREA = 0xe0000;
const BIOS_AREA_END = 0x100000;

/** Wired like QEMU's q35 with intel-iommu,intremap=on: I/O APIC 0 at its pseudo source-id ff:00.0. */
const Q35_LIKE: AcpiPlatform = {
  cpuApicIds: [0, 1],
  ioapic: { id: 0, address: 0xfec00000, gsiBase: 0, bus: 0xff, device: 0, function: 0 },
  dmar: { registerBase: 0xfed90000, addressWidthBits: 39, interruptRemapping: true, x2apicOptOut: true },
};

/** Every value away from the q35 defaults, so a field read from the wrong place shows. */
const UNUSUAL: AcpiPlatform = {
  cpuApicIds: [6, 0, 2, 0xfe],
  ioapic: { id: 9, address: 0xfec01000, gsiBase: 24, bus: 0xf0, device: 0x1f, function: 7 },
  dmar: { registerBase: 0x7_fed9_0000, addressWidthBits: 48, interruptRemapping: false, x2apicOptOut: false },
};

function tableBytes(image: AcpiTableImage, signature: string): Uint8Array {
  const table = image.tables.find((t) => t.signature === signature);
  assert.ok(table, `no ${signature} in ${image.tables.map((t) => t.signature).join(', ')}`);
  const start = table.address - image.address;
  return image.bytes.subarray(start, start + table.length);
}

const byteSum = (bytes: Uint8Array): number => bytes.reduce((sum, b) => (sum + b) & 0xff, 0);
const u32 = (bytes: Uint8Array, at: number): number => new DataView(bytes.buffer, bytes.byteOffset).getUint32(at, true);
const u64 = (bytes: Uint8Array, at: number): number => Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(at, true));
const ascii = (bytes: Uint8Array, at: number, length: number): string => Buffer.from(bytes.subarray(at, at + length)).toString('latin1');
/** How iasl prints a byte and a 32-bit value. */
const hex2 = (value: number): string => value.toString(16).toUpperCase().padStart(2, '0');
const hex8 = (value: number): string => value.toString(16).toUpperCase().padStart(8, '0');

/** The guest's view: low memory with the blob copied in, searched the way kvm-unit-tests and Linux search it. */
function guestMemory(image: AcpiTableImage): Uint8Array {
  const memory = new Uint8Array(BIOS_AREA_END);
  memory.set(image.bytes, image.address);
  return memory;
}

function findRsdp(memory: Uint8Array): number | undefined {
  for (let at = BIOS_AREA; at < BIOS_AREA_END; at += 16) {
    if (ascii(memory, at, 8) === 'RSD PTR ') return at;
  }
  return undefined;
}

/** Follows a root table's entries (4- or 8-byte) to the signatures they point at. */
function rootEntries(memory: Uint8Array, rootAddress: number, entrySize: 4 | 8): { signature: string; address: number }[] {
  const length = u32(memory, rootAddress + 4);
  const entries: { signature: string; address: number }[] = [];
  for (let at = rootAddress + 36; at < rootAddress + length; at += entrySize) {
    const address = entrySize === 4 ? u32(memory, at) : u64(memory, at);
    entries.push({ signature: ascii(memory, address, 4), address });
  }
  return entries;
}

function expectAcpiError(code: string, build: () => unknown, mention: RegExp): void {
  assert.throws(build, (error: unknown) => {
    assert.ok(error instanceof ViommuError, `expected a ViommuError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.match(error.message, mention);
    return true;
  });
}

const withIoapic = (change: Partial<AcpiPlatform['ioapic']>): AcpiPlatform => ({ ...Q35_LIKE, ioapic: { ...Q35_LIKE.ioapic, ...change } });
const withDmar = (change: Partial<AcpiPlatform['dmar']>): AcpiPlatform => ({ ...Q35_LIKE, dmar: { ...Q35_LIKE.dmar, ...change } });

describe('ACPI tables', () => {
  for (const [label, platform] of [
    ['q35-like', Q35_LIKE],
    ['unusual', UNUSUAL],
  ] as const) {
    describe(label, () => {
      const image = buildAcpiTables(platform, BIOS_AREA);

      it('lays out RSDP, XSDT, RSDT, MADT, DMAR in order, 16-byte aligned and without overlap, filling the blob', () => {
        assert.deepEqual(
          image.tables.map((t) => t.signature),
          ['RSD PTR ', 'XSDT', 'RSDT', 'APIC', 'DMAR'],
        );
        assert.equal(image.tables[0]!.address, BIOS_AREA);
        for (const [i, table] of image.tables.entries()) {
          assert.equal(table.address % 16, 0, `${table.signature} at ${table.address.toString(16)}`);
          const next = image.tables[i + 1];
          if (next) assert.ok(table.address + table.length <= next.address, `${table.signature} overlaps ${next.signature}`);
        }
        const last = image.tables.at(-1)!;
        assert.equal(image.bytes.length, last.address + last.length - image.address);
      });

      it('gives every table bytes that sum to 0 mod 256, and a length field equal to its length', () => {
        const rsdp = tableBytes(image, 'RSD PTR ');
        assert.equal(byteSum(rsdp.subarray(0, 20)), 0, 'ACPI 1.0 checksum over the first 20 bytes');
        assert.equal(byteSum(rsdp), 0, 'extended checksum over all 36 bytes');
        assert.equal(u32(rsdp, 20), 36);
        for (const signature of ['XSDT', 'RSDT', 'APIC', 'DMAR']) {
          const bytes = tableBytes(image, signature);
          assert.equal(byteSum(bytes), 0, `${signature} checksum`);
          assert.equal(ascii(bytes, 0, 4), signature);
          assert.equal(u32(bytes, 4), bytes.length, `${signature} length field`);
        }
      });

      it('is found by a scan of the BIOS area for "RSD PTR " on 16-byte boundaries, and its roots lead to MADT and DMAR', () => {
        const memory = guestMemory(image);
        const rsdp = findRsdp(memory);
        assert.equal(rsdp, BIOS_AREA);
        assert.equal(memory[rsdp + 15], 2, 'RSDP revision 2 (ACPI 2.0+, XSDT present)');
        const byAddress = Object.fromEntries(image.tables.map((t) => [t.signature, t.address]));
        assert.equal(u64(memory, rsdp + 24), byAddress.XSDT);
        assert.equal(u32(memory, rsdp + 16), byAddress.RSDT);
        const expected = [
          { signature: 'APIC', address: byAddress.APIC },
          { signature: 'DMAR', address: byAddress.DMAR },
        ];
        assert.deepEqual(rootEntries(memory, u64(memory, rsdp + 24), 8), expected);
        assert.deepEqual(rootEntries(memory, u32(memory, rsdp + 16), 4), expected);
      });
    });
  }

  it('is found wherever it is placed in the BIOS area', () => {
    const image = buildAcpiTables(Q35_LIKE, 0xf5a30);
    assert.equal(findRsdp(guestMemory(image)), 0xf5a30);
    assert.equal(image.address, 0xf5a30);
  });

  it('sets DMAR flag INTR_REMAP with interrupt remapping, and X2APIC_OPT_OUT only when asked', () => {
    const flags = (dmar: Partial<AcpiPlatform['dmar']>) => tableBytes(buildAcpiTables(withDmar(dmar), BIOS_AREA), 'DMAR')[37];
    assert.equal(flags({ interruptRemapping: true, x2apicOptOut: true }), 0b11);
    assert.equal(flags({ interruptRemapping: true, x2apicOptOut: false }), 0b01);
    assert.equal(flags({ interruptRemapping: false, x2apicOptOut: false }), 0b00);
  });

  describe('acpiPlatformFromUnit', () => {
    const wiring = { cpuApicIds: [0, 1], ioapic: Q35_LIKE.ioapic, iommuRegisterBase: 0xfed90000 };

    it('maps aw-bits, intremap and eim as QEMU fills its DMAR', () => {
      assert.deepEqual(acpiPlatformFromUnit(vtdConfigFromString(''), wiring), Q35_LIKE);
      assert.deepEqual(acpiPlatformFromUnit(vtdConfigFromString('aw-bits=48,intremap=on,eim=on'), wiring).dmar, {
        registerBase: 0xfed90000,
        addressWidthBits: 48,
        interruptRemapping: true,
        x2apicOptOut: false,
      });
      // X2APIC_OPT_OUT means nothing without INTR_REMAP (VT-d 8.1), so it stays clear.
      assert.deepEqual(acpiPlatformFromUnit(vtdConfigFromString('intremap=off'), wiring).dmar, {
        registerBase: 0xfed90000,
        addressWidthBits: 39,
        interruptRemapping: false,
        x2apicOptOut: false,
      });
    });
  });

  describe('refuses', () => {
    it('an address that is not a non-negative multiple of 16', () => {
      for (const address of [0xe0008, -16, 0xe0000 + 0.5, Number.NaN]) {
        expectAcpiError('ERR_ACPI_ADDRESS', () => buildAcpiTables(Q35_LIKE, address), /multiple of 16/);
      }
    });

    it('tables that would end above 4 GiB, where the RSDT cannot point', () => {
      expectAcpiError('ERR_ACPI_ADDRESS', () => buildAcpiTables(Q35_LIKE, 2 ** 32 - 64), /above 4 GiB/);
    });

    it('no CPUs, APIC ids outside 0..254, and a repeated APIC id', () => {
      expectAcpiError('ERR_ACPI_CPUS', () => buildAcpiTables({ ...Q35_LIKE, cpuApicIds: [] }, BIOS_AREA), /BSP/);
      for (const id of [0xff, 0x100, -1, 1.5]) {
        expectAcpiError('ERR_ACPI_CPU_APIC_ID', () => buildAcpiTables({ ...Q35_LIKE, cpuApicIds: [0, id] }, BIOS_AREA), /0\.\.254/);
      }
      expectAcpiError('ERR_ACPI_CPU_APIC_ID', () => buildAcpiTables({ ...Q35_LIKE, cpuApicIds: [0, 3, 3] }, BIOS_AREA), /twice/);
    });

    it('I/O APIC values that do not fit their fields', () => {
      const cases: [Partial<AcpiPlatform['ioapic']>, RegExp][] = [
        [{ id: 256 }, /I\/O APIC id/],
        [{ address: 2 ** 32 }, /below 4 GiB/],
        [{ gsiBase: -1 }, /GSI base/],
        [{ bus: 256 }, /bus/],
        [{ device: 32 }, /device/],
        [{ function: 8 }, /function/],
      ];
      for (const [change, mention] of cases) {
        expectAcpiError('ERR_ACPI_IOAPIC', () => buildAcpiTables(withIoapic(change), BIOS_AREA), mention);
      }
    });

    it('an address width VT-d tables do not cover', () => {
      for (const addressWidthBits of [0, 38, 40, 64]) {
        expectAcpiError('ERR_ACPI_ADDRESS_WIDTH', () => buildAcpiTables(withDmar({ addressWidthBits }), BIOS_AREA), /39, 48, 57/);
      }
    });

    it('a register base that is zero or not 4 KiB aligned', () => {
      for (const registerBase of [0, 0xfed90800, -0x1000]) {
        expectAcpiError('ERR_ACPI_REGISTER_BASE', () => buildAcpiTables(withDmar({ registerBase }), BIOS_AREA), /4 KiB-aligned/);
      }
    });
  });
});

// ---- the independent reader: ACPICA's iasl ----

interface DisassembledField {
  /** Byte offset in the table; absent for the bit-field lines iasl prints under "Flags (decoded below)". */
  readonly offset?: number;
  readonly name: string;
  readonly value: string;
}

/** Reads iasl's "[hex decimal length]  Name : Value" lines, and the decoded flag lines under them, in order. */
function parseDisassembly(dsl: string): DisassembledField[] {
  const fields: DisassembledField[] = [];
  for (const line of dsl.split('\n')) {
    const match = /^(?:\[([0-9A-F]+)h \d+ +\d+\])?\s+([A-Za-z][^:]*?) : (.*)$/.exec(line);
    if (!match || line.trimStart().startsWith('*')) continue;
    const raw = match[3]!.trim();
    const value = raw.startsWith('"') ? raw.slice(1, raw.indexOf('"', 1)) : raw.split(/\s+/)[0]!;
    fields.push({ ...(match[1] ? { offset: parseInt(match[1], 16) } : {}), name: match[2]!, value });
  }
  return fields;
}

function values(fields: readonly DisassembledField[], name: string): string[] {
  return fields.filter((f) => f.name === name).map((f) => f.value);
}

function one(fields: readonly DisassembledField[], name: string): number {
  const found = values(fields, name);
  assert.equal(found.length, 1, `expected one "${name}" in iasl's output, found ${found.length}`);
  return parseInt(found[0]!, 16);
}

const hexNumbers = (fields: readonly DisassembledField[], name: string): number[] => values(fields, name).map((v) => parseInt(v, 16));

function iasl(args: readonly string[], cwd: string): { status: number | null; output: string } {
  const result = spawnSync('iasl', args, { cwd, encoding: 'utf8' });
  if (result.error) throw result.error;
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

const iaslInstalled = (): boolean => spawnSync('iasl', ['-v'], { encoding: 'utf8' }).error === undefined;

/** Bytes iasl's compiler writes itself: the checksum, and its own id and version in the creator fields. */
const COMPILER_OWNED_BYTES = new Set([9, 28, 29, 30, 31, 32, 33, 34, 35]);

describe('ACPI tables read by iasl', function () {
  let workDir = '';

  before(function () {
    if (!iaslInstalled()) {
      console.warn('iasl not installed (apt-get install acpica-tools); skipping the ACPICA cross-check');
      this.skip();
    }
    workDir = mkdtempSync(join(tmpdir(), 'viommu-acpi-'));
  });

  after(() => {
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  /** `iasl -d` on the table alone; it must read it without a complaint (a bad checksum is only a warning). */
  function disassemble(bytes: Uint8Array, name: string): DisassembledField[] {
    writeFileSync(join(workDir, `${name}.dat`), bytes);
    const { status, output } = iasl(['-d', `${name}.dat`], workDir);
    assert.equal(status, 0, `iasl -d ${name}.dat failed:\n${output}`);
    assert.doesNotMatch(output, /error|warning/i, output);
    const dsl = readFileSync(join(workDir, `${name}.dsl`), 'utf8');
    assert.doesNotMatch(dsl, /incorrect|invalid|\*\*\*\*/i, dsl);
    return parseDisassembly(dsl);
  }

  /** Recompiles iasl's own disassembly: the bytes must come back, so iasl showed every byte we wrote. */
  function assertRecompiles(bytes: Uint8Array, name: string): void {
    const { status, output } = iasl([`${name}.dsl`], workDir);
    assert.equal(status, 0, `iasl ${name}.dsl failed:\n${output}`);
    const again = readFileSync(join(workDir, `${name}.aml`));
    assert.equal(again.length, bytes.length);
    for (let i = 0; i < bytes.length; i++) {
      if (!COMPILER_OWNED_BYTES.has(i)) assert.equal(again[i], bytes[i], `${name} byte ${i} after iasl's round trip`);
    }
  }

  for (const [label, platform] of [
    ['q35-like', Q35_LIKE],
    ['unusual', UNUSUAL],
  ] as const) {
    describe(label, () => {
      const image = buildAcpiTables(platform, BIOS_AREA);
      const address = (signature: string) => image.tables.find((t) => t.signature === signature)!.address;

      it('DMAR: host address width, flags, the DRHD and its I/O APIC device scope', () => {
        const bytes = tableBytes(image, 'DMAR');
        const fields = disassemble(bytes, `${label}-dmar`);
        const { dmar, ioapic } = platform;
        assert.equal(values(fields, 'Signature')[0], 'DMAR');
        assert.equal(one(fields, 'Revision'), 1);
        assert.equal(values(fields, 'Oem ID')[0], 'VIOMMU');
        assert.equal(one(fields, 'Host Address Width'), dmar.addressWidthBits - 1);
        const [tableFlags, drhdFlags] = hexNumbers(fields, 'Flags');
        assert.equal(tableFlags, (dmar.interruptRemapping ? 1 : 0) | (dmar.x2apicOptOut ? 2 : 0));
        assert.deepEqual(values(fields, 'Subtable Type'), ['0000'], 'one DRHD and nothing else');
        assert.equal(drhdFlags, 1, 'INCLUDE_PCI_ALL');
        assert.equal(one(fields, 'PCI Segment Number'), 0);
        assert.equal(one(fields, 'Register Base Address'), dmar.registerBase);
        assert.deepEqual(values(fields, 'Device Scope Type'), ['03'], 'one scope: an I/O APIC');
        assert.equal(one(fields, 'Entry Length'), 8);
        assert.equal(one(fields, 'Enumeration ID'), ioapic.id);
        assert.equal(one(fields, 'PCI Bus Number'), ioapic.bus);
        assert.deepEqual(values(fields, 'PCI Path'), [`${hex2(ioapic.device)},${hex2(ioapic.function)}`]);
        assertRecompiles(bytes, `${label}-dmar`);
      });

      it('MADT: local APIC address, one enabled local APIC per CPU in order, the I/O APIC and the timer override', () => {
        const bytes = tableBytes(image, 'APIC');
        const fields = disassemble(bytes, `${label}-apic`);
        const { ioapic } = platform;
        assert.equal(one(fields, 'Local Apic Address'), 0xfee00000);
        assert.equal(one(fields, 'PC-AT Compatibility'), 1);
        assert.deepEqual(hexNumbers(fields, 'Local Apic ID'), platform.cpuApicIds);
        assert.deepEqual(
          hexNumbers(fields, 'Processor ID'),
          platform.cpuApicIds.map((_, uid) => uid),
        );
        assert.deepEqual(
          values(fields, 'Processor Enabled'),
          platform.cpuApicIds.map(() => '1'),
        );
        assert.equal(one(fields, 'I/O Apic ID'), ioapic.id);
        assert.equal(one(fields, 'Address'), ioapic.address);
        const [ioapicGsiBase, overrideGsi] = hexNumbers(fields, 'Interrupt');
        assert.equal(ioapicGsiBase, ioapic.gsiBase);
        assert.equal(one(fields, 'Source'), 0, 'ISA IRQ 0');
        assert.equal(overrideGsi, ioapic.gsiBase + 2, 'to the I/O APIC pin 2');
        assert.deepEqual(
          values(fields, 'Subtable Type').map((v) => parseInt(v, 16)),
          [...platform.cpuApicIds.map(() => 0), 1, 2],
        );
        assertRecompiles(bytes, `${label}-apic`);
      });

      it('XSDT and RSDT: the MADT and DMAR addresses', () => {
        for (const signature of ['XSDT', 'RSDT']) {
          const bytes = tableBytes(image, signature);
          const name = `${label}-${signature.toLowerCase()}`;
          const fields = disassemble(bytes, name);
          const entries = fields.filter((f) => f.name.startsWith('ACPI Table Address')).map((f) => parseInt(f.value, 16));
          assert.deepEqual(entries, [address('APIC'), address('DMAR')], signature);
          assertRecompiles(bytes, name);
        }
      });

      it('RSDP: iasl compiles the same 36 bytes, checksums included, from the expected field values', () => {
        // This iasl does not disassemble a lone RSDP (it has no standard header), so its compiler checks ours instead.
        const source = [
          '[0008] Signature : "RSD PTR "',
          '[0001] Checksum : 00',
          '[0006] Oem ID : "VIOMMU"',
          '[0001] Revision : 02',
          `[0004] RSDT Address : ${hex8(address('RSDT'))}`,
          '[0004] Length : 00000024',
          `[0008] XSDT Address : ${hex8(address('XSDT'))}`,
          '[0001] Extended Checksum : 00',
          '[0003] Reserved : 000000',
        ].join('\n');
        writeFileSync(join(workDir, `${label}-rsdp.asl`), `${source}\n`);
        const { status, output } = iasl([`${label}-rsdp.asl`], workDir);
        assert.equal(status, 0, output);
        assert.deepEqual(new Uint8Array(readFileSync(join(workDir, `${label}-rsdp.aml`))), tableBytes(image, 'RSD PTR '));
      });
    });
  }
});
