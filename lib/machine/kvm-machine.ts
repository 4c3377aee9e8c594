/**
 * KvmMachine: a small q35-like PC on KVM around the VT-d unit: the testbed's RAM, MMIO bus and PCI host, one vCPU
 * on a runner thread, a split irqchip whose I/O APIC and MSIs pass through the unit, COM1, fw_cfg, isa-debug-exit,
 * Multiboot loading, ACPI tables and firmware-like PCI set-up.
 */
import { ViommuError } from '../errors';
import { isPromiseLike } from '../memory';
import { PAGE_BYTES } from '../memory/geometry';
import { KvmVirtualMachine, type KvmExit, type KvmRegs, type KvmSregs, type KvmVcpuRunner } from '../os/kvm-vm';
import { PciFunction } from '../vmm/pci';
import { DMAR_BASE, TestbedMachine, type DeviceInterrupt } from '../vmm/testbed';
import type { VfioUserAttachment } from '../vmm/vfio-user-attachment';
import { VtdUnit } from '../vtd/unit';
import type { UnitTraceEvent } from '../vtd/unit-trace';
import type { AccessSize } from '../vmm/mmio-bus';
import type { EduDmaOutcome } from '../devices/edu';
import { acpiPlatformFromUnit, buildAcpiTables, type AcpiTableImage } from './acpi';
import { DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT } from './debug-exit';
import { FwCfg, FW_CFG_PORTS, FW_CFG_PORT_COUNT } from './fw-cfg';
import { Ioapic, IOAPIC_BASE, IOAPIC_WINDOW_SIZE } from './ioapic';
import { loadMultiboot, type MultibootBoot, type MultibootModule } from './multiboot';
import { setUpPci, type PlacedFunction } from './pci-firmware';
import { PortBus, type PortSize } from '../vmm/port-bus';
import { COM1_BASE, Serial16550, SERIAL_PORT_COUNT } from './serial';
import { summarizeUnit } from './unit-summary';

/** Where the machine puts things; q35's choices where a guest might care. */
export const MACHINE_LAYOUT = {
  ioapicId: 0,
  ioapicPins: 24,
  /** The I/O APIC's place in the DMAR device scope: q35's pseudo bus 0xff, devfn 0. */
  ioapicBus: 0xff,
  ioapicDevfn: 0,
  /** INTx of PCI functions lands on I/O APIC pins 16-23 (q35's PIRQ A-H), swizzled by slot. */
  firstPciIntxPin: 16,
  pciIntxPins: 4,
  /** The BIOS area, where a guest scans for the RSDP; reserved in the memory map. */
  biosArea: { base: 0xe0000, length: 0x20000 },
  pciMemory: { start: 0xc000_0000, end: IOAPIC_BASE },
  pciIo: { start: 0xc000, end: 0x1_0000 },
} as const;

/** q35's host bridge (8086:29c0), so bus 0 has a function 0 as every PC does. */
const HOST_BRIDGE = {
  vendorId: 0x8086,
  deviceId: 0x29c0,
  revision: 0,
  classCode: 0x060000,
  subsystemVendorId: 0x1af4,
  subsystemId: 0x1100,
  interruptPin: 0,
} as const;
const MAX_RAM_BYTES = MACHINE_LAYOUT.pciMemory.start;
/** Enough for kvm-unit-tests' configurations; each vCPU is a thread of this process. */
export const MAX_CPUS = 8;
const SERIAL_KEEP_BYTES = 1 << 20;
const EVENT_KEEP = 4096;

/**
 * Something that happened in the machine, for `--trace` and reports: the unit's own trace events (register writes,
 * descriptors, translations, faults, the MSIs it sends; docs/trace.md), and the machine's: interrupt requests into
 * the unit, MSIs KVM took, edu DMA, MMIO nothing decodes, device errors.
 */
export type MachineEvent =
  | UnitTraceEvent
  | {
      readonly kind: 'interrupt';
      readonly source: 'msi' | 'ioapic';
      readonly sid: number;
      readonly address: string;
      readonly data: string;
      readonly result: string;
    }
  | { readonly kind: 'delivered'; readonly address: string; readonly data: string; readonly accepted: boolean }
  | { readonly kind: 'dma'; readonly source: string; readonly destination: string; readonly count: number; readonly error?: string }
  | { readonly kind: 'unclaimed-mmio'; readonly address: string; readonly size: number; readonly write: boolean }
  | { readonly kind: 'device-error'; readonly message: string };

export interface KvmMachineOptions {
  /** Unit properties as QEMU's intel-iommu takes them ('aw-bits=48,caching-mode=on'). */
  readonly iommu?: string;
  /** vCPUs (default 1, at most MAX_CPUS): the first boots, the others wait for the guest's INIT-SIPI. */
  readonly cpus?: number;
  /** Guest RAM in bytes (default 256 MiB), below the PCI window at 3 GiB. */
  readonly ramBytes?: number;
  /** A vfio-user server (e.g. `viommu serve --device dma-engine`) at 00:04.0 in place of the in-process edu. */
  readonly deviceSocket?: string;
  /** Each byte the guest writes to COM1. */
  readonly onSerialOutput?: (byte: number) => void;
  /** Each machine event as it happens (`--trace`). Off: the unit traces nothing and no event is built. */
  readonly onEvent?: (event: MachineEvent, atMs: number) => void;
  readonly kvmDevicePath?: string;
}

/** The exits the vCPU waits on an answer for. */
type ResumableExit = Extract<KvmExit, { reason: 'io' | 'mmio' | 'ioapic-eoi' }>;

/** How a run ended. */
export type MachineEnd =
  | { readonly kind: 'debug-exit'; readonly status: number; readonly written: number }
  | { readonly kind: 'timeout' }
  | {
      readonly kind: 'shutdown' | 'hlt' | 'fail-entry' | 'internal-error' | 'system-event' | 'error' | 'unknown' | 'stopped';
      readonly detail: number;
      readonly message: string;
    };

export interface MachineOutcome {
  readonly end: MachineEnd;
  /** The vCPU's registers when it stopped (absent when KVM would not say). */
  readonly registers?: { readonly regs: KvmRegs; readonly sregs: KvmSregs };
  readonly exits: number;
  readonly elapsedMs: number;
}

export type KvmMachineCreateResult =
  { readonly machine: KvmMachine; readonly reason?: undefined } | { readonly machine?: undefined; readonly reason: string };

const TERMINAL_MESSAGES: Record<string, string> = {
  shutdown: 'the guest shut the CPU down (a triple fault: an exception while delivering a double fault)',
  hlt: 'the vCPU halted with no way to wake it',
  'fail-entry': 'KVM could not enter the guest (invalid guest state); detail is the hardware entry-failure reason',
  'internal-error': 'KVM met an internal error emulating an instruction; detail is its suberror',
  'system-event': 'the guest asked for a system event (reset or power off); detail is its type',
  error: 'KVM_RUN failed',
  unknown: 'the vCPU exited for a reason this machine does not handle; detail is the raw exit reason',
  stopped: 'the machine was stopped',
};

function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

function littleEndian(value: bigint, bytes: Uint8Array, at = 0, size = bytes.length): void {
  for (let i = 0; i < size; i++) bytes[at + i] = Number((value >> BigInt(8 * i)) & 0xffn);
}

function fromLittleEndian(bytes: Uint8Array, at = 0, size = bytes.length): bigint {
  let value = 0n;
  for (let i = size - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[at + i]!);
  return value;
}

export class KvmMachine {
  /** The testbed's port bus: its PCI host bridge and device I/O BARs, plus the machine's ISA devices. */
  readonly ports: PortBus;
  readonly ioapic: Ioapic;
  readonly serialOutput: number[] = [];
  /** The last events (all of them go to onEvent). */
  readonly events: MachineEvent[] = [];
  /** Accesses to addresses nothing decodes, by address. */
  readonly unclaimedMmio = new Map<number, { reads: number; writes: number }>();
  /** What went wrong with devices (an access a vfio-user server failed, an MSI KVM refused), with how often. */
  readonly deviceErrors = new Map<string, number>();
  placedFunctions: readonly PlacedFunction[] = [];
  acpi: AcpiTableImage | undefined;
  boot: MultibootBoot | undefined;
  attachment: VfioUserAttachment | undefined;
  private readonly vcpus: number[] = [];
  private runners: KvmVcpuRunner[] | undefined;
  private debugExit: { status: number; written: number } | undefined;
  private readonly started = Date.now();

  private constructor(
    readonly vm: KvmVirtualMachine,
    readonly testbed: TestbedMachine,
    readonly unit: VtdUnit,
    readonly ramBytes: number,
    private readonly options: KvmMachineOptions,
  ) {
    this.ports = testbed.ports;
    this.ioapic = new Ioapic({
      id: MACHINE_LAYOUT.ioapicId,
      pins: MACHINE_LAYOUT.ioapicPins,
      // The I/O APIC's messages carry no requester id, as q35's under a split irqchip (docs/machine.md).
      deliver: (message) => {
        const sid = (MACHINE_LAYOUT.ioapicBus << 8) | MACHINE_LAYOUT.ioapicDevfn;
        const result = this.unit.interruptRequest({ sid, address: message.address, data: message.data }, 'platform');
        if (this.options.onEvent)
          this.emit({
            kind: 'interrupt',
            source: 'ioapic',
            sid,
            address: hex(message.address),
            data: hex(message.data),
            result: result.ok ? 'ok' : `fault 0x${result.reason.toString(16)}`,
          });
      },
    });
    testbed.mmio.map('ioapic', IOAPIC_BASE, IOAPIC_WINDOW_SIZE, this.ioapic);
    this.ports.map('com1', COM1_BASE, SERIAL_PORT_COUNT, new Serial16550(COM1_BASE, (byte) => this.serialByte(byte)));
    this.ports.map('fw_cfg', FW_CFG_PORTS.selector, FW_CFG_PORT_COUNT, FwCfg.forMachine({ ramBytes, cpus: options.cpus ?? 1 }));
    this.ports.map('isa-debug-exit', DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT, new DebugExit((status, written) => this.guestExited(status, written)));
    testbed.pci.add(new PciFunction('host-bridge', 0, 0, HOST_BRIDGE, []));
    // A device that refused a shadow DMA_MAP/UNMAP (or outgrew its max_dma_maps) works on by message: say so.
    const hostBackend = testbed.hostBackend;
    hostBackend?.on('error', (sid, _pasid, error) => this.deviceError(`device ${hex(sid)} ${hostBackend.name}: ${error.message}`));
    vm.addMemory(0, 0, testbed.ram);
    // vCPU 0 is the boot CPU; the others wait in KVM for the INIT and SIPI the guest sends them.
    for (let i = 0; i < (options.cpus ?? 1); i++) this.vcpus.push(vm.createVcpu());
  }

  /** Builds the machine, or says why KVM cannot run it here. Bad options throw ViommuError. */
  static async create(options: KvmMachineOptions = {}): Promise<KvmMachineCreateResult> {
    const ramBytes = options.ramBytes ?? 256 << 20;
    if (!Number.isSafeInteger(ramBytes) || ramBytes < 16 << 20 || ramBytes > MAX_RAM_BYTES || ramBytes % PAGE_BYTES !== 0) {
      throw new ViommuError('ERR_MACHINE_RAM', `RAM of ${ramBytes} bytes: a multiple of 4 KiB from 16 MiB to 3 GiB (the PCI window starts at 3 GiB)`);
    }
    const cpus = options.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_CPUS) {
      throw new ViommuError('ERR_MACHINE_CPUS', `${cpus} vCPUs: a whole number from 1 to ${MAX_CPUS}`);
    }
    const opened = KvmVirtualMachine.open({
      ioapicPins: MACHINE_LAYOUT.ioapicPins,
      ...(options.kvmDevicePath ? { devicePath: options.kvmDevicePath } : {}),
    });
    if (!opened.vm) return { reason: opened.reason };
    const vm = opened.vm;
    let machine: KvmMachine | undefined;
    let unit: VtdUnit | undefined;
    let testbed: TestbedMachine | undefined;
    try {
      testbed = new TestbedMachine({
        ramBytes,
        builtInEdu: options.deviceSocket === undefined,
        iommu: (memory) => {
          unit = new VtdUnit({
            memory,
            config: options.iommu ?? '',
            onInterrupt: (address, data) => machine?.signalMsi(address, data),
            onHostError: (error) => machine?.deviceError(`the shadow of the guest's mappings failed: ${error.message}`),
            ...(options.onEvent ? { trace: (event: UnitTraceEvent) => machine?.emit(event) } : {}),
          });
          return unit;
        },
        onIntx: (sid, asserted) => machine?.intx(sid, asserted),
        onDeviceInterrupt: (interrupt) => machine?.deviceInterrupt(interrupt),
        onDma: (outcome) => machine?.dmaDone(outcome),
      });
      machine = new KvmMachine(vm, testbed, unit!, ramBytes, options);
      if (options.deviceSocket !== undefined) {
        const attachment = await testbed.attachVfioUser(options.deviceSocket);
        machine.attachment = attachment;
        const built = machine;
        attachment.client.on(
          'close',
          (error) =>
            attachment.closed || built.deviceError(`the vfio-user device at ${options.deviceSocket} went away${error ? ` (${error.message})` : ''}`),
        );
      }
      machine.placedFunctions = await setUpPci(testbed.pci, {
        memory: MACHINE_LAYOUT.pciMemory,
        io: MACHINE_LAYOUT.pciIo,
        intxRoute: intxPin,
      });
      machine.installAcpi();
      return { machine };
    } catch (error) {
      machine?.close();
      if (machine === undefined) {
        testbed?.close();
        vm.close();
      }
      throw error;
    }
  }

  /** Writes a Multiboot image (and its modules) into RAM and points the vCPU at its entry. */
  load(image: Uint8Array, options: { commandLine?: string; modules?: readonly MultibootModule[] } = {}): MultibootBoot {
    const boot = loadMultiboot(this.testbed.memory, image, {
      ramBytes: this.ramBytes,
      reserved: [MACHINE_LAYOUT.biosArea],
      ...(options.commandLine !== undefined ? { commandLine: options.commandLine } : {}),
      ...(options.modules !== undefined ? { modules: options.modules } : {}),
    });
    this.vm.enterProtectedMode(this.vcpus[0]!, { eip: boot.entry, eax: boot.magic, ebx: boot.infoAddress });
    this.boot = boot;
    return boot;
  }

  /**
   * Runs every vCPU until the guest ends (isa-debug-exit), a vCPU stops any other way, or `timeoutMs` passes; then
   * stops the others and resolves once all have left the guest, with the registers of the vCPU that ended it.
   */
  run(timeoutMs: number): Promise<MachineOutcome> {
    if (this.runners !== undefined) throw new ViommuError('ERR_MACHINE_RUNNING', 'this machine already ran; build a new one for another run');
    if (this.boot === undefined) throw new ViommuError('ERR_MACHINE_NOT_LOADED', 'load() a guest image before run()');
    return new Promise((resolve) => {
      let timedOut = false;
      let first: { vcpu: number; exit: Exclude<KvmExit, ResumableExit> } | undefined;
      let running = this.vcpus.length;
      const stopAll = (): void => this.runners?.forEach((runner) => runner.stop());
      const timer = setTimeout(() => {
        timedOut = true;
        stopAll();
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        const { vcpu, exit } = first!;
        let registers: MachineOutcome['registers'];
        try {
          registers = this.vm.registers(vcpu);
        } catch {
          registers = undefined;
        }
        const end: MachineEnd =
          this.debugExit !== undefined
            ? { kind: 'debug-exit', ...this.debugExit }
            : timedOut && exit.reason === 'stopped'
              ? { kind: 'timeout' }
              : {
                  kind: exit.reason,
                  detail: exit.detail,
                  message: `vCPU ${vcpu}: ${exit.error?.message ?? TERMINAL_MESSAGES[exit.reason] ?? exit.reason}`,
                };
        const exits = this.runners!.reduce((sum, runner) => sum + runner.exits, 0);
        resolve({ end, ...(registers ? { registers } : {}), exits, elapsedMs: Date.now() - this.started });
      };
      this.runners = this.vcpus.map((vcpu) => {
        const runner = this.vm.run(vcpu, (exit) => {
          if (exit.reason === 'io' || exit.reason === 'mmio' || exit.reason === 'ioapic-eoi') {
            this.handle(runner, exit);
            return;
          }
          // The first vCPU to stop decides how the run ended; the rest are stopped with it.
          if (first === undefined) {
            first = { vcpu, exit };
            stopAll();
          }
          if (--running === 0) finish();
        });
        return runner;
      });
    });
  }

  /**
   * Mappings the guest's tables hold that a shadowed device's DMA table lacks. With caching mode a guest must
   * invalidate after making entries present; one that does not leaves its device without them (its DMA there
   * still works, by message through the unit), and a host IOMMU backing the device would miss them too.
   */
  unshadowedMappings(): { readonly sid: number; readonly iova: number; readonly bytes: number }[] {
    const missing: { sid: number; iova: number; bytes: number }[] = [];
    const attachment = this.attachment;
    if (attachment === undefined || !attachment.shadowed || attachment.closed) return missing;
    const shared = attachment.table.shared;
    const covered = (iova: number): boolean => shared.some((run) => BigInt(iova) >= run.address && BigInt(iova) < run.address + run.size);
    for (const domain of summarizeUnit(this.unit, [attachment.sourceId]).domains) {
      for (const run of domain.mappings) {
        for (let page = run.iova; page < run.iova + run.bytes; page += PAGE_BYTES) {
          if (covered(page)) continue;
          const last = missing[missing.length - 1];
          if (last !== undefined && last.iova + last.bytes === page) last.bytes += PAGE_BYTES;
          else missing.push({ sid: attachment.sourceId, iova: page, bytes: PAGE_BYTES });
        }
      }
    }
    return missing;
  }

  /** Stops the vCPU (if running), disconnects devices and frees the VM and RAM. */
  close(): void {
    this.vm.close();
    this.testbed.close();
  }

  /** Injects an MSI the unit delivers (remapped device interrupts, fault and completion events). */
  private signalMsi(address: number, data: number): void {
    let accepted = false;
    try {
      accepted = this.vm.signalMsi(address >>> 0, data >>> 0);
    } catch (error) {
      this.deviceError(`KVM_SIGNAL_MSI ${hex(address >>> 0)}/${hex(data >>> 0)} failed: ${(error as Error).message}`);
    }
    if (this.options.onEvent) this.emit({ kind: 'delivered', address: hex(address >>> 0), data: hex(data >>> 0), accepted });
  }

  private handle(runner: KvmVcpuRunner, exit: ResumableExit): void {
    let answer: Uint8Array | undefined | Promise<Uint8Array | undefined>;
    try {
      if (exit.reason === 'io')
        answer = exit.write ? this.portWrite(exit.port, exit.size, exit.count, exit.bytes!) : this.portRead(exit.port, exit.size, exit.count);
      else if (exit.reason === 'mmio')
        answer = exit.write ? this.mmioWrite(exit.address, exit.size, exit.bytes!) : this.mmioRead(exit.address, exit.size);
      else this.ioapic.endOfInterrupt(exit.vector);
    } catch (error) {
      answer = this.failedAccess(exit, error);
    }
    if (isPromiseLike(answer)) {
      answer.then(
        (bytes) => this.complete(runner, bytes),
        (error: unknown) => this.complete(runner, this.failedAccess(exit, error)),
      );
    } else this.complete(runner, answer);
  }

  private complete(runner: KvmVcpuRunner, bytes: Uint8Array | undefined): void {
    if (!runner.running) return;
    try {
      runner.complete(bytes);
    } catch {
      // The runner was stopped (debug exit, timeout, close) while this access was in flight.
    }
  }

  /** A device that failed an access (a vfio-user server gone): the guest reads all-ones, as from a dead bus. */
  private failedAccess(exit: ResumableExit, error: unknown): Uint8Array | undefined {
    this.deviceError(
      `${exit.reason === 'io' ? `port ${hex(exit.port)}` : exit.reason === 'mmio' ? `MMIO ${hex(exit.address)}` : 'EOI'} failed: ${(error as Error).message}`,
    );
    if (exit.reason === 'ioapic-eoi' || exit.write) return undefined;
    return new Uint8Array(exit.size * exit.count).fill(0xff);
  }

  private portRead(port: number, size: PortSize, count: number): Uint8Array | Promise<Uint8Array> {
    const bytes = new Uint8Array(size * count);
    const from = (index: number): Uint8Array | Promise<Uint8Array> => {
      for (let i = index; i < count; i++) {
        const value = this.ports.read(port, size);
        if (isPromiseLike(value)) {
          return value.then((v) => {
            littleEndian(BigInt(v >>> 0), bytes, i * size, size);
            return from(i + 1);
          });
        }
        littleEndian(BigInt(value >>> 0), bytes, i * size, size);
      }
      return bytes;
    };
    return from(0);
  }

  private portWrite(port: number, size: PortSize, count: number, bytes: Uint8Array): undefined | Promise<undefined> {
    const from = (index: number): undefined | Promise<undefined> => {
      for (let i = index; i < count; i++) {
        const done = this.ports.write(port, size, Number(fromLittleEndian(bytes, i * size, size)));
        if (isPromiseLike(done)) return done.then(() => from(i + 1));
      }
      return undefined;
    };
    return from(0);
  }

  private mmioRead(address: number, size: number): Uint8Array | Promise<Uint8Array> {
    const target = this.testbed.mmio.find(address, size);
    const bytes = new Uint8Array(size);
    if (target === undefined) {
      this.unclaimed(address, size, false);
      return bytes;
    }
    const value = target.handler.read(target.offset, size as AccessSize);
    if (isPromiseLike(value)) return value.then((v) => (littleEndian(v, bytes), bytes));
    littleEndian(value, bytes);
    return bytes;
  }

  private mmioWrite(address: number, size: number, bytes: Uint8Array): undefined | Promise<undefined> {
    const target = this.testbed.mmio.find(address, size);
    if (target === undefined) {
      this.unclaimed(address, size, true);
      return undefined;
    }
    const done = target.handler.write(target.offset, size as AccessSize, fromLittleEndian(bytes));
    return isPromiseLike(done) ? done.then(() => undefined) : undefined;
  }

  private unclaimed(address: number, size: number, write: boolean): void {
    let counts = this.unclaimedMmio.get(address);
    if (counts === undefined) this.unclaimedMmio.set(address, (counts = { reads: 0, writes: 0 }));
    if (write) counts.writes++;
    else counts.reads++;
    if (this.options.onEvent) this.emit({ kind: 'unclaimed-mmio', address: hex(address), size, write });
  }

  /** A function's INTx reaches the pin firmware routed it to (and wrote into its INTERRUPT_LINE). */
  private intx(sid: number, asserted: boolean): void {
    const devfn = sid & 0xff;
    const pin = this.placedFunctions.find((fn) => fn.devfn === devfn)?.interruptLine ?? intxPin(devfn, 1);
    this.ioapic.setPin(pin, asserted);
  }

  private guestExited(status: number, written: number): void {
    if (this.debugExit !== undefined) return;
    this.debugExit = { status, written };
    this.runners?.forEach((runner) => runner.stop());
  }

  private serialByte(byte: number): void {
    if (this.serialOutput.length < SERIAL_KEEP_BYTES) this.serialOutput.push(byte);
    this.options.onSerialOutput?.(byte);
  }

  private deviceInterrupt(interrupt: DeviceInterrupt): void {
    if (!this.options.onEvent) return;
    const result = interrupt.result as { ok?: boolean; reason?: number } | undefined;
    this.emit({
      kind: 'interrupt',
      source: 'msi',
      sid: interrupt.sid,
      address: hex(interrupt.address),
      data: hex(interrupt.data),
      result: result === undefined ? 'not remappable' : result.ok ? 'ok' : `fault 0x${(result.reason ?? 0).toString(16)}`,
    });
  }

  private dmaDone(outcome: EduDmaOutcome): void {
    if (!this.options.onEvent) return;
    this.emit({
      kind: 'dma',
      source: hex(outcome.source),
      destination: hex(outcome.destination),
      count: outcome.count,
      ...(outcome.error ? { error: outcome.error.message } : {}),
    });
  }

  private deviceError(message: string): void {
    const seen = this.deviceErrors.get(message);
    if (seen !== undefined || this.deviceErrors.size < EVENT_KEEP) this.deviceErrors.set(message, (seen ?? 0) + 1);
    this.emit({ kind: 'device-error', message });
  }

  private emit(event: MachineEvent): void {
    this.events.push(event);
    if (this.events.length > EVENT_KEEP) this.events.shift();
    this.options.onEvent?.(event, Date.now() - this.started);
  }

  private installAcpi(): void {
    const platform = acpiPlatformFromUnit(this.unit.config, {
      cpuApicIds: this.vcpus,
      ioapic: {
        id: MACHINE_LAYOUT.ioapicId,
        address: IOAPIC_BASE,
        gsiBase: 0,
        bus: MACHINE_LAYOUT.ioapicBus,
        device: MACHINE_LAYOUT.ioapicDevfn >> 3,
        function: MACHINE_LAYOUT.ioapicDevfn & 7,
      },
      iommuRegisterBase: DMAR_BASE,
    });
    this.acpi = buildAcpiTables(platform, MACHINE_LAYOUT.biosArea.base);
    this.testbed.memory.write(this.acpi.address, this.acpi.bytes);
  }
}

/** The I/O APIC pin of a bus-0 function's INTx pin (1 = INTA): q35's PIRQ swizzle onto pins 16-19. */
export function intxPin(devfn: number, pin: number): number {
  return MACHINE_LAYOUT.firstPciIntxPin + (((devfn >> 3) + pin - 1) % MACHINE_LAYOUT.pciIntxPins);
}
