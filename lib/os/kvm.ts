/** KvmTranslator: the host CPU's paging rules, through KVM_TRANSLATE, as an oracle for IA-32e tables in guest memory. */
import { ViommuError } from '../errors';
import { PAGE_BYTES } from '../memory/geometry';
import { isSystemCallError, native, type KvmCpuidEntry, type KvmSegment, type KvmSregs, type NativeKvmVm } from '../native';

/** What the VM is given as guest RAM: a SharedRegion fits (its buffer is its memfd mapping, page aligned). */
export interface KvmGuestMemory {
  readonly buffer: ArrayBuffer;
  readonly mapped: boolean;
}

export interface KvmTranslatorOptions {
  /** 4 (CR4.LA57 clear) or 5 (LA57 set: needs a host CPU with 5-level paging). Default 4. */
  readonly levels?: 4 | 5;
  /**
   * The vCPU's MAXPHYADDR (CPUID 0x80000008 EAX[7:0]): address bits from here to 51 are reserved in every entry,
   * as a VT-d unit's host address width makes them. Default 48.
   */
  readonly physicalAddressBits?: number;
  /** CPUID Page1GB: without it, PS in a PDPE is reserved (VT-d's FS1GP). Default true. */
  readonly pages1g?: boolean;
  /** Default /dev/kvm. */
  readonly devicePath?: string;
}

export interface KvmTranslation {
  /** KVM found a translation for a supervisor-mode data read. */
  readonly valid: boolean;
  /** The guest-physical address, page base plus the input's offset; present when valid. */
  readonly physicalAddress?: number;
  /**
   * Present when valid and the translator has the SMAP probe: the same read is refused with CR4.SMAP set
   * (EFLAGS.AC clear), which happens exactly when U/S is 1 at every level, i.e. a user-mode page.
   */
  readonly userPage?: boolean;
  /**
   * The ioctl's own writeable and usermode fields, as reported. Linux fills them with the constants 1 and 0
   * (kvm_arch_vcpu_ioctl_translate in arch/x86/kvm/x86.c), so they say nothing about the tables.
   */
  readonly reported: { readonly writeable: boolean; readonly usermode: boolean };
}

/** Why no translator: KVM itself is unusable, or it cannot walk what the options ask for. */
export type KvmUnusableCause = 'kvm' | '5-level' | '1g-pages';

export type KvmOpenResult =
  | { readonly translator: KvmTranslator; readonly reason?: undefined; readonly cause?: undefined }
  | { readonly translator?: undefined; readonly reason: string; readonly cause: KvmUnusableCause };

/** x86 architectural bits this module programs (Intel SDM vol. 3 ch. 2 and vol. 2 CPUID). */
const CR0 = { PE: 1n << 0n, ET: 1n << 4n, NE: 1n << 5n, WP: 1n << 16n, PG: 1n << 31n } as const;
const CR4 = { PAE: 1n << 5n, LA57: 1n << 12n, SMAP: 1n << 21n } as const;
const EFER = { LME: 1n << 8n, LMA: 1n << 10n, NXE: 1n << 11n } as const;
const CPUID = {
  VENDOR: { leaf: 0, index: 0 },
  STRUCTURED: { leaf: 7, index: 0 },
  EXTENDED: { leaf: 0x8000_0001, index: 0 },
  ADDRESS_SIZES: { leaf: 0x8000_0008, index: 0 },
} as const;
const STRUCTURED_EBX_SMAP = 1 << 20;
const STRUCTURED_ECX_LA57 = 1 << 16;
const EXTENDED_EDX_NX = 1 << 20;
const EXTENDED_EDX_PAGE1GB = 1 << 26;
const EXTENDED_EDX_LM = 1 << 29;
const PHYSICAL_BITS_MASK = 0xff;
/** "GenuineIntel" as CPUID leaf 0 spells it in EBX, EDX, ECX: KVM then applies Intel's reserved-bit rules. */
const INTEL_VENDOR = { ebx: 0x756e_6547, edx: 0x4965_6e69, ecx: 0x6c65_746e } as const;
const SEGMENT_TYPE = { DATA_READ_WRITE_ACCESSED: 3, CODE_EXECUTE_READ_ACCESSED: 11 } as const;
const SELECTOR = { CODE: 0x08, DATA: 0x10 } as const;
const MIN_PHYSICAL_BITS = 32;
const MAX_PHYSICAL_BITS = 52;
/** vCPU 0 walks as the CPU does with SMAP off; vCPU 1, when the host allows it, has CR4.SMAP set. */
const PLAIN_VCPU = 0;
const SMAP_VCPU = 1;

class Unusable extends Error {
  constructor(
    readonly unusableCause: KvmUnusableCause,
    message: string,
  ) {
    super(message);
  }
}

/** Why KVM cannot serve, from the error opening or setting it up raised (other errors are rethrown). */
export function unusable(error: unknown, path: string): { reason: string; cause: KvmUnusableCause } {
  if (error instanceof Unusable) return { reason: error.message, cause: error.unusableCause };
  if (!isSystemCallError(error)) throw error;
  if (error.syscall === 'open' && error.code === 'ENOENT') {
    return { reason: `${path} does not exist (no KVM on this machine, or the device was not passed into the container)`, cause: 'kvm' };
  }
  if (error.syscall === 'open' && (error.code === 'EACCES' || error.code === 'EPERM')) {
    return { reason: `no permission to open ${path} (the user must be allowed to use it, usually through the kvm group)`, cause: 'kvm' };
  }
  return { reason: `KVM is not usable: ${error.message}`, cause: 'kvm' };
}

function leaf(entries: KvmCpuidEntry[], which: { leaf: number; index: number }): KvmCpuidEntry {
  const entry = entries.find((e) => e.function === which.leaf && e.index === which.index);
  if (!entry) throw new Unusable('kvm', `KVM offers no CPUID leaf 0x${which.leaf.toString(16)}`);
  return entry;
}

/** The guest CPUID: what KVM supports, as an Intel CPU, with the paging features the options ask for. */
function guestCpuid(supported: KvmCpuidEntry[], options: Required<KvmTranslatorOptions>): KvmCpuidEntry[] {
  const entries = supported.map((e) => ({ ...e }));
  Object.assign(leaf(entries, CPUID.VENDOR), INTEL_VENDOR);
  const extended = leaf(entries, CPUID.EXTENDED);
  if ((extended.edx & EXTENDED_EDX_LM) === 0 || (extended.edx & EXTENDED_EDX_NX) === 0) {
    throw new Unusable('kvm', 'KVM offers no long mode or no execute-disable');
  }
  // KVM's walker honours Page1GB only where KVM itself offers it (forcing the bit on changes nothing).
  if (options.pages1g && (extended.edx & EXTENDED_EDX_PAGE1GB) === 0) {
    throw new Unusable('1g-pages', 'KVM offers no 1 GiB pages (CPUID Page1GB) on this host');
  }
  if (!options.pages1g) extended.edx = (extended.edx & ~EXTENDED_EDX_PAGE1GB) >>> 0;
  const structured = leaf(entries, CPUID.STRUCTURED);
  if (options.levels === 5 && (structured.ecx & STRUCTURED_ECX_LA57) === 0) {
    throw new Unusable('5-level', 'the host CPU has no 5-level paging (CPUID LA57), so KVM cannot walk 5-level tables');
  }
  // Offered even where KVM does not list it: it is only a probe for translations, and setSregs says whether it took.
  structured.ebx = (structured.ebx | STRUCTURED_EBX_SMAP) >>> 0;
  const sizes = leaf(entries, CPUID.ADDRESS_SIZES);
  sizes.eax = ((sizes.eax & ~PHYSICAL_BITS_MASK) | options.physicalAddressBits) >>> 0;
  return entries;
}

function longMode(current: KvmSregs, cr3: bigint, cr4: bigint): KvmSregs {
  const data: KvmSegment = {
    base: 0n,
    limit: 0xffff_ffff,
    selector: SELECTOR.DATA,
    type: SEGMENT_TYPE.DATA_READ_WRITE_ACCESSED,
    present: true,
    dpl: 0,
    db: true,
    s: true,
    l: false,
    g: true,
    avl: false,
    unusable: false,
  };
  const code: KvmSegment = { ...data, selector: SELECTOR.CODE, type: SEGMENT_TYPE.CODE_EXECUTE_READ_ACCESSED, db: false, l: true };
  return {
    ...current,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    cr0: CR0.PE | CR0.ET | CR0.NE | CR0.WP | CR0.PG,
    cr3,
    cr4,
    efer: EFER.LME | EFER.LMA | EFER.NXE,
  };
}

/**
 * A KVM VM whose RAM is one region of ours and whose vCPUs sit in long mode (CR0.PG and WP, CR4.PAE, EFER.LME,
 * LMA and NXE, CR3 at our table) without ever running: translate() asks KVM to walk our tables as the CPU would
 * for a supervisor-mode read. KVM walks in software, applying the vCPU's CPUID (MAXPHYADDR, 1 GiB pages, vendor),
 * and sets Accessed flags in the entries of a walk that succeeds.
 */
export class KvmTranslator {
  private root: number;

  private constructor(
    private readonly vm: NativeKvmVm,
    readonly options: Readonly<Required<KvmTranslatorOptions>>,
    readonly guestPhysicalBase: number,
    /** Why translations carry no userPage, when they do not. */
    readonly userPageProbeMissing: string | undefined,
    /** The registers last set on each long-mode vCPU (index = vCPU). */
    private readonly sregs: KvmSregs[],
  ) {
    this.root = guestPhysicalBase;
  }

  /**
   * Opens a translator over `memory` mapped at `guestPhysicalBase`, or says why KVM cannot serve (no device, no
   * permission, an API or CPU that lacks what the options need). Programmer mistakes (bad options, memory that
   * is already unmapped) throw.
   */
  static open(memory: KvmGuestMemory, guestPhysicalBase: number, options: KvmTranslatorOptions = {}): KvmOpenResult {
    const resolved: Required<KvmTranslatorOptions> = {
      levels: options.levels ?? 4,
      physicalAddressBits: options.physicalAddressBits ?? 48,
      pages1g: options.pages1g ?? true,
      devicePath: options.devicePath ?? '/dev/kvm',
    };
    checkOptions(resolved, guestPhysicalBase);
    if (!memory.mapped) throw new ViommuError('ERR_KVM_MEMORY_UNMAPPED', 'KvmTranslator.open: the guest memory is already unmapped');
    const constructor = native.KvmVm;
    if (!constructor) return { reason: 'this build of the addon has no KVM support (x86-64 Linux only)', cause: 'kvm' };
    let vm: NativeKvmVm;
    try {
      vm = new constructor(resolved.devicePath);
    } catch (error) {
      return unusable(error, resolved.devicePath);
    }
    try {
      const cpuid = guestCpuid(vm.supportedCpuid(), resolved);
      vm.setUserMemoryRegion(0, guestPhysicalBase, memory.buffer);
      const cr4 = CR4.PAE | (resolved.levels === 5 ? CR4.LA57 : 0n);
      const plain = vm.createVcpu();
      vm.setCpuid(plain, cpuid);
      const sregs = [longMode(vm.getSregs(plain), BigInt(guestPhysicalBase), cr4)];
      vm.setSregs(plain, sregs[PLAIN_VCPU]!);
      let probeMissing: string | undefined;
      const smap = vm.createVcpu();
      vm.setCpuid(smap, cpuid);
      const smapSregs = longMode(vm.getSregs(smap), BigInt(guestPhysicalBase), cr4 | CR4.SMAP);
      try {
        vm.setSregs(smap, smapSregs);
        sregs.push(smapSregs);
      } catch (error) {
        if (!isSystemCallError(error)) throw error;
        probeMissing = `KVM refused CR4.SMAP (${error.code}), so U/S cannot be observed`;
      }
      return { translator: new KvmTranslator(vm, resolved, guestPhysicalBase, probeMissing, sregs) };
    } catch (error) {
      vm.close();
      if (error instanceof ViommuError) throw error;
      return unusable(error, resolved.devicePath);
    }
  }

  /** Whether translations report userPage (the SMAP probe works on this host). */
  get userPageProbe(): boolean {
    return this.userPageProbeMissing === undefined;
  }

  get closed(): boolean {
    return this.vm.closed;
  }

  /** The top table's guest-physical address (CR3); it starts at the memory's base. */
  get tableRoot(): number {
    return this.root;
  }

  /** Points CR3 at the top table (PML4 or PML5) at `address`: page aligned and below 2^physicalAddressBits. */
  setRoot(address: number): void {
    if (!Number.isSafeInteger(address) || address < 0 || address % PAGE_BYTES !== 0 || address >= 2 ** this.options.physicalAddressBits) {
      throw new ViommuError(
        'ERR_KVM_ROOT',
        `table root 0x${address.toString(16)} must be page aligned and below 2^${this.options.physicalAddressBits}`,
      );
    }
    this.sregs.forEach((sregs, vcpu) => {
      const next = { ...sregs, cr3: BigInt(address) };
      this.vm.setSregs(vcpu, next);
      this.sregs[vcpu] = next;
    });
    this.root = address;
  }

  /**
   * KVM's translation of `linear` (taken modulo 2^64, so negative values name the upper half). KVM does not
   * check canonical form: it indexes with bits 47:12 (56:12 with 5 levels) and ignores the bits above.
   * Throws EFAULT once the guest memory has been unmapped, EBADF once closed.
   */
  translate(linear: bigint): KvmTranslation {
    const address = BigInt.asUintN(64, linear);
    const raw = this.vm.translate(PLAIN_VCPU, address);
    const reported = { writeable: raw.writeable, usermode: raw.usermode };
    if (!raw.valid) return { valid: false, reported };
    const physicalAddress = Number(raw.physicalAddress);
    if (!this.userPageProbe) return { valid: true, physicalAddress, reported };
    const withSmap = this.vm.translate(SMAP_VCPU, address);
    return { valid: true, physicalAddress, userPage: !withSmap.valid, reported };
  }

  /** Closes the VM and its vCPUs and lets go of the guest memory. Idempotent. */
  close(): void {
    this.vm.close();
  }
}

function checkOptions(options: Required<KvmTranslatorOptions>, base: number): void {
  if (options.levels !== 4 && options.levels !== 5) {
    throw new ViommuError('ERR_KVM_OPTIONS', `levels must be 4 or 5, not ${String(options.levels)}`);
  }
  const bits = options.physicalAddressBits;
  if (!Number.isInteger(bits) || bits < MIN_PHYSICAL_BITS || bits > MAX_PHYSICAL_BITS) {
    throw new ViommuError('ERR_KVM_OPTIONS', `physicalAddressBits must be an integer in [${MIN_PHYSICAL_BITS}, ${MAX_PHYSICAL_BITS}], not ${bits}`);
  }
  if (!Number.isSafeInteger(base) || base < 0 || base % PAGE_BYTES !== 0 || base >= 2 ** bits) {
    throw new ViommuError('ERR_KVM_OPTIONS', `guestPhysicalBase 0x${base.toString(16)} must be page aligned and below 2^${bits}`);
  }
}
