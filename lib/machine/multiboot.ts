/** Multiboot 1 loader: puts a kernel image (ELF32, ELF64 or a.out-kludge), its modules and the boot information into guest RAM, as GRUB or QEMU's -kernel would. */
import { defineStruct, readField, type StructValue } from '../byte-layout';
import { ViommuError } from '../errors';
import { PAGE_BYTES } from '../memory/geometry';

/** Multiboot header (Multiboot Specification 0.6.96, section 3.1), 4-byte aligned within the image's first 8 KiB. */
const MULTIBOOT_HEADER = defineStruct('multiboot_header', [
  { key: 'magic', spec: 'magic', offset: 0, width: 4 },
  /** Bits 0-15 are features the kernel requires, bits 16-31 optional ones (HEADER_FLAG). */
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  /** magic + flags + checksum = 0 (mod 2^32). */
  { key: 'checksum', spec: 'checksum', offset: 8, width: 4 },
  // The rest counts only with flag 16: where the file goes, whatever its format (the "a.out kludge").
  /** Physical address of this header. */
  { key: 'headerAddr', spec: 'header_addr', offset: 12, width: 4 },
  /** Physical address of the first loaded byte (at or below header_addr). */
  { key: 'loadAddr', spec: 'load_addr', offset: 16, width: 4 },
  /** End of text and data; 0 loads to the end of the file. */
  { key: 'loadEndAddr', spec: 'load_end_addr', offset: 20, width: 4 },
  /** End of the zeroed area after the data; 0 means no bss. */
  { key: 'bssEndAddr', spec: 'bss_end_addr', offset: 24, width: 4 },
  { key: 'entryAddr', spec: 'entry_addr', offset: 28, width: 4 },
] as const);

const HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
const HEADER_SEARCH_BYTES = 8192;
/** What every header has; the address fields follow only where flag 16 asks for them. */
const HEADER_BYTES = MULTIBOOT_HEADER.offsetOf('headerAddr');

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

/**
 * Multiboot information (section 3.3), the structure EBX points to. `flags` says which fields are valid; this
 * loader fills those of INFO_FLAG and leaves the rest zero (the whole table is written, so a kernel reading every
 * field reads zeros, not our strings).
 */
const MULTIBOOT_INFO = defineStruct('multiboot_info', [
  { key: 'flags', spec: 'flags', offset: 0, width: 4 },
  /** Flag 0: KiB of RAM from 0, at most 640. */
  { key: 'memLower', spec: 'mem_lower', offset: 4, width: 4 },
  /** Flag 0: KiB of RAM from 1 MiB to the first hole (at most 4 GiB). */
  { key: 'memUpper', spec: 'mem_upper', offset: 8, width: 4 },
  { key: 'bootDevice', spec: 'boot_device', offset: 12, width: 4 },
  /** Flag 2: address of a NUL-terminated string ("" if none was given). */
  { key: 'cmdline', spec: 'cmdline', offset: 16, width: 4 },
  /** Flag 3: the module table (MODULE_ENTRY). */
  { key: 'modsCount', spec: 'mods_count', offset: 20, width: 4 },
  { key: 'modsAddr', spec: 'mods_addr', offset: 24, width: 4 },
  /** Flags 4 or 5: the a.out symbol table or the ELF section headers (a union). */
  { key: 'syms', spec: 'u.aout_sym / u.elf_sec', offset: 28, width: 16, kind: 'bytes' },
  /** Flag 6: the memory map (MMAP_ENTRY). */
  { key: 'mmapLength', spec: 'mmap_length', offset: 44, width: 4 },
  { key: 'mmapAddr', spec: 'mmap_addr', offset: 48, width: 4 },
  { key: 'drivesLength', spec: 'drives_length', offset: 52, width: 4 },
  { key: 'drivesAddr', spec: 'drives_addr', offset: 56, width: 4 },
  { key: 'configTable', spec: 'config_table', offset: 60, width: 4 },
  /** Flag 9: address of a NUL-terminated string. */
  { key: 'bootLoaderName', spec: 'boot_loader_name', offset: 64, width: 4 },
  { key: 'apmTable', spec: 'apm_table', offset: 68, width: 4 },
  { key: 'vbeControlInfo', spec: 'vbe_control_info', offset: 72, width: 4 },
  { key: 'vbeModeInfo', spec: 'vbe_mode_info', offset: 76, width: 4 },
  { key: 'vbeMode', spec: 'vbe_mode', offset: 80, width: 2 },
  { key: 'vbeInterfaceSeg', spec: 'vbe_interface_seg', offset: 82, width: 2 },
  { key: 'vbeInterfaceOff', spec: 'vbe_interface_off', offset: 84, width: 2 },
  { key: 'vbeInterfaceLen', spec: 'vbe_interface_len', offset: 86, width: 2 },
  { key: 'framebufferAddr', spec: 'framebuffer_addr', offset: 88, width: 8 },
  { key: 'framebufferPitch', spec: 'framebuffer_pitch', offset: 96, width: 4 },
  { key: 'framebufferWidth', spec: 'framebuffer_width', offset: 100, width: 4 },
  { key: 'framebufferHeight', spec: 'framebuffer_height', offset: 104, width: 4 },
  { key: 'framebufferBpp', spec: 'framebuffer_bpp', offset: 108, width: 1 },
  { key: 'framebufferType', spec: 'framebuffer_type', offset: 109, width: 1 },
  /** The palette or the RGB field positions, by framebuffer_type (a union). */
  { key: 'colorInfo', spec: 'color_info', offset: 110, width: 6, kind: 'bytes' },
] as const);

const INFO_FLAG = { memory: 1 << 0, cmdline: 1 << 2, modules: 1 << 3, memoryMap: 1 << 6, bootLoaderName: 1 << 9 } as const;
/** Every field zero: the start of the information this loader gives, for the fields whose flag it leaves clear. */
const INFO_NOT_GIVEN: StructValue<typeof MULTIBOOT_INFO.fields> = MULTIBOOT_INFO.decode(new Uint8Array(MULTIBOOT_INFO.size));

/** One module (section 3.3, mods_addr); mod_end is exclusive. */
const MODULE_ENTRY = defineStruct('multiboot_mod_list', [
  { key: 'modStart', spec: 'mod_start', offset: 0, width: 4 },
  { key: 'modEnd', spec: 'mod_end', offset: 4, width: 4 },
  /** Address of the module's NUL-terminated command line. */
  { key: 'cmdline', spec: 'string', offset: 8, width: 4 },
  { key: 'pad', spec: 'reserved', offset: 12, width: 4, reserved: true },
] as const);

/** One memory map entry (section 3.3, mmap_addr); `size` counts the bytes after itself, so a reader can step over entries. */
const MMAP_ENTRY = defineStruct('multiboot_mmap_entry', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'baseAddr', spec: 'base_addr', offset: 4, width: 8 },
  { key: 'length', spec: 'length', offset: 12, width: 8 },
  /** MEMORY_TYPE. */
  { key: 'type', spec: 'type', offset: 20, width: 4 },
] as const);
const MMAP_ENTRY_SIZE_FIELD = MMAP_ENTRY.size - MMAP_ENTRY.offsetOf('baseAddr');
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
 * touches the first page, a reserved range or the image; all end below 4 GiB, since the structure holds 32-bit
 * addresses (a module's exclusive end among them). The memory map is a PC's: [0, 0x9fc00) available, [0x9fc00, 0x100000) reserved (EBDA, VGA, ROMs),
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
  const mmapOffset = MULTIBOOT_INFO.size;
  const mmapLength = memoryMap.length * MMAP_ENTRY.size;
  const modulesOffset = mmapOffset + mmapLength;
  const stringsOffset = modulesOffset + modules.length * MODULE_ENTRY.size;
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
  MULTIBOOT_INFO.encode(
    {
      ...INFO_NOT_GIVEN,
      flags: INFO_FLAG.memory | INFO_FLAG.cmdline | INFO_FLAG.modules | INFO_FLAG.memoryMap | INFO_FLAG.bootLoaderName,
      memLower: lowerMemoryKib(options.ramBytes, reserved),
      memUpper: upperMemoryKib(memoryMap),
      cmdline: infoAddress + stringsOffset + strings.offsets[0],
      modsCount: modules.length,
      modsAddr: modules.length ? infoAddress + modulesOffset : 0,
      mmapLength,
      mmapAddr: infoAddress + mmapOffset,
      bootLoaderName: infoAddress + stringsOffset + strings.offsets[1],
    },
    info,
  );
  memoryMap.forEach((entry, i) => {
    const value = { size: MMAP_ENTRY_SIZE_FIELD, baseAddr: BigInt(entry.start), length: BigInt(entry.end - entry.start), type: entry.type };
    MMAP_ENTRY.encode(value, info, mmapOffset + i * MMAP_ENTRY.size);
  });
  modules.forEach((module, i) => {
    const value = {
      modStart: moduleAddresses[i],
      modEnd: moduleAddresses[i] + module.bytes.length,
      cmdline: infoAddress + stringsOffset + strings.offsets[2 + i],
    };
    MODULE_ENTRY.encode(value, info, modulesOffset + i * MODULE_ENTRY.size);
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
  const searchEnd = Math.min(HEADER_SEARCH_BYTES, image.length);
  let badChecksumAt: number | undefined;
  for (let offset = 0; offset + HEADER_BYTES <= searchEnd; offset += 4) {
    if (readField(MULTIBOOT_HEADER, image, 'magic', offset) !== HEADER_MAGIC) continue;
    const flags = readField(MULTIBOOT_HEADER, image, 'flags', offset);
    // The magic can occur by chance; like GRUB, keep looking past one whose checksum fails.
    if ((HEADER_MAGIC + flags + readField(MULTIBOOT_HEADER, image, 'checksum', offset)) >>> 0 === 0) return { offset, flags };
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
  if (headerOffset + MULTIBOOT_HEADER.size > image.length) throw bad('the header is cut short before entry_addr');
  const { headerAddr, loadAddr, loadEndAddr, bssEndAddr, entryAddr } = MULTIBOOT_HEADER.decode(image, headerOffset);
  if (loadAddr > headerAddr) throw bad(`load_addr 0x${hex(loadAddr)} is above header_addr 0x${hex(headerAddr)}`);
  const fileOffset = headerOffset - (headerAddr - loadAddr);
  if (fileOffset < 0) throw bad(`load_addr 0x${hex(loadAddr)} is before the start of the file`);
  if (loadEndAddr !== 0 && loadEndAddr < loadAddr) throw bad(`load_end_addr 0x${hex(loadEndAddr)} is below load_addr`);
  const fileLength = loadEndAddr === 0 ? image.length - fileOffset : loadEndAddr - loadAddr;
  if (fileOffset + fileLength > image.length)
    throw bad(`[load_addr, load_end_addr) needs 0x${hex(fileLength)} bytes from file offset 0x${hex(fileOffset)}, past the file's end`);
  const loadEnd = loadAddr + fileLength;
  if (bssEndAddr !== 0 && bssEndAddr < loadEnd) throw bad(`bss_end_addr 0x${hex(bssEndAddr)} is below the loaded data's end 0x${hex(loadEnd)}`);
  const memoryLength = (bssEndAddr === 0 ? loadEnd : bssEndAddr) - loadAddr;
  return { segments: [{ address: loadAddr, file: image.subarray(fileOffset, fileOffset + fileLength), memoryLength }], entry: entryAddr };
}

/** The start of every ELF file (System V ABI, e_ident), before the class is known. */
const ELF_IDENT = defineStruct(
  'e_ident',
  [
    { key: 'magic', spec: 'EI_MAG0-EI_MAG3', offset: 0, width: 4 },
    /** 1 for ELF32, 2 for ELF64: picks the tables below. */
    { key: 'class', spec: 'EI_CLASS', offset: 4, width: 1 },
    { key: 'data', spec: 'EI_DATA', offset: 5, width: 1 },
    { key: 'version', spec: 'EI_VERSION', offset: 6, width: 1 },
    { key: 'osAbi', spec: 'EI_OSABI', offset: 7, width: 1 },
    { key: 'abiVersion', spec: 'EI_ABIVERSION', offset: 8, width: 1 },
  ] as const,
  16,
);

// The ELF file header and program header of each class: the same fields, addresses and offsets 4 or 8 bytes wide.
const ELF32_HEADER = defineStruct('Elf32_Ehdr', [
  { key: 'ident', spec: 'e_ident', offset: 0, width: ELF_IDENT.size, kind: 'bytes' },
  { key: 'type', spec: 'e_type', offset: 16, width: 2 },
  { key: 'machine', spec: 'e_machine', offset: 18, width: 2 },
  { key: 'version', spec: 'e_version', offset: 20, width: 4 },
  { key: 'entry', spec: 'e_entry', offset: 24, width: 4 },
  { key: 'phoff', spec: 'e_phoff', offset: 28, width: 4 },
  { key: 'shoff', spec: 'e_shoff', offset: 32, width: 4 },
  { key: 'flags', spec: 'e_flags', offset: 36, width: 4 },
  { key: 'ehsize', spec: 'e_ehsize', offset: 40, width: 2 },
  { key: 'phentsize', spec: 'e_phentsize', offset: 42, width: 2 },
  { key: 'phnum', spec: 'e_phnum', offset: 44, width: 2 },
  { key: 'shentsize', spec: 'e_shentsize', offset: 46, width: 2 },
  { key: 'shnum', spec: 'e_shnum', offset: 48, width: 2 },
  { key: 'shstrndx', spec: 'e_shstrndx', offset: 50, width: 2 },
] as const);

const ELF64_HEADER = defineStruct('Elf64_Ehdr', [
  { key: 'ident', spec: 'e_ident', offset: 0, width: ELF_IDENT.size, kind: 'bytes' },
  { key: 'type', spec: 'e_type', offset: 16, width: 2 },
  { key: 'machine', spec: 'e_machine', offset: 18, width: 2 },
  { key: 'version', spec: 'e_version', offset: 20, width: 4 },
  { key: 'entry', spec: 'e_entry', offset: 24, width: 8 },
  { key: 'phoff', spec: 'e_phoff', offset: 32, width: 8 },
  { key: 'shoff', spec: 'e_shoff', offset: 40, width: 8 },
  { key: 'flags', spec: 'e_flags', offset: 48, width: 4 },
  { key: 'ehsize', spec: 'e_ehsize', offset: 52, width: 2 },
  { key: 'phentsize', spec: 'e_phentsize', offset: 54, width: 2 },
  { key: 'phnum', spec: 'e_phnum', offset: 56, width: 2 },
  { key: 'shentsize', spec: 'e_shentsize', offset: 58, width: 2 },
  { key: 'shnum', spec: 'e_shnum', offset: 60, width: 2 },
  { key: 'shstrndx', spec: 'e_shstrndx', offset: 62, width: 2 },
] as const);

const ELF32_PROGRAM_HEADER = defineStruct('Elf32_Phdr', [
  { key: 'type', spec: 'p_type', offset: 0, width: 4 },
  { key: 'offset', spec: 'p_offset', offset: 4, width: 4 },
  { key: 'vaddr', spec: 'p_vaddr', offset: 8, width: 4 },
  { key: 'paddr', spec: 'p_paddr', offset: 12, width: 4 },
  { key: 'filesz', spec: 'p_filesz', offset: 16, width: 4 },
  { key: 'memsz', spec: 'p_memsz', offset: 20, width: 4 },
  { key: 'flags', spec: 'p_flags', offset: 24, width: 4 },
  { key: 'align', spec: 'p_align', offset: 28, width: 4 },
] as const);

const ELF64_PROGRAM_HEADER = defineStruct('Elf64_Phdr', [
  { key: 'type', spec: 'p_type', offset: 0, width: 4 },
  { key: 'flags', spec: 'p_flags', offset: 4, width: 4 },
  { key: 'offset', spec: 'p_offset', offset: 8, width: 8 },
  { key: 'vaddr', spec: 'p_vaddr', offset: 16, width: 8 },
  { key: 'paddr', spec: 'p_paddr', offset: 24, width: 8 },
  { key: 'filesz', spec: 'p_filesz', offset: 32, width: 8 },
  { key: 'memsz', spec: 'p_memsz', offset: 40, width: 8 },
  { key: 'align', spec: 'p_align', offset: 48, width: 8 },
] as const);

/** The tables of each EI_CLASS. */
const ELF_CLASS = {
  1: { header: ELF32_HEADER, programHeader: ELF32_PROGRAM_HEADER },
  2: { header: ELF64_HEADER, programHeader: ELF64_PROGRAM_HEADER },
} as const;
/** The larger class's header: no loadable ELF file of either class is shorter. */
const ELF_MIN_BYTES = ELF64_HEADER.size;
/** "\x7fELF", read as a little-endian u32. */
const ELF_MAGIC = 0x464c457f;
const ELF_DATA_LITTLE_ENDIAN = 1;
const ET_EXEC = 2;
const EM_386 = 3;
const EM_X86_64 = 62;
const PT_LOAD = 1;

/** Loads PT_LOAD segments at their physical addresses; the entry, a virtual address, is translated through the segment holding it, as GRUB does. */
function elfKernel(image: Uint8Array): Kernel {
  const bad = (why: string): ViommuError =>
    new ViommuError('ERR_MULTIBOOT_BAD_ELF', `the multiboot image ${why}; pass an ELF executable or set header flag 16 with load addresses`);
  const ident = image.length >= ELF_MIN_BYTES ? ELF_IDENT.decode(image) : undefined;
  if (ident?.magic !== ELF_MAGIC) throw bad('is not ELF and its header has no load addresses');
  if (ident.class !== 1 && ident.class !== 2) throw bad(`has unknown ELF class ${ident.class}`);
  if (ident.data !== ELF_DATA_LITTLE_ENDIAN) throw bad('is big-endian ELF');
  const { header: headerLayout, programHeader } = ELF_CLASS[ident.class];
  // Virtual addresses stay exact as bigints (a higher-half ELF64 entry needs all 64 bits); the rest become numbers via `small`.
  const header = headerLayout.decode(image);
  if (header.type !== ET_EXEC) throw bad('is not an ELF executable (e_type is not ET_EXEC)');
  if (header.machine !== EM_386 && header.machine !== EM_X86_64) throw bad(`is for ELF machine ${header.machine}, not x86`);
  const phoff = small(BigInt(header.phoff));
  const { phentsize, phnum } = header;
  if (phentsize < programHeader.size || phoff + phnum * phentsize > image.length) throw bad('has program headers past the end of the file');

  const segments: Segment[] = [];
  const virtualRanges: { vaddr: bigint; paddr: bigint; memsz: bigint }[] = [];
  for (let i = 0; i < phnum; i++) {
    const segment = programHeader.decode(image, phoff + i * phentsize);
    if (segment.type !== PT_LOAD) continue;
    const [offset, filesz] = [BigInt(segment.offset), BigInt(segment.filesz)];
    const range = { vaddr: BigInt(segment.vaddr), paddr: BigInt(segment.paddr), memsz: BigInt(segment.memsz) };
    if (filesz > range.memsz) throw bad(`has segment ${i} with p_filesz 0x${filesz.toString(16)} above p_memsz 0x${range.memsz.toString(16)}`);
    if (offset + filesz > BigInt(image.length)) throw bad(`has segment ${i} reaching past the end of the file`);
    segments.push({ address: small(range.paddr), file: image.subarray(Number(offset), Number(offset + filesz)), memoryLength: small(range.memsz) });
    virtualRanges.push(range);
  }
  const elfEntry = BigInt(header.entry);
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

/**
 * Available RAM the loader may still use: not the first page, not the image, and ending below 4 GiB by a byte,
 * since the information holds 32-bit addresses and a module's end (mod_end, exclusive) is one of them.
 */
class FreeSpace {
  private spans: Span[];

  constructor(memoryMap: readonly MemoryMapEntry[], taken: readonly Span[]) {
    this.spans = memoryMap
      .filter((e) => e.type === MEMORY_TYPE.available)
      .map((e) => ({ start: Math.max(e.start, PAGE), end: Math.min(e.end, FOUR_GIB - 1) }))
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

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

function hex(value: number): string {
  return value.toString(16);
}
