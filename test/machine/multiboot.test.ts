/** loadMultiboot: the real kvm-unit-tests VT-d image, synthetic a.out-kludge and ELF images, and the images it must refuse. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { ViommuError } from '../../lib/errors';
import { loadMultiboot, type MultibootOptions } from '../../lib/machine/multiboot';
import { INTEL_IOMMU_FLAT as KUT_IMAGE, peerGuestMissingReason } from './kvm-support';

/** From `readelf -h -l intel-iommu.flat` (kvm-unit-tests 1da1819e). */
const KUT_ENTRY = 0x4000bc;
const KUT_SEGMENTS = [
  { base: 0x4000b0, offset: 0x0000b0, fileLength: 0x08377, length: 0x08377 },
  { base: 0x409000, offset: 0x009000, fileLength: 0x0ef2c, length: 0xc34030 },
];

const MIB = 0x100000;
const PAGE = 0x1000;
/** Bytes nobody wrote read as this, so a missed zero-fill shows. */
const UNWRITTEN = 0xcc;

/** Guest memory as the loader's caller sees it, plus the reads a guest would make. */
abstract class TestMemory {
  abstract write(address: number, data: Uint8Array): void;
  abstract read(address: number, length: number): Uint8Array;

  u32(address: number): number {
    return new DataView(this.read(address, 4).buffer).getUint32(0, true);
  }

  u64(address: number): number {
    return Number(new DataView(this.read(address, 8).buffer).getBigUint64(0, true));
  }

  cString(address: number): string {
    const bytes: number[] = [];
    for (let at = address; ; at++) {
      const byte = this.read(at, 1)[0];
      if (byte === 0) return Buffer.from(bytes).toString('utf8');
      assert.notEqual(byte, UNWRITTEN, `string at 0x${address.toString(16)} runs into unwritten memory`);
      bytes.push(byte);
    }
  }
}

/** Plain RAM: one Uint8Array, pre-filled so unwritten bytes show. */
class FlatMemory extends TestMemory {
  readonly bytes: Uint8Array;

  constructor(ramBytes: number) {
    super();
    this.bytes = new Uint8Array(ramBytes).fill(UNWRITTEN);
  }

  write(address: number, data: Uint8Array): void {
    assert.ok(
      address >= 0 && address + data.length <= this.bytes.length,
      `write [0x${address.toString(16)}, +0x${data.length.toString(16)}) outside RAM`,
    );
    this.bytes.set(data, address);
  }

  read(address: number, length: number): Uint8Array {
    return this.bytes.slice(address, address + length);
  }
}

/** Guest memory that keeps only what was written, so a property can use gigabytes of "RAM" and refusals can show they wrote nothing. */
class SparseMemory extends TestMemory {
  readonly writes: { address: number; data: Uint8Array }[] = [];

  write(address: number, data: Uint8Array): void {
    this.writes.push({ address, data: Uint8Array.from(data) });
  }

  read(address: number, length: number): Uint8Array {
    const out = new Uint8Array(length).fill(UNWRITTEN);
    for (const { address: at, data } of this.writes) {
      const from = Math.max(address, at);
      const to = Math.min(address + length, at + data.length);
      if (from < to) out.set(data.subarray(from - at, to - at), from - address);
    }
    return out;
  }
}

interface MmapEntry {
  base: number;
  length: number;
  type: number;
}

/** The guest's view of the information block, read back field by field from guest memory. */
function readInfo(memory: TestMemory, info: number) {
  const flags = memory.u32(info);
  const mmap: MmapEntry[] = [];
  const mmapAddress = memory.u32(info + 48);
  const mmapEnd = mmapAddress + memory.u32(info + 44);
  for (let at = mmapAddress; at < mmapEnd; at += memory.u32(at) + 4) {
    assert.equal(memory.u32(at), 20);
    mmap.push({ base: memory.u64(at + 4), length: memory.u64(at + 12), type: memory.u32(at + 20) });
  }
  /** Every block the information occupies, so placement can be checked. */
  const pieces = [
    { base: info, length: 116 },
    { base: mmapAddress, length: mmapEnd - mmapAddress },
  ];
  const string = (address: number): string => {
    const text = memory.cString(address);
    pieces.push({ base: address, length: Buffer.byteLength(text) + 1 });
    return text;
  };
  const modulesCount = memory.u32(info + 20);
  if (modulesCount) pieces.push({ base: memory.u32(info + 24), length: modulesCount * 16 });
  const modules = [...Array(modulesCount).keys()].map((i) => {
    const at = memory.u32(info + 24) + i * 16;
    return { start: memory.u32(at), end: memory.u32(at + 4), commandLine: string(memory.u32(at + 8)), reserved: memory.u32(at + 12) };
  });
  return {
    flags,
    memLower: memory.u32(info + 4),
    memUpper: memory.u32(info + 8),
    commandLine: string(memory.u32(info + 16)),
    modules,
    mmap,
    mmapBytes: mmapEnd - mmapAddress,
    bootLoaderName: string(memory.u32(info + 64)),
    pieces,
  };
}

const isCode = (code: string) => (e: unknown) => e instanceof ViommuError && e.code === code;

function header(flags: number, checksumError = 0): number[] {
  const magic = 0x1badb002;
  return [magic, flags, (-(magic + flags) + checksumError) >>> 0];
}

function put32(bytes: Uint8Array, at: number, values: readonly number[]): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  values.forEach((value, i) => view.setUint32(at + 4 * i, value >>> 0, true));
}

/** A file loaded through header flag 16: header at `headerOffset`, bytes patterned so misplacement shows. */
function aoutImage(o: {
  load: number;
  fileLength: number;
  bss?: number;
  headerOffset?: number;
  entryOffset?: number;
  loadEndZero?: boolean;
  flags?: number;
}): Uint8Array {
  const headerOffset = o.headerOffset ?? 0x40;
  const image = Uint8Array.from({ length: o.fileLength }, (_, i) => (i * 7 + 3) & 0xff);
  const loadEnd = o.load + o.fileLength;
  const flags = o.flags ?? 0x10003;
  put32(image, headerOffset, [
    ...header(flags),
    o.load + headerOffset,
    o.load,
    o.loadEndZero ? 0 : loadEnd,
    o.bss ? loadEnd + o.bss : 0,
    o.load + (o.entryOffset ?? 0x80),
  ]);
  return image;
}

interface ElfSegment {
  vaddr: number | bigint;
  paddr: number;
  data: Uint8Array;
  memsz: number;
}

/** A minimal ELF executable (32- or 64-bit) with a multiboot header at file offset 0x200, outside every segment. */
function elfImage(elfClass: 32 | 64, segments: readonly ElfSegment[], entry: number | bigint, headerFlags = 0): Uint8Array {
  const is64 = elfClass === 64;
  const ehsize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  const dataStart = 0x400;
  const offsets: number[] = [];
  let end = dataStart;
  for (const s of segments) {
    offsets.push(end);
    end += (s.data.length + 15) & ~15;
  }
  const image = new Uint8Array(end);
  const view = new DataView(image.buffer);
  image.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1]);
  view.setUint16(16, 2, true);
  view.setUint16(18, is64 ? 62 : 3, true);
  view.setUint32(20, 1, true);
  const word = (at: number, value: number | bigint): void =>
    is64 ? view.setBigUint64(at, BigInt(value), true) : view.setUint32(at, Number(value), true);
  word(24, entry);
  word(is64 ? 32 : 28, ehsize);
  view.setUint16(is64 ? 52 : 40, ehsize, true);
  view.setUint16(is64 ? 54 : 42, phentsize, true);
  view.setUint16(is64 ? 56 : 44, segments.length, true);
  segments.forEach((s, i) => {
    const at = ehsize + i * phentsize;
    view.setUint32(at, 1, true);
    if (is64) {
      view.setUint32(at + 4, 7, true);
      [offsets[i], s.vaddr, s.paddr, s.data.length, s.memsz].forEach((v, k) => view.setBigUint64(at + 8 + 8 * k, BigInt(v), true));
    } else {
      [offsets[i], s.vaddr, s.paddr, s.data.length, s.memsz].forEach((v, k) => view.setUint32(at + 4 + 4 * k, Number(v), true));
    }
    image.set(s.data, offsets[i]);
  });
  put32(image, 0x200, header(headerFlags));
  return image;
}

const pattern = (length: number, seed: number): Uint8Array => Uint8Array.from({ length }, (_, i) => (i * 13 + seed) & 0xff);

describe('loadMultiboot', () => {
  describe('the kvm-unit-tests intel-iommu image', () => {
    let image: Uint8Array | undefined;
    before(function () {
      const missing = peerGuestMissingReason();
      if (missing !== undefined) {
        console.log(`      (skipped: ${missing})`);
        this.skip();
      }
      image = new Uint8Array(readFileSync(KUT_IMAGE));
    });

    it('loads both segments at their addresses, zero-fills the bss, and enters at the ELF entry', () => {
      const ramBytes = 64 * MIB;
      const memory = new FlatMemory(ramBytes);
      const boot = loadMultiboot(memory, image!, { ramBytes, reserved: [{ base: 0xe0000, length: 0x20000 }] });
      assert.equal(boot.entry, KUT_ENTRY);
      assert.equal(boot.magic, 0x2badb002);
      assert.deepEqual(
        boot.loaded,
        KUT_SEGMENTS.map((s) => ({ base: s.base, length: s.length })),
      );
      for (const s of KUT_SEGMENTS) {
        assert.deepEqual(memory.read(s.base, s.fileLength), image!.subarray(s.offset, s.offset + s.fileLength));
        const bss = memory.read(s.base + s.fileLength, s.length - s.fileLength);
        assert.ok(
          bss.every((b) => b === 0),
          'bss zeroed',
        );
      }
      assert.deepEqual(
        [...memory.read(boot.entry - 12, 4)],
        [0x02, 0xb0, 0xad, 0x1b],
        'the entry follows the multiboot header, as cstart64.S lays it out',
      );
    });

    it('describes RAM, the command line and the environment module where cstart64.S and setup.c read them', () => {
      const ramBytes = 64 * MIB;
      const memory = new FlatMemory(ramBytes);
      const env = 'NR_CPUS=1\nMEMSIZE=64\nTEST_DEVICE=1\n';
      const boot = loadMultiboot(memory, image!, {
        ramBytes,
        reserved: [],
        commandLine: 'intel-iommu -- extra',
        modules: [{ bytes: new TextEncoder().encode(env), commandLine: 'env' }],
      });
      const info = readInfo(memory, boot.infoAddress);
      assert.equal(info.flags, 1 | 4 | 8 | 64 | 512);
      assert.equal(info.memLower, 640);
      assert.equal(info.memUpper, (ramBytes - MIB) / 1024, 'setup_multiboot: heap end = mem_upper * 1024 + ... = end of RAM');
      assert.equal(memory.cString(memory.u32(boot.infoAddress + 16)), 'intel-iommu -- extra', 'cstart64.S: mb_cmdline = 16');
      assert.equal(info.bootLoaderName, 'viommu machine');
      assert.deepEqual(info.mmap, [
        { base: 0, length: 0x9fc00, type: 1 },
        { base: 0x9fc00, length: MIB - 0x9fc00, type: 2 },
        { base: MIB, length: ramBytes - MIB, type: 1 },
      ]);
      assert.equal(info.mmapBytes, 3 * 24);
      assert.equal(info.modules.length, 1);
      const [module] = info.modules;
      assert.equal(module.start % PAGE, 0);
      const imageEnd = KUT_SEGMENTS[1].base + KUT_SEGMENTS[1].length;
      assert.equal(module.start, Math.ceil(imageEnd / PAGE) * PAGE, 'the first page after the image (and its bss)');
      assert.equal(module.end - module.start, env.length);
      assert.equal(Buffer.from(memory.read(module.start, env.length)).toString(), env);
      assert.equal(module.commandLine, 'env');
      assert.equal(module.reserved, 0);
      assert.ok(boot.infoAddress >= 0x1000 && boot.infoAddress + info.mmapBytes < 0x9fc00, 'information in low memory, off the first page');
    });
  });

  describe('header flag 16 (a.out kludge)', () => {
    it('loads [load_addr, load_end_addr) from the file position the header implies, zeroes to bss_end_addr, and enters at entry_addr', () => {
      const memory = new SparseMemory();
      const image = aoutImage({ load: 0x200000, fileLength: 0x300, bss: 0x1d00, headerOffset: 0x40, entryOffset: 0x80 });
      const boot = loadMultiboot(memory, image, { ramBytes: 16 * MIB, reserved: [] });
      assert.equal(boot.entry, 0x200080);
      assert.deepEqual(boot.loaded, [{ base: 0x200000, length: 0x2000 }]);
      assert.deepEqual(memory.read(0x200000, 0x300), image);
      assert.ok(memory.read(0x200300, 0x1d00).every((b) => b === 0));
      assert.equal(memory.read(0x202000, 1)[0], UNWRITTEN, 'nothing past bss_end_addr');
    });

    it('starts loading before the header when header_addr - load_addr says the file begins earlier, and takes the whole file when load_end_addr is 0', () => {
      const memory = new SparseMemory();
      // File: 0x100 bytes of prefix not loaded, then the loaded part, whose header sits 0x20 in.
      const loaded = aoutImage({ load: 0x300000, fileLength: 0x180, headerOffset: 0x20, loadEndZero: true });
      const image = new Uint8Array(0x100 + loaded.length);
      image.set(loaded, 0x100);
      // header_addr - load_addr = 0x20, but the header is at 0x120 in this file: loading starts at file offset 0x100.
      const boot = loadMultiboot(memory, image, { ramBytes: 16 * MIB, reserved: [] });
      assert.deepEqual(boot.loaded, [{ base: 0x300000, length: 0x180 }]);
      assert.deepEqual(memory.read(0x300000, 0x180), loaded);
    });

    it('wins over the ELF program headers when both are present', () => {
      const memory = new SparseMemory();
      const elf = elfImage(32, [{ vaddr: 0x400000, paddr: 0x400000, data: pattern(0x40, 1), memsz: 0x40 }], 0x400000, 0x10000);
      // Point the header's load addresses at 0x500000, with the whole file loaded there.
      put32(elf, 0x200 + 12, [0x500200, 0x500000, 0, 0, 0x500010]);
      const boot = loadMultiboot(memory, elf, { ramBytes: 16 * MIB, reserved: [] });
      assert.equal(boot.entry, 0x500010);
      assert.deepEqual(boot.loaded, [{ base: 0x500000, length: elf.length }]);
    });

    it('refuses load addresses that do not fit the file', () => {
      const ram = { ramBytes: 16 * MIB, reserved: [] };
      const image = aoutImage({ load: 0x200000, fileLength: 0x100 });
      put32(image, 0x40 + 20, [0x200000 + 0x200]);
      assert.throws(() => loadMultiboot(new SparseMemory(), image, ram), isCode('ERR_MULTIBOOT_BAD_ADDRESSES'));
      const before = aoutImage({ load: 0x200000, fileLength: 0x100 });
      put32(before, 0x40 + 12, [0x200000 + 0x1000]);
      assert.throws(() => loadMultiboot(new SparseMemory(), before, ram), isCode('ERR_MULTIBOOT_BAD_ADDRESSES'));
    });
  });

  describe('ELF images', () => {
    it('loads ELF32 PT_LOAD segments at p_paddr and translates a virtual entry through its segment', () => {
      const memory = new SparseMemory();
      const text = pattern(0x123, 5);
      const data = pattern(0x40, 9);
      const image = elfImage(
        32,
        [
          { vaddr: 0xc0100000, paddr: 0x100000, data: text, memsz: text.length },
          { vaddr: 0xc0200000, paddr: 0x200000, data, memsz: 0x3000 },
        ],
        0xc0100010,
      );
      const boot = loadMultiboot(memory, image, { ramBytes: 8 * MIB, reserved: [] });
      assert.equal(boot.entry, 0x100010);
      assert.deepEqual(memory.read(0x100000, text.length), text);
      assert.deepEqual(memory.read(0x200000, data.length), data);
      assert.ok(memory.read(0x200040, 0x3000 - 0x40).every((b) => b === 0));
    });

    it('loads ELF64 the same way, keeping a higher-half entry exact', () => {
      const memory = new SparseMemory();
      const text = pattern(0x80, 2);
      const image = elfImage(64, [{ vaddr: 0xffffffff80100000n, paddr: 0x100000, data: text, memsz: 0x1000 }], 0xffffffff80100020n);
      const boot = loadMultiboot(memory, image, { ramBytes: 8 * MIB, reserved: [] });
      assert.equal(boot.entry, 0x100020);
      assert.deepEqual(boot.loaded, [{ base: 0x100000, length: 0x1000 }]);
      assert.deepEqual(memory.read(0x100000, text.length), text);
    });
  });

  describe('refusals, which write nothing', () => {
    const ram: MultibootOptions = { ramBytes: 16 * MIB, reserved: [{ base: 0x800000, length: 0x10000 }] };
    const refuses = (image: Uint8Array, code: string, options = ram): void => {
      const memory = new SparseMemory();
      assert.throws(() => loadMultiboot(memory, image, options), isCode(code));
      assert.equal(memory.writes.length, 0);
    };

    it('no header in the first 8 KiB', () => {
      refuses(new Uint8Array(0x4000), 'ERR_MULTIBOOT_NO_HEADER');
      const late = new Uint8Array(0x4000);
      put32(late, 8192 - 8, header(0));
      refuses(late, 'ERR_MULTIBOOT_NO_HEADER');
      const unaligned = new Uint8Array(0x100);
      put32(unaligned, 0x42, header(0));
      refuses(unaligned, 'ERR_MULTIBOOT_NO_HEADER');
    });

    it('a bad checksum', () => {
      const image = aoutImage({ load: 0x200000, fileLength: 0x100 });
      put32(image, 0x40 + 8, [header(0x10003, 1)[2]]);
      refuses(image, 'ERR_MULTIBOOT_CHECKSUM');
    });

    it('required flags it cannot honour: a video mode, or an unknown bit', () => {
      refuses(aoutImage({ load: 0x200000, fileLength: 0x100, flags: 0x10004 }), 'ERR_MULTIBOOT_UNSUPPORTED_FLAGS');
      refuses(aoutImage({ load: 0x200000, fileLength: 0x100, flags: 0x10020 }), 'ERR_MULTIBOOT_UNSUPPORTED_FLAGS');
      // Optional bits (17-31) are not a reason to refuse.
      assert.doesNotThrow(() => loadMultiboot(new SparseMemory(), aoutImage({ load: 0x200000, fileLength: 0x100, flags: 0x30003 }), ram));
    });

    it('a segment over a reserved range, the PC hole below 1 MiB, or outside RAM', () => {
      refuses(aoutImage({ load: 0x7ff000, fileLength: 0x100, bss: 0x1000 }), 'ERR_MULTIBOOT_SEGMENT_RESERVED');
      refuses(aoutImage({ load: 0xf0000, fileLength: 0x100 }), 'ERR_MULTIBOOT_SEGMENT_RESERVED');
      refuses(aoutImage({ load: 0xfff000, fileLength: 0x100, bss: 0x1000 }), 'ERR_MULTIBOOT_SEGMENT_OUTSIDE_RAM');
      refuses(
        elfImage(32, [{ vaddr: 0x2000000, paddr: 0x2000000, data: pattern(16, 0), memsz: 16 }], 0x2000000),
        'ERR_MULTIBOOT_SEGMENT_OUTSIDE_RAM',
      );
    });

    it('an entry point outside what it loads, and ELF it cannot load', () => {
      refuses(aoutImage({ load: 0x200000, fileLength: 0x100, entryOffset: 0x1000 }), 'ERR_MULTIBOOT_ENTRY');
      const notElf = new Uint8Array(0x100);
      put32(notElf, 0x10, header(0));
      refuses(notElf, 'ERR_MULTIBOOT_BAD_ELF');
      const bigEndian = elfImage(32, [{ vaddr: 0x100000, paddr: 0x100000, data: pattern(16, 0), memsz: 16 }], 0x100000);
      bigEndian[5] = 2;
      refuses(bigEndian, 'ERR_MULTIBOOT_BAD_ELF');
    });

    it('options that do not describe RAM', () => {
      const image = aoutImage({ load: 0x200000, fileLength: 0x100 });
      refuses(image, 'ERR_MULTIBOOT_OPTIONS', { ramBytes: 16 * MIB, reserved: [{ base: 15 * MIB, length: 2 * MIB }] });
      refuses(image, 'ERR_MULTIBOOT_OPTIONS', { ramBytes: 0, reserved: [] });
      refuses(image, 'ERR_MULTIBOOT_OPTIONS', { ramBytes: 16 * MIB, reserved: [], commandLine: 'a\0b' });
    });

    it('modules that do not fit in RAM', () => {
      refuses(aoutImage({ load: 0x200000, fileLength: 0x100 }), 'ERR_MULTIBOOT_NO_ROOM', {
        ramBytes: 4 * MIB,
        reserved: [],
        modules: [{ bytes: new Uint8Array(4 * MIB), commandLine: '' }],
      });
    });
  });

  it('places no module where its end, the exclusive mod_end, would not fit in 32 bits', () => {
    const memory = new SparseMemory();
    const top = 2 ** 32 - PAGE;
    // Past the image, only the last page below 4 GiB is free: a one-page module there would end at 2^32.
    const boot = loadMultiboot(memory, aoutImage({ load: MIB, fileLength: 0x1000 }), {
      ramBytes: 2 ** 32 + MIB,
      reserved: [{ base: MIB + 0x1000, length: top - MIB - 0x1000 }],
      modules: [{ bytes: pattern(PAGE, 4), commandLine: 'page' }],
    });
    const [module] = readInfo(memory, boot.infoAddress).modules;
    assert.equal(module.end - module.start, PAGE);
    assert.ok(module.end < 2 ** 32, `module at 0x${module.start.toString(16)}`);
    assert.deepEqual(memory.read(module.start, PAGE), pattern(PAGE, 4));
  });

  it('lays out a memory map that covers RAM exactly and places everything in available RAM apart: property', () => {
    const image = aoutImage({ load: MIB, fileLength: 0x800, bss: 0x800 });
    const imageSpan = { base: MIB, length: 0x1000 };
    const ranges = fc.array(fc.record({ page: fc.integer({ min: 0x200, max: 0x3ffff }), pages: fc.integer({ min: 1, max: 0x800 }) }), {
      maxLength: 6,
    });
    const modules = fc.array(
      fc.record({ length: fc.integer({ min: 0, max: 0x3000 }), commandLine: fc.string({ maxLength: 20 }).filter((s) => !s.includes('\0')) }),
      { maxLength: 3 },
    );
    fc.assert(
      fc.property(
        fc.integer({ min: 0x800, max: 0x100000 }),
        ranges,
        modules,
        fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0')),
        (ramPages, reservedPages, moduleSpecs, commandLine) => {
          const ramBytes = ramPages * PAGE;
          const reserved = reservedPages.map((r) => ({ base: r.page * PAGE, length: r.pages * PAGE })).filter((r) => r.base + r.length <= ramBytes);
          const memory = new SparseMemory();
          const boot = loadMultiboot(memory, image, {
            ramBytes,
            reserved,
            commandLine,
            modules: moduleSpecs.map((m, i) => ({ bytes: pattern(m.length, i), commandLine: m.commandLine })),
          });
          const info = readInfo(memory, boot.infoAddress);
          assert.equal(info.commandLine, commandLine);

          // Sorted, contiguous from 0 to the end of RAM, neighbours of different types.
          let expected = 0;
          info.mmap.forEach((entry, i) => {
            assert.equal(entry.base, expected);
            assert.ok(entry.length > 0);
            if (i > 0) assert.notEqual(entry.type, info.mmap[i - 1].type);
            expected += entry.length;
          });
          assert.equal(expected, ramBytes);
          const typeAt = (address: number): number | undefined => info.mmap.find((e) => address >= e.base && address < e.base + e.length)?.type;
          for (const r of [...reserved, { base: 0x9fc00, length: MIB - 0x9fc00 }]) {
            assert.ok(
              info.mmap.some((e) => e.type === 2 && e.base <= r.base && r.base + r.length <= e.base + e.length),
              'each reserved range inside one reserved entry',
            );
          }
          const upperRun = info.mmap.find((e) => e.base === MIB);
          assert.equal(info.memUpper, upperRun?.type === 1 ? Math.min(upperRun.length, 2 ** 32 - MIB) / 1024 : 0);

          // Information, module table, strings and modules: in available RAM, off the first page, clear of the image and each other.
          const placed = [...info.pieces, ...info.modules.map((m) => ({ base: m.start, length: Math.max(1, m.end - m.start) }))];
          info.modules.forEach((m, i) => {
            assert.equal(m.start % PAGE, 0);
            assert.equal(m.end - m.start, moduleSpecs[i].length);
            assert.deepEqual(memory.read(m.start, m.end - m.start), pattern(moduleSpecs[i].length, i));
            assert.equal(m.commandLine, moduleSpecs[i].commandLine);
          });
          for (const [i, p] of placed.entries()) {
            assert.ok(p.base >= PAGE && p.base + p.length <= 2 ** 32);
            for (let at = p.base; at < p.base + p.length; at += PAGE) assert.equal(typeAt(at), 1);
            assert.equal(typeAt(p.base + p.length - 1), 1);
            for (const other of [imageSpan, ...placed.slice(i + 1)]) {
              assert.ok(p.base + p.length <= other.base || other.base + other.length <= p.base, 'no overlap');
            }
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
