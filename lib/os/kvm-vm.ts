/** KvmVirtualMachine: a KVM VM that runs guest code: RAM slots, a split irqchip, vCPUs on runner threads, MSIs. */
import { ViommuError } from '../errors';
import { native, type KvmExit, type KvmRegs, type KvmSegment, type KvmSregs, type NativeKvmVcpuRunner, type NativeKvmVm } from '../native';
import { unusable, type KvmGuestMemory } from './kvm';

export type { KvmExit, KvmRegs, KvmSregs, NativeKvmVcpuRunner as KvmVcpuRunner } from '../native';

export interface KvmVirtualMachineOptions {
  /** Default /dev/kvm. */
  readonly devicePath?: string;
  /** Pins of the VMM's I/O APIC (KVM reserves that many GSIs for it). Default 24. */
  readonly ioapicPins?: number;
}

export type KvmVirtualMachineOpenResult =
  { readonly vm: KvmVirtualMachine; readonly reason?: undefined } | { readonly vm?: undefined; readonly reason: string };

/** Where Intel's VMX keeps its real-mode TSS: three pages just below the BIOS, as QEMU places them. */
const TSS_ADDRESS = 0xfffb_d000;
const CR0_PE = 1n;
const CR0_ET = 1n << 4n;
/** RFLAGS bit 1 is always 1. */
const RFLAGS_FIXED = 2n;
const FLAT_LIMIT = 0xffff_ffff;
const SEGMENT_TYPE = { DATA_READ_WRITE_ACCESSED: 3, CODE_EXECUTE_READ_ACCESSED: 11 } as const;
const CPUID_FEATURES = 1;
const CPUID_FEATURES_EBX_APIC_ID_SHIFT = 24;

/** The register state a protected-mode entry point expects (Multiboot's, for one). */
export interface ProtectedModeEntry {
  readonly eip: number;
  readonly eax?: number;
  readonly ebx?: number;
  readonly esp?: number;
}

export class KvmVirtualMachine {
  private constructor(
    private readonly vm: NativeKvmVm,
    readonly devicePath: string,
  ) {}

  /** Opens /dev/kvm with a split irqchip, or says why KVM cannot run a guest here. */
  static open(options: KvmVirtualMachineOptions = {}): KvmVirtualMachineOpenResult {
    const path = options.devicePath ?? '/dev/kvm';
    const constructor = native.KvmVm;
    if (!constructor) return { reason: 'this build of the addon has no KVM support (x86-64 Linux only)' };
    let vm: NativeKvmVm;
    try {
      vm = new constructor(path);
    } catch (error) {
      return { reason: unusable(error, path).reason };
    }
    try {
      vm.enableSplitIrqchip(options.ioapicPins ?? 24);
      vm.setTssAddress(TSS_ADDRESS);
    } catch (error) {
      vm.close();
      return { reason: `KVM cannot give this VM a split irqchip: ${unusable(error, path).reason}` };
    }
    return { vm: new KvmVirtualMachine(vm, path) };
  }

  get closed(): boolean {
    return this.vm.closed;
  }

  /** Shows `memory` (page aligned, e.g. a SharedRegion) to the guest at `guestPhysicalAddress`. */
  addMemory(slot: number, guestPhysicalAddress: number, memory: KvmGuestMemory): void {
    if (!memory.mapped) throw new ViommuError('ERR_KVM_MEMORY_UNMAPPED', 'addMemory: the guest memory is already unmapped');
    this.vm.setUserMemoryRegion(slot, guestPhysicalAddress, memory.buffer);
  }

  /** A vCPU with every CPUID feature KVM offers, its APIC id its index; not yet running. */
  createVcpu(): number {
    const vcpu = this.vm.createVcpu();
    const cpuid = this.vm.supportedCpuid().map((entry) => {
      if (entry.function !== CPUID_FEATURES) return entry;
      const ebx = ((entry.ebx & 0x00ff_ffff) | (vcpu << CPUID_FEATURES_EBX_APIC_ID_SHIFT)) >>> 0;
      return { ...entry, ebx };
    });
    this.vm.setCpuid(vcpu, cpuid);
    return vcpu;
  }

  /** Flat 4 GiB code and data segments, protection on, paging off: where a Multiboot loader leaves the CPU. */
  enterProtectedMode(vcpu: number, entry: ProtectedModeEntry): void {
    const data: KvmSegment = {
      base: 0n,
      limit: FLAT_LIMIT,
      selector: 0x10,
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
    const code: KvmSegment = { ...data, selector: 0x08, type: SEGMENT_TYPE.CODE_EXECUTE_READ_ACCESSED };
    const sregs = this.vm.getSregs(vcpu);
    this.vm.setSregs(vcpu, {
      ...sregs,
      cs: code,
      ds: data,
      es: data,
      fs: data,
      gs: data,
      ss: data,
      cr0: CR0_PE | CR0_ET,
      cr3: 0n,
      cr4: 0n,
      efer: 0n,
    });
    this.vm.setRegs(vcpu, {
      rip: BigInt(entry.eip),
      rax: BigInt(entry.eax ?? 0),
      rbx: BigInt(entry.ebx ?? 0),
      rsp: BigInt(entry.esp ?? 0),
      rcx: 0n,
      rdx: 0n,
      rsi: 0n,
      rdi: 0n,
      rbp: 0n,
      rflags: RFLAGS_FIXED,
    });
  }

  /** Starts `vcpu` on its own thread; `onExit` gets each exit on the event loop and must complete() resumable ones. */
  run(vcpu: number, onExit: (exit: KvmExit) => void): NativeKvmVcpuRunner {
    return this.vm.runVcpu(vcpu, onExit);
  }

  /** Injects an MSI into the local APICs; false when the guest's APIC state blocked it. */
  signalMsi(address: bigint | number, data: number): boolean {
    return this.vm.signalMsi(address, data) > 0;
  }

  /** Registers for reports; only while the vCPU is outside the guest (at an exit, or after its runner ended). */
  registers(vcpu: number): { regs: KvmRegs; sregs: KvmSregs } {
    return { regs: this.vm.getRegs(vcpu), sregs: this.vm.getSregs(vcpu) };
  }

  /** Stops every runner, then closes the VM. Idempotent. */
  close(): void {
    this.vm.close();
  }
}
