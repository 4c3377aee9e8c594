/** Multiboot 1 loader: puts a kernel image (ELF32, ELF64 or a.out-kludge), its modules and the boot information into guest RAM, as GRUB or QEMU's -kernel would. */
import { ViommuError } from '../errors';
import { PAGE_BYTES } from '../memory/geometry';

/*
 * Multiboot header (Multiboot Specification 0.6.96, section 3.1), 4-byte aligned within the image's first 8 KiB:
 *
 * | off | field         | use                                                                 |
 * |-----|---------------|---------------------------------------------------------------------|
 * | 0   | magic         | 0x1BADB002                                                          |
 * | 4   | flags         | bits 0-15 required features, bits 16-31 optional (see HEADER_FLAG)  |
 * | 8   | checksum      | magic + flags + checksum = 0 (mod 2^32)                             |
 * | 12  | header_addr   | flag 16: physical address of this header                            |
 * | 16  | load_addr     | flag 16: physical address of the first loaded byte (<= header_addr) |
 * | 20  | load_end_addr | flag 16: end of text+data; 0 = to the end of the file               |
 * | 24  | bss_end_addr  | flag 16: end of the zeroed area after the data; 0 = no bss          |
 * | 28  | entry_addr    | flag 16: entry point                                                |
 *
 * Multiboot information (section 3.3), the structure EBX points to; fields are u32:
 *
 * | off    | field                  | flag bit | filled                                                  |
 * |--------|------------------------|----------|---------------------------------------------------------|
 * | 0      | flags                  |          | which fields below are valid                            |
 * | 4      | mem_lower              | 0        | KiB of RAM from 0, at most 640                          |
 * | 8      | mem_upper              | 0        | KiB of RAM from 1 MiB to the first hole (at most 4 GiB) |
 * | 12     | boot_device            | 1        | no                                                      |
 * | 16     | cmdline                | 2        | address of a NUL-terminated string ("" if none given)   |
 * | 20, 24 | mods_count, mods_addr  | 3        | module table of 16-byte entries (start, end, string, 0) |
 * | 28-43  | a.out/ELF symbols      | 4 or 5   | no                                                      |
 * | 44, 48 | mmap_length, mmap_addr | 6        | memory map entries (below)                              |
 * | 52-60  | drives, config_table   | 7, 8     | no                                                      |
 * | 64     | boot_loader_name       | 9        | address of a NUL-terminated string                      |
 * | 68-115 | APM, VBE, framebuffer  | 10-12    | no (zero)                                               |
 *
 * Memory map entry: u32 size (20, not counting itself), u64 base_addr, u64 length, u32 type (1 available, 2 reserved).
 */
const HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
const HEADER_SEARCH_BYTES = 8192;
const HEADER_BYTES = 12;
const ADDRESS_HEADER_BYTES = 32;

const HEADER_FLAG = {
  /** Modules page-aligned: always done, so honoured. */
  pageAlignModules: 1 << 0,
  /** mem_* fields wanted: always given, so honoured. */
  memoryInfo: 1 << 1,
  /** A video mode wanted: this machine has no display. */
  videoMode: 1 << 2,
  /** Load addresses in the header, which then win over an ELF's own (the "a.out kludge"). */
  addresses: 1 << 16,
} as const;
/** Required-feature bits this loader can honour; any other bit in 0-15 must refuse the image (spec 3.1.2). */
const HONOURED_REQUIRED_FLAGS = HEADER_FLAG.pageAlignModules | HEADER_FLAG.memoryInfo;
const REQUIRED_FLAGS_MASK = 0xffff;

const INFO_FLAG = { memory: 1 << 0, cmdline: 1 << 2, modules: 1 << 3, memoryMap: 1 << 6, bootLoaderName: 1 << 9 } as const;
const INFO = {
  flags: 0,
  memLower: 4,
  memUpper: 8,
  cmdline: 16,
  modsCount: 20,
  modsAddr: 24,
  mmapLength: 44,
  mmapAddr: 48,
  bootLoaderName: 64,
} as const;
/** Up to the framebuffer fields' end, so a kernel reading the whole structure reads zeros, not our strings. */
const INFO_BYTES = 116;
const MODULE_ENTRY_BYTES = 16;
const MMAP_ENTRY_BYTES = 24;
const MMAP_ENTRY_SIZE_FIELD = 20;
export const MEMORY_TYPE = { available: 1, reserved: 2 } as const;

const PAGE = PAGE_BYTES;
const KIB = 1024;
const MIB = 0x100000;
const FOUR_GIB = 2 ** 32;
/** Where a PC's RAM below 1 MiB ends for the OS: the EBDA, then VGA memory and ROMs up to 1 MiB. */
const EBDA_BASE = 0x9fc00;
const LOW_MEMORY_END = 0xa0000;
/**
 * The information goes at or above this, as bootloaders put it: clear of the real-mode IVT/BDA and of the AP
 * trampoline kvm-unit-tests copies to address 0 (lib/alloc_page.h RM_TRAMPOLINE_ADDR).
 */
const INFO_PREFERRED_FLOOR = 0x9000;
const BOOT_LOADER_NAME = 'viommu machine';

export interface MultibootModule {
  readonly bytes: Uint8Array;
  readonly commandLine: string;
}

export interface MultibootOptions {
  /** RAM is [0, ramBytes). */
  readonly ramBytes: number;
  /** Ranges inside RAM the loader must not use and must report as reserved in the memory map (e.g. the ACPI/BIOS area 0xe0000-0xfffff). */
  readonly reserved: readonly { base: number; length: number }[];
  readonly commandLine?: string;
  readonly modules?: readonly MultibootModule[];
}

export interface MultibootBoot {
  /** EIP. */
  readonly entry: number;
  /** EBX. */
  readonly infoAddress: number;
  /** EAX. */
  readonly magic: 0x2badb002;
  /** What the image occupies (for reports). */
  readonly loaded: readonly { base: number; length: number }[];
}

/** A run of guest-physical addresses, [start, end). */
interface Span {
  start: number;
  end: number;
}

interface Segment {
  address: number;
  file: Uint8Array;
  memoryLength: number;
}

interface Kernel {
  segments: Segment[];
  entry: number;
}

/**
 * Writes the image, modules and the multiboot information into guest memory. Throws ViommuError('ERR_MULTIBOOT_...')
 * for an image it cannot load (no header in the first 8 KiB, bad checksum, segment outside RAM or in a reserved
 * range, unsupported flags such as video mode required); nothing is written then.
 *
 * Placement: image segments where they ask; the information, memory map and strings first-fit in available RAM at or
 * above 0x9000 (low memory for any ordinary image); modules page-aligned first-fit from the image's end. None of them
 * touches the first page, a reserved range or the image; all stay below 4 GiB, since the structure holds 32-bit
 * addresses. The memory map is a PC's: [0, 0x9fc00) available, [0x9fc00, 0x100000) reserved (EBDA, VGA, ROMs),
 * `reserved` as reserved, the rest of RAM available.
 *
 * The machine must then start the boot CPU as the spec's section 3.2 requires: 32-bit protected mode, paging off,
 * CS a flat (base 0, limit 4 GiB) 32-bit execute/read code segment, DS/ES/FS/GS/SS flat 32-bit read/write data
 * segments, EFLAGS.IF = 0 and VM = 0, A20 enabled, EAX = `magic`, EBX = `infoAddress`, EIP = `entry`. ESP, GDTR and
 * IDTR are the kernel's to set; the kernel must not rely on the GDT the loader used.
 */
export function loadMultiboot(
  memory: { write(address: number, data: Uint8Array): void },
  image: Uint8Array,
  options: MultibootOptions,
): MultibootBoot {
  checkOptions(options);
  const header = findHeader(image);
  const unsupported = header.flags & REQUIRED_FLAGS_MASK & ~HONOURED_REQUIRED_FLAGS;
  if (unsupported) {
    const what =
      unsupported & HEADER_FLAG.videoMode
        ? 'a video mode (flag 2), and this machine has no display'
        : `features this loader does not know (flags 0x${hex(unsupported)})`;
    throw new ViommuError('ERR_MULTIBOOT_UNSUPPORTED_FLAGS', `the multiboot image requires ${what}; rebuild it without those header flags`);
  }
  const kernel = header.flags & HEADER_FLAG.addresses ? headerAddressedKernel(image, header.offset) : elfKernel(image);

  const reserved: Span[] = [
    { start: EBDA_BASE, end: Math.min(MIB, options.ramBytes) },
    ...options.reserved.map((r) => ({ start: r.base, end: r.base + r.length })),
  ].filter((span) => span.end > span.start);
  const loaded = kernel.segments.filter((s) => s.memoryLength > 0);
  if (loaded.length === 0)
    throw new ViommuError('ERR_MULTIBOOT_BAD_IMAGE', 'the multiboot image has nothing to load; check its program headers or load addresses');
  for (const segment of loaded) checkSegment(segment, options.ramBytes, reserved);
  if (!loaded.some((s) => kernel.entry >= s.address && kernel.entry < s.address + s.memoryLength)) {
    throw new ViommuError(
      'ERR_MULTIBOOT_ENTRY',
      `the multiboot image's entry point 0x${hex(kernel.entry)} is outside everything it loads; check the ELF entry or the header's entry_addr`,
    );
  }

  const memoryMap = buildMemoryMap(options.ramBytes, reserved);
  const free = new FreeSpace(
    memoryMap,
    loaded.map((s) => ({ start: s.address, end: s.address + s.memoryLength })),
  );
  const modules = options.modules ?? [];
  const strings = new StringTable([options.commandLine ?? '', BOOT_LOADER_NAME, ...modules.map((m) => m.commandLine)]);
  const mmapOffset = INFO_BYTES;
  const modulesOffset = mmapOffset + memoryMap.length * MMAP_ENTRY_BYTES;
  const stringsOffset = modulesOffset + modules.length * MODULE_ENTRY_BYTES;
  const infoLength = stringsOffset + strings.bytes.length;
  const infoAddress = free.take(infoLength, 16, INFO_PREFERRED_FLOOR) ?? free.take(infoLength, 16, PAGE);
  if (infoAddress === undefined) throw noRoom(`the ${infoLength}-byte boot information`);

  const imageEnd = Math.max(...loaded.map((s) => s.address + s.memoryLength));
  const moduleAddresses = modules.map((module, index) => {
    // An empty module still gets a page of its own, so that no two modules share a start address.
    const length = Math.max(module.bytes.length, 1);
    const address = free.take(length, PAGE, alignUp(imageEnd, PAGE)) ?? free.take(length, PAGE, PAGE);
    if (address === undefined) throw noRoom(`module ${index} (${module.bytes.length} bytes)`);
    return address;
  });

  const info = new Uint8Array(infoLength);
  const view = new DataView(info.buffer);
  view.setUint32(INFO.flags, INFO_FLAG.memory | INFO_FLAG.cmdline | INFO_FLAG.modules | INFO_FLAG.memoryMap | INFO_FLAG.bootLoaderName, true);
  view.setUint32(INFO.memLower, lowerMemoryKib(options.ramBytes, reserved), true);
  view.setUint32(INFO.memUpper, upperMemoryKib(memoryMap), true);
  view.setUint32(INFO.cmdline, infoAddress + stringsOffset + strings.offsets[0], true);
  view.setUint32(INFO.modsCount, modules.length, true);
  view.setUint32(INFO.modsAddr, modules.length ? infoAddress + modulesOffset : 0, true);
  view.setUint32(INFO.mmapLength, memoryMap.length * MMAP_ENTRY_BYTES, true);
  view.setUint32(INFO.mmapAddr, infoAddress + mmapOffset, true);
  view.setUint32(INFO.bootLoaderName, infoAddress + stringsOffset + strings.offsets[1], true);
  memoryMap.forEach((entry, i) => {
    const at = mmapOffset + i * MMAP_ENTRY_BYTES;
    view.setUint32(at, MMAP_ENTRY_SIZE_FIELD, true);
    view.setBigUint64(at + 4, BigInt(entry.start), true);
    view.setBigUint64(at + 12, BigInt(entry.end - entry.start), true);
    view.setUint32(at + 20, entry.type, true);
  });
  modules.forEach((module, i) => {
    const at = modulesOffset + i * MODULE_ENTRY_BYTES;
    view.setUint32(at, moduleAddresses[i], true);
    view.setUint32(at + 4, moduleAddresses[i] + module.bytes.length, true);
    view.setUint32(at + 8, infoAddress + stringsOffset + strings.offsets[2 + i], true);
  });
  info.set(strings.bytes, stringsOffset);

  for (const segment of loaded) {
    memory.write(segment.address, segment.file);
    writeZeros(memory, segment.address + segment.file.length, segment.memoryLength - segment.file.length);
  }
  modules.forEach((module, i) => memory.write(moduleAddresses[i], module.bytes));
  memory.write(infoAddress, info);

  return {
    entry: kernel.entry,
    infoAddress,
    magic: MULTIBOOT_BOOTLOADER_MAGIC,
    loaded: loaded.map((s) => ({ base: s.address, length: s.memoryLength })),
  };
}

function checkOptions(options: MultibootOptions): void {
  if (!Number.isSafeInteger(options.ramBytes) || options.ramBytes <= 0) {
    throw new ViommuError('ERR_MULTIBOOT_OPTIONS', `ramBytes ${options.ramBytes} must be a positive whole number of bytes`);
  }
  for (const range of options.reserved) {
    if (
      !Number.isSafeInteger(range.base) ||
      !Number.isSafeInteger(range.length) ||
      range.base < 0 ||
      range.length <= 0 ||
      range.base + range.length > options.ramBytes
    ) {
      throw new ViommuError(
        'ERR_MULTIBOOT_OPTIONS',
        `reserved range base 0x${hex(range.base)} length 0x${hex(range.length)} must be a non-empty range inside RAM [0, 0x${hex(options.ramBytes)})`,
      );
    }
  }
  const strings: [string, string][] = [
    ['the command line', options.commandLine ?? ''],
    ...(options.modules ?? []).map((m, i): [string, string] => [`module ${i}'s command line`, m.commandLine]),
  ];
  for (const [what, value] of strings) {
    if (value.includes('\0'))
      throw new ViommuError('ERR_MULTIBOOT_OPTIONS', `${what} contains a NUL, which would cut it short for the guest; remove it`);
  }
}

function findHeader(image: Uint8Array): { offset: number; flags: number } {
  const view = dataView(image);
  const searchEnd = Math.min(HEADER_SEARCH_BYTES, image.length);
  let badChecksumAt: number | undefined;
  for (let offset = 0; offset + HEADER_BYTES <= searchEnd; offset += 4) {
    if (view.getUint32(offset, true) !== HEADER_MAGIC) continue;
    const flags = view.getUint32(offset + 4, true);
    // The magic can occur by chance; like GRUB, keep looking past one whose checksum fails.
    if ((HEADER_MAGIC + flags + view.getUint32(offset + 8, true)) >>> 0 === 0) return { offset, flags };
    badChecksumAt ??= offset;
  }
  if (badChecksumAt !== undefined) {
    throw new ViommuError(
      'ERR_MULTIBOOT_CHECKSUM',
      `the multiboot header at offset 0x${hex(badChecksumAt)} has a bad checksum (magic + flags + checksum must be 0 mod 2^32); fix the image`,
    );
  }
  throw new ViommuError(
    'ERR_MULTIBOOT_NO_HEADER',
    'no multiboot header (magic 0x1BADB002, 4-byte aligned) in the first 8 KiB of the image; pass a multiboot kernel',
  );
}

/** Flag 16: the header says where the file goes, whatever its format. */
function headerAddressedKernel(image: Uint8Array, headerOffset: number): Kernel {
  const bad = (why: string): ViommuError =>
    new ViommuError('ERR_MULTIBOOT_BAD_ADDRESSES', `the multiboot header's load addresses are unusable: ${why}; fix the image's header`);
  if (headerOffset + ADDRESS_HEADER_BYTES > image.length) throw bad('the header is cut short before entry_addr');
  const view = dataView(image);
  const [headerAddress, loadAddress, loadEndAddress, bssEndAddress, entry] = [12, 16, 20, 24, 28].map((at) =>
    view.getUint32(headerOffset + at, true),
  ) as [number, number, number, number, number];
  if (loadAddress > headerAddress) throw bad(`load_addr 0x${hex(loadAddress)} is above header_addr 0x${hex(headerAddress)}`);
  const fileOffset = headerOffset - (headerAddress - loadAddress);
  if (fileOffset < 0) throw bad(`load_addr 0x${hex(loadAddress)} is before the start of the file`);
  if (loadEndAddress !== 0 && loadEndAddress < loadAddress) throw bad(`load_end_addr 0x${hex(loadEndAddress)} is below load_addr`);
  const fileLength = loadEndAddress === 0 ? image.length - fileOffset : loadEndAddress - loadAddress;
  if (fileOffset + fileLength > image.length)
    throw bad(`[load_addr, load_end_addr) needs 0x${hex(fileLength)} bytes from file offset 0x${hex(fileOffset)}, past the file's end`);
  const loadEnd = loadAddress + fileLength;
  if (bssEndAddress !== 0 && bssEndAddress < loadEnd)
    throw bad(`bss_end_addr 0x${hex(bssEndAddress)} is below the loaded data's end 0x${hex(loadEnd)}`);
  const memoryLength = (bssEndAddress === 0 ? loadEnd : bssEndAddress) - loadAddress;
  return { segments: [{ address: loadAddress, file: image.subarray(fileOffset, fileOffset + fileLength), memoryLength }], entry };
}

/*
 * The ELF fields read, by class (offsets in bytes):
 *
 * | field       | ELF32 | ELF64 |   | program header | ELF32 | ELF64 |
 * |-------------|-------|-------|---|----------------|-------|-------|
 * | e_type      | 16    | 16    |   | p_type         | 0     | 0     |
 * | e_machine   | 18    | 18    |   | p_offset       | 4     | 8     |
 * | e_entry     | 24    | 24    |   | p_vaddr        | 8     | 16    |
 * | e_phoff     | 28    | 32    |   | p_paddr        | 12    | 24    |
 * | e_phentsize | 42    | 54    |   | p_filesz       | 16    | 32    |
 * | e_phnum     | 44    | 56    |   | p_memsz        | 20    | 40    |
 */
const ELF_LAYOUT = {
  1: { word: 4, entry: 24, phoff: 28, phentsize: 42, phnum: 44, phdrBytes: 32, pOffset: 4, pVaddr: 8, pPaddr: 12, pFilesz: 16, pMemsz: 20 },
  2: { word: 8, entry: 24, phoff: 32, phentsize: 54, phnum: 56, phdrBytes: 56, pOffset: 8, pVaddr: 16, pPaddr: 24, pFilesz: 32, pMemsz: 40 },
} as const;
const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];
const ELF_DATA_LITTLE_ENDIAN = 1;
const ET_EXEC = 2;
const EM_386 = 3;
const EM_X86_64 = 62;
const PT_LOAD = 1;

/** Loads PT_LOAD segments at their physical addresses; the entry, a virtual address, is translated through the segment holding it, as GRUB does. */
function elfKernel(image: Uint8Array): Kernel {
  const bad = (why: string): ViommuError =>
    new ViommuError('ERR_MULTIBOOT_BAD_ELF', `the multiboot image ${why}; pass an ELF executable or set header flag 16 with load addresses`);
  if (image.length < 64 || ELF_MAGIC.some((byte, i) => image[i] !== byte)) throw bad('is not ELF and its header has no load addresses');
  const elfClass = image[4];
  if (elfClass !== 1 && elfClass !== 2) throw bad(`has unknown ELF class ${elfClass}`);
  if (image[5] !== ELF_DATA_LITTLE_ENDIAN) throw bad('is big-endian ELF');
  const layout = ELF_LAYOUT[elfClass];
  const view = dataView(image);
  // Virtual addresses stay exact (a higher-half ELF64 entry needs all 64 bits); the rest become numbers via `small`.
  const word = (at: number): bigint => (layout.word === 4 ? BigInt(view.getUint32(at, true)) : view.getBigUint64(at, true));
  if (view.getUint16(16, true) !== ET_EXEC) throw bad('is not an ELF executable (e_type is not ET_EXEC)');
  const machine = view.getUint16(18, true);
  if (machine !== EM_386 && machine !== EM_X86_64) throw bad(`is for ELF machine ${machine}, not x86`);
  const phoff = small(word(layout.phoff));
  const phentsize = view.getUint16(layout.phentsize, true);
  const phnum = view.getUint16(layout.phnum, true);
  if (phentsize < layout.phdrBytes || phoff + phnum * phentsize > image.length) throw bad('has program headers past the end of the file');

  const segments: Segment[] = [];
  const virtualRanges: { vaddr: bigint; paddr: bigint; memsz: bigint }[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (view.getUint32(at, true) !== PT_LOAD) continue;
    const [offset, vaddr, paddr, filesz, memsz] = [layout.pOffset, layout.pVaddr, layout.pPaddr, layout.pFilesz, layout.pMemsz].map((field) =>
      word(at + field),
    ) as [bigint, bigint, bigint, bigint, bigint];
    if (filesz > memsz) throw bad(`has segment ${i} with p_filesz 0x${filesz.toString(16)} above p_memsz 0x${memsz.toString(16)}`);
    if (offset + filesz > BigInt(image.length)) throw bad(`has segment ${i} reaching past the end of the file`);
    segments.push({ address: small(paddr), file: image.subarray(Number(offset), Number(offset + filesz)), memoryLength: small(memsz) });
    virtualRanges.push({ vaddr, paddr, memsz });
  }
  const elfEntry = word(layout.entry);
  const holder = virtualRanges.find((r) => elfEntry >= r.vaddr && elfEntry < r.vaddr + r.memsz);
  return { segments, entry: small(holder ? elfEntry - holder.vaddr + holder.paddr : elfEntry) };
}

/** Values past 2^53 lie beyond any file or RAM: as Infinity they fail the range checks instead of rounding into range. */
function small(value: bigint): number {
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : Infinity;
}

function checkSegment(segment: Segment, ramBytes: number, reserved: readonly Span[]): void {
  const start = segment.address;
  const end = segment.address + segment.memoryLength;
  const where = `[0x${hex(start)}, 0x${hex(end)})`;
  if (end > Math.min(ramBytes, FOUR_GIB)) {
    throw new ViommuError(
      'ERR_MULTIBOOT_SEGMENT_OUTSIDE_RAM',
      `the multiboot image loads ${where}, outside RAM [0, 0x${hex(ramBytes)}) below 4 GiB; give the machine more RAM or relink the image`,
    );
  }
  const clash = reserved.find((r) => r.start < end && start < r.end);
  if (clash) {
    throw new ViommuError(
      'ERR_MULTIBOOT_SEGMENT_RESERVED',
      `the multiboot image loads ${where}, over the reserved range [0x${hex(clash.start)}, 0x${hex(clash.end)}); relink the image elsewhere`,
    );
  }
}

interface MemoryMapEntry extends Span {
  type: number;
}

/** Sorted, non-overlapping entries covering exactly [0, ramBytes), neighbours of one type merged. */
function buildMemoryMap(ramBytes: number, reserved: readonly Span[]): MemoryMapEntry[] {
  const clipped = reserved.map((r) => ({ start: Math.max(0, r.start), end: Math.min(ramBytes, r.end) })).filter((r) => r.end > r.start);
  const boundaries = [...new Set([0, ramBytes, ...clipped.flatMap((r) => [r.start, r.end])])].sort((a, b) => a - b);
  const entries: MemoryMapEntry[] = [];
  for (let i = 0; i + 1 < boundaries.length; i++) {
    const start = boundaries[i];
    const end = boundaries[i + 1];
    const type = clipped.some((r) => r.start <= start && end <= r.end) ? MEMORY_TYPE.reserved : MEMORY_TYPE.available;
    const last = entries[entries.length - 1];
    if (last && last.type === type) last.end = end;
    else entries.push({ start, end, type });
  }
  return entries;
}

/** 640 KiB on a PC, as QEMU reports even though the EBDA's top KiB is reserved; less if RAM or a reserved range ends it sooner. */
function lowerMemoryKib(ramBytes: number, reserved: readonly Span[]): number {
  const end = Math.min(ramBytes, LOW_MEMORY_END, ...reserved.filter((r) => r.start < EBDA_BASE).map((r) => r.start));
  return Math.floor(end / KIB);
}

/** The available run that starts at 1 MiB, to its first hole; kvm-unit-tests takes this as its heap's end. */
function upperMemoryKib(memoryMap: readonly MemoryMapEntry[]): number {
  const run = memoryMap.find((e) => e.type === MEMORY_TYPE.available && e.start <= MIB && MIB < e.end);
  return run ? Math.floor((Math.min(run.end, FOUR_GIB) - MIB) / KIB) : 0;
}

/** Available RAM the loader may still use: not the first page, not the image, below 4 GiB. */
class FreeSpace {
  private spans: Span[];

  constructor(memoryMap: readonly MemoryMapEntry[], taken: readonly Span[]) {
    this.spans = memoryMap
      .filter((e) => e.type === MEMORY_TYPE.available)
      .map((e) => ({ start: Math.max(e.start, PAGE), end: Math.min(e.end, FOUR_GIB) }))
      .filter((s) => s.end > s.start);
    for (const span of taken) this.remove(span);
  }

  /** The lowest `align`-aligned address at or above `floor` with `length` free bytes, now taken; undefined if none. */
  take(length: number, align: number, floor: number): number | undefined {
    for (const span of this.spans) {
      const start = alignUp(Math.max(span.start, floor), align);
      if (start + length <= span.end) {
        this.remove({ start, end: start + length });
        return start;
      }
    }
    return undefined;
  }

  private remove(taken: Span): void {
    this.spans = this.spans.flatMap((s) => {
      if (taken.end <= s.start || s.end <= taken.start) return [s];
      return [
        { start: s.start, end: taken.start },
        { start: taken.end, end: s.end },
      ].filter((part) => part.end > part.start);
    });
  }
}

/** NUL-terminated strings packed end to end, UTF-8 as a C kernel would see the bytes. */
class StringTable {
  readonly bytes: Uint8Array;
  readonly offsets: number[] = [];

  constructor(strings: readonly string[]) {
    const encoded = strings.map((s) => new TextEncoder().encode(s));
    this.bytes = new Uint8Array(encoded.reduce((sum, e) => sum + e.length + 1, 0));
    let at = 0;
    for (const e of encoded) {
      this.offsets.push(at);
      this.bytes.set(e, at);
      at += e.length + 1;
    }
  }
}

/** Bounded chunks, so a large bss (kvm-unit-tests' is 12 MiB) costs one small buffer. */
const ZERO_CHUNK = new Uint8Array(MIB);

function writeZeros(memory: { write(address: number, data: Uint8Array): void }, address: number, length: number): void {
  for (let done = 0; done < length; done += ZERO_CHUNK.length) {
    memory.write(address + done, ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, length - done)));
  }
}

function noRoom(what: string): ViommuError {
  return new ViommuError(
    'ERR_MULTIBOOT_NO_ROOM',
    `no free RAM below 4 GiB (outside the image, reserved ranges and the first page) holds ${what}; give the machine more RAM`,
  );
}

function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

function hex(value: number): string {
  return value.toString(16);
}
