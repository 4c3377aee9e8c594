/** The one module that loads the native addon (build/Release/viommu_native.node) and gives it types. */
import * as path from 'node:path';

/** The single owner of an OS file descriptor. Closing twice is harmless; a closed one is refused everywhere. */
export interface FileDescriptor {
  readonly fd: number;
  readonly closed: boolean;
  /** Closes the fd; false when it was already closed or handed over. Throws EBUSY while an FdWatch borrows it. */
  close(): boolean;
  /** A new owner of a duplicate of this fd. */
  dup(): FileDescriptor;
  /** fstat size in bytes. */
  size(): number;
  /** The F_GET_SEALS bitmask (FILE_SEALS); 0 for files that cannot be sealed. */
  seals(): number;
  /**
   * Which open file this fd names: fstat's st_dev and st_ino (the same for every fd of one file, whoever opened it,
   * and never reused while an fd of it stays open), and F_GETFL's access mode and status flags, which belong to the
   * open file description (every fd that dup or SCM_RIGHTS made of it shares them).
   */
  identity(): FileIdentity;
  /** What /proc/self/fd says the fd is (e.g. "/memfd:guest-ram (deleted)", "anon_inode:[eventfd]"). */
  describe(): string;
}

/** FileDescriptor.identity(): the file behind an fd, and how it was opened. */
export interface FileIdentity {
  readonly device: bigint;
  readonly inode: bigint;
  /** O_ACCMODE bits and status flags (O_APPEND, O_DIRECT, ...), as fcntl(F_GETFL) reports them. */
  readonly flags: number;
}

/**
 * An mmap'd range, reached through zero-copy ArrayBuffers; unmap() detaches every one of them, so later access
 * sees length-0 buffers. Node 20 caps one ArrayBuffer at 4 GiB, so a range is also cut into windows of
 * `mappingWindowSize` bytes (the last one shorter) that reach all of it, however large.
 */
export interface Mapping {
  /** The whole range in one ArrayBuffer; throws EFBIG for ranges over 4 GiB (use window()). */
  readonly buffer: ArrayBuffer;
  readonly length: number;
  /** ceil(length / mappingWindowSize). */
  readonly windowCount: number;
  /** Bytes [index * mappingWindowSize, ...) of the range, the same ArrayBuffer on every call; ERANGE past the last. */
  window(index: number): ArrayBuffer;
  readonly mapped: boolean;
  /** False for read-only mappings, which are private copy-on-write: JS writes never reach the peer. */
  readonly writable: boolean;
  readonly shared: boolean;
  unmap(): boolean;
}

export interface MessageSocketOptions {
  /** Largest accepted message, header included; a bigger header size closes the connection with EMSGSIZE. */
  maxMessageSize?: number;
  /** Most fds accepted with one message (0..253). */
  maxFds?: number;
}

/** A connected UNIX stream socket carrying framed messages (16-byte header, u32 total size at offset 4) and fds. */
export interface NativeMessageSocket {
  /** Sends one whole message; fds travel with its first byte. The caller keeps ownership of its fds. */
  send(bytes: Uint8Array, fds?: FileDescriptor[]): void;
  /** Closes the socket; onClose runs once, synchronously, with no error. */
  close(): boolean;
  readonly pendingBytes: number;
  readonly closed: boolean;
}

export interface NativeListener {
  close(): boolean;
}

/** An accept failure as a Listener reports it: once per run of failures with one errno, then retried by itself. */
export interface AcceptError extends SystemCallError {
  /** When accepting is tried again; meanwhile pending connections wait in the kernel's backlog. */
  retryMs?: number;
}

/** This process's fds, for refusing more before it runs out. */
export interface FdUsage {
  /** Open fds; undefined when /proc cannot tell. */
  readonly open: number | undefined;
  /** The soft RLIMIT_NOFILE: fd numbers stay below it (Infinity when unlimited). */
  readonly limit: number;
}

export interface NativeFdWatch {
  stop(): boolean;
}

/** An Error from a failed system call, as the addon throws it. */
export interface SystemCallError extends Error {
  code: string;
  errno: number;
  syscall: string;
  target?: string;
}

/** One CPUID leaf as KVM_GET_SUPPORTED_CPUID and KVM_SET_CPUID2 carry it (function = leaf, index = subleaf). */
export interface KvmCpuidEntry {
  function: number;
  index: number;
  /** KVM_CPUID_FLAG_* (bit 0: the index is significant). */
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** struct kvm_segment: a segment register's hidden state. */
export interface KvmSegment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: boolean;
  dpl: number;
  db: boolean;
  s: boolean;
  /** 64-bit code segment. */
  l: boolean;
  g: boolean;
  avl: boolean;
  unusable: boolean;
}

export interface KvmDescriptorTable {
  base: bigint;
  limit: number;
}

/** struct kvm_sregs without the pending-interrupt bitmap, which setSregs leaves as it is. */
export interface KvmSregs {
  cs: KvmSegment;
  ds: KvmSegment;
  es: KvmSegment;
  fs: KvmSegment;
  gs: KvmSegment;
  ss: KvmSegment;
  tr: KvmSegment;
  ldt: KvmSegment;
  gdt: KvmDescriptorTable;
  idt: KvmDescriptorTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
}

/** struct kvm_translation as KVM_TRANSLATE fills it (physicalAddress is all ones when not valid). */
export interface KvmRawTranslation {
  physicalAddress: bigint;
  valid: boolean;
  writeable: boolean;
  usermode: boolean;
}

/** The general-purpose registers of KVM_GET_REGS / KVM_SET_REGS. */
export interface KvmRegs {
  rax: bigint;
  rbx: bigint;
  rcx: bigint;
  rdx: bigint;
  rsi: bigint;
  rdi: bigint;
  rsp: bigint;
  rbp: bigint;
  r8: bigint;
  r9: bigint;
  r10: bigint;
  r11: bigint;
  r12: bigint;
  r13: bigint;
  r14: bigint;
  r15: bigint;
  rip: bigint;
  rflags: bigint;
}

/**
 * One exit of a vCPU runner. `io`, `mmio` and `ioapic-eoi` wait for `complete()`; the others end the runner:
 * `stopped` (stop() or close), `shutdown` (triple fault), `hlt`, `fail-entry` and `internal-error` (detail: KVM's
 * hardware reason or suberror), `system-event` (detail: its type), `error` (KVM_RUN failed), `unknown` (detail: the
 * raw exit reason).
 */
export type KvmExit =
  | {
      readonly reason: 'io';
      readonly vcpu: number;
      readonly port: number;
      readonly size: 1 | 2 | 4;
      readonly count: number;
      readonly write: boolean;
      readonly bytes?: Uint8Array;
    }
  | {
      readonly reason: 'mmio';
      readonly vcpu: number;
      readonly address: number;
      readonly size: number;
      readonly count: 1;
      readonly write: boolean;
      readonly bytes?: Uint8Array;
    }
  | { readonly reason: 'ioapic-eoi'; readonly vcpu: number; readonly vector: number }
  | {
      readonly reason: 'stopped' | 'shutdown' | 'hlt' | 'fail-entry' | 'internal-error' | 'system-event' | 'error' | 'unknown';
      readonly vcpu: number;
      readonly detail: number;
      readonly error?: SystemCallError;
    };

/** A vCPU running on its own thread; each resumable exit waits for complete(). */
export interface NativeKvmVcpuRunner {
  /** Answers the pending exit: an IN or MMIO read passes its size * count bytes, a write or EOI nothing. */
  complete(bytes?: Uint8Array): void;
  /** Takes the vCPU out of the guest; the runner then reports a `stopped` exit (unless it already ended). */
  stop(): void;
  /** True until the terminal exit has been delivered. */
  readonly running: boolean;
  /** Resumable exits handed over so far. */
  readonly exits: number;
}

/**
 * A KVM VM: as a translation oracle (no guest code runs) or as a machine (split irqchip, runner threads). It owns the /dev/kvm, VM and vCPU fds; close()
 * or garbage collection closes them all. Memory given to it stays referenced until then; if that memory's mapping
 * is unmapped meanwhile, translate() refuses with EFAULT. Failed ioctls throw SystemCallErrors.
 */
export interface NativeKvmVm {
  /** KVM_GET_API_VERSION (always 12 on a VM that opened). */
  readonly apiVersion: number;
  readonly closed: boolean;
  readonly vcpuCount: number;
  supportedCpuid(): KvmCpuidEntry[];
  /** Shows `buffer` (page aligned, e.g. a Mapping's) to the guest at `guestPhysicalAddress`; replaces the slot's memory. */
  setUserMemoryRegion(slot: number, guestPhysicalAddress: number, buffer: ArrayBuffer): void;
  /** Creates the next vCPU and returns its index (0, 1, ...). */
  createVcpu(): number;
  setCpuid(vcpu: number, entries: readonly KvmCpuidEntry[]): void;
  getSregs(vcpu: number): KvmSregs;
  setSregs(vcpu: number, sregs: KvmSregs): void;
  translate(vcpu: number, linearAddress: bigint): KvmRawTranslation;
  getRegs(vcpu: number): KvmRegs;
  /** Registers left out keep their values. */
  setRegs(vcpu: number, regs: Partial<KvmRegs>): void;
  /** Local APICs in KVM, the I/O APIC (with this many pins) in the VMM; call before createVcpu. */
  enableSplitIrqchip(ioapicPins: number): void;
  setTssAddress(address: number): void;
  /** KVM_SIGNAL_MSI: > 0 delivered, 0 blocked by the guest's APIC state. */
  signalMsi(address: bigint | number, data: number): number;
  /** Starts the vCPU on a thread of its own; exits arrive on the event loop. close() stops every runner first. */
  runVcpu(vcpu: number, onExit: (exit: KvmExit) => void): NativeKvmVcpuRunner;
  /** Stops every runner, then closes every fd; false when already closed. */
  close(): boolean;
}

export interface NativeAddon {
  FileDescriptor: new () => FileDescriptor;
  Mapping: new () => Mapping;
  MessageSocket: new (
    fd: FileDescriptor,
    options: MessageSocketOptions,
    onMessage: (bytes: Buffer, fds: FileDescriptor[] | undefined) => void,
    onClose: (error: SystemCallError | undefined) => void,
  ) => NativeMessageSocket;
  /**
   * Accepts on a listening socket. A failed accept (EMFILE, ENFILE, ENOMEM...) pauses accepting and retries after a
   * delay (100 ms doubling to 1 s) instead of spinning; onError hears the first failure of each run of them.
   */
  Listener: new (fd: FileDescriptor, onConnection: (fd: FileDescriptor) => void, onError: (error: AcceptError) => void) => NativeListener;
  FdWatch: new (fd: FileDescriptor, onReadable: () => void) => NativeFdWatch;

  /** Takes ownership of an fd number this process inherited or opened outside the addon. */
  adoptFd(fd: number): FileDescriptor;
  /** How many FileDescriptor objects currently own an open fd. */
  liveFileDescriptors(): number;

  /** An anonymous shared-memory file of `size` bytes, sealed against shrinking. */
  memfdCreate(name: string, size: number): FileDescriptor;
  /** Maps [offset, offset + length) of a regular file or memfd; refuses ranges past its end. */
  mapFd(fd: FileDescriptor, offset: number, length: number, writable: boolean): Mapping;
  /**
   * pread of `into.length` bytes at `position` of a regular file, for files a peer may shrink (never mapped, so
   * never SIGBUS). Throws ENXIO, before reading, for a range past the file's current end and ENODEV for anything
   * but a regular file; returns the bytes read (fewer only if the file shrank during the call).
   */
  readFile(fd: FileDescriptor, position: number, into: Uint8Array): number;
  /** pwrite with readFile's checks: a write never grows the file. Returns the bytes written. */
  writeFile(fd: FileDescriptor, position: number, data: Uint8Array): number;
  readonly pageSize: number;
  /** The size of a Mapping's windows (1 GiB). */
  readonly mappingWindowSize: number;
  /** Largest offset or length mapFd, readFile and writeFile take (2^46). */
  readonly maxMappingLength: number;

  unixListen(path: string, backlog?: number): FileDescriptor;
  unixConnect(path: string): FileDescriptor;
  unixSocketPair(): [FileDescriptor, FileDescriptor];
  /** One stat of /proc/self/fd and a getrlimit (a listing of /proc/self/fd before Linux 6.2). */
  fdUsage(): FdUsage;

  eventfdCreate(initial?: number, semaphore?: boolean): FileDescriptor;
  /** Adds value (default 1); false when the counter is saturated and the signal is still pending. */
  eventfdWrite(fd: FileDescriptor, value?: number): boolean;
  /** Reads and resets the counter (or takes 1 in semaphore mode); 0 when nothing is pending. */
  eventfdRead(fd: FileDescriptor): number;

  /** Opens `devicePath` (default /dev/kvm) and creates an empty VM. Absent from builds for hosts other than x86-64. */
  KvmVm?: new (devicePath?: string) => NativeKvmVm;
}

/** A pointer field of an ioctl argument: the address of `buffer` is written at `offset` before the call. */
export interface IoctlPointer {
  readonly offset: number;
  readonly buffer: Uint8Array;
}

/**
 * The addon's generic ioctl (native/ioctl.cc): bytes in, bytes out, no uAPI logic. It works on fd numbers; own them
 * with `native.adoptFd`.
 */
export interface NativeIoctlAddon {
  /** open(path, O_RDWR | O_CLOEXEC): the new fd number; throws a SystemCallError. */
  openDevice(path: string): number;
  /**
   * ioctl(fd, request, argument) after writing each pointer's buffer address into the argument: the ioctl's result
   * (0 or more), or -errno. The kernel's out fields land in `argument`, and in the pointed-at buffers.
   */
  ioctl(fd: number, request: number, argument: Uint8Array, pointers?: readonly IoctlPointer[]): number;
}

function load<T>(file: string): T {
  // dist/lib/native.js and lib/native.ts both sit two levels below the package root.
  const root = path.resolve(__dirname, '..', '..');
  const candidates = [path.join(root, 'build', 'Release', file), path.resolve(__dirname, '..', 'build', 'Release', file)];
  let lastError: unknown;
  for (const candidate of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- a .node addon loads only through require
      return require(candidate) as T;
    } catch (error) {
      lastError = error;
    }
  }
  const error = new Error(
    `viommu: the native addon is not built (looked for ${candidates.join(', ')}); run \`npm install\` or \`npm run build\` (${String(lastError)})`,
  );
  (error as Error & { code: string }).code = 'ERR_VIOMMU_ADDON_MISSING';
  throw error;
}

export const native: NativeAddon = load<NativeAddon>('viommu_native.node');

/** The addon's ioctl functions (only iommufd and its tests need them). */
export function nativeIoctl(): NativeIoctlAddon {
  return native as unknown as NativeIoctlAddon;
}

/** Linux memfd seal bits, as FileDescriptor.seals() reports them. */
export const FILE_SEALS = { SEAL: 0x1, SHRINK: 0x2, GROW: 0x4, WRITE: 0x8, FUTURE_WRITE: 0x10 } as const;

export function isSystemCallError(error: unknown): error is SystemCallError {
  return error instanceof Error && typeof (error as SystemCallError).syscall === 'string';
}
