/** A DMA engine with the register interface of QEMU's edu device; its DMA goes through a (possibly asynchronous) DMA space. */
import { isPromiseLike, type AsyncDmaSpace } from '../memory';
import type { AccessSize, MmioHandler } from './register-access';

/** The register map, as QEMU's docs/specs/edu.rst lists it. */
const REG = {
  identification: 0x00,
  liveness: 0x04,
  factorial: 0x08,
  status: 0x20,
  interruptStatus: 0x24,
  raiseInterrupt: 0x60,
  acknowledgeInterrupt: 0x64,
  dmaSource: 0x80,
  dmaDestination: 0x88,
  dmaCount: 0x90,
  dmaCommand: 0x98,
} as const;

export const EDU_IDENTIFICATION = 0x010000ed;
export const EDU_BAR_SIZE = 1 << 20;
export const EDU_BUFFER_ADDRESS = 0x40000;
export const EDU_BUFFER_SIZE = 4096;
/** QEMU 7.2's edu as a guest enumerates it (measured: docs/vfio-user-server.md), QEMU's subsystem ids included. */
export const EDU_PCI_IDENTITY = {
  vendorId: 0x1234,
  deviceId: 0x11e8,
  revision: 0x10,
  classCode: 0x00ff00,
  subsystemVendorId: 0x1af4,
  subsystemId: 0x1100,
  interruptPin: 1,
} as const;
/** One MSI vector with a 64-bit address, no per-vector masking: QEMU's edu capability at 0x40. */
export const EDU_PCI_CAPABILITIES = [{ kind: 'msi', vectors: 1, address64: true, perVectorMasking: false }] as const;
/** Register offsets, for drivers and tests that program the device. */
export const EDU_REGISTERS = REG;

const STATUS_COMPUTING = 0x01;
const STATUS_IRQ_ON_FACTORIAL = 0x80;
export const EDU_DMA_COMMAND = { RUN: 0x1, TO_RAM: 0x2, IRQ: 0x4 } as const;
export const EDU_INTERRUPTS = { FACTORIAL: 0x1, DMA_DONE: 0x100 } as const;
const ALL_ONES = (1n << 64n) - 1n;
const RUN = BigInt(EDU_DMA_COMMAND.RUN);

export interface EduDmaOutcome {
  source: bigint;
  destination: bigint;
  count: number;
  /** The error of a refused or faulted transfer (out-of-range buffer, a DMA fault from the IOMMU or the peer). */
  error?: Error;
}

export interface EduOptions {
  /** Device addresses are masked to this many bits (QEMU's dma_mask default: 28). */
  dmaMaskBits?: number;
  /** The interrupt line: true when the device raises it, false once every cause is acknowledged. */
  onInterrupt?: (raised: boolean) => void;
  onDma?: (outcome: EduDmaOutcome) => void;
}

export class EduDevice implements MmioHandler {
  private liveness = 0;
  private factorial = 0;
  private status = 0;
  private interruptStatus = 0;
  private dmaSource = 0n;
  private dmaDestination = 0n;
  private dmaCount = 0n;
  private dmaCommand = 0n;
  private readonly buffer = new Uint8Array(EDU_BUFFER_SIZE);
  /** Bumped by reset, so a transfer still in flight from before cannot complete into the new state. */
  private generation = 0;
  constructor(
    private dma: AsyncDmaSpace,
    private readonly options: EduOptions = {},
  ) {}

  /** Swaps the DMA path (e.g. when an IOMMU is attached in front of the device). */
  attachDmaSpace(dma: AsyncDmaSpace): void {
    this.dma = dma;
  }

  /** True while a transfer has been started and has not completed (the run bit a guest polls). */
  get dmaRunning(): boolean {
    return (this.dmaCommand & RUN) !== 0n;
  }

  /** Back to power-on state: registers cleared, the line lowered, a transfer in flight forgotten. */
  reset(): void {
    this.generation++;
    const wasRaised = this.interruptStatus !== 0;
    this.liveness = 0;
    this.factorial = 0;
    this.status = 0;
    this.interruptStatus = 0;
    this.dmaSource = 0n;
    this.dmaDestination = 0n;
    this.dmaCount = 0n;
    this.dmaCommand = 0n;
    this.buffer.fill(0);
    if (wasRaised) this.options.onInterrupt?.(false);
  }

  read(offset: number, size: AccessSize): bigint {
    // QEMU's edu answers all ones for accesses of a width the register does not take.
    if (offset < REG.dmaSource ? size !== 4 : size !== 4 && size !== 8) return size === 8 ? ALL_ONES : (1n << BigInt(8 * size)) - 1n;
    const narrow = (value: bigint) => (size === 4 ? value & 0xffffffffn : value);
    switch (offset) {
      case REG.identification:
        return BigInt(EDU_IDENTIFICATION);
      case REG.liveness:
        return BigInt(~this.liveness >>> 0);
      case REG.factorial:
        return BigInt(this.factorial >>> 0);
      case REG.status:
        return BigInt(this.status);
      case REG.interruptStatus:
        return BigInt(this.interruptStatus >>> 0);
      case REG.dmaSource:
        return narrow(this.dmaSource);
      case REG.dmaDestination:
        return narrow(this.dmaDestination);
      case REG.dmaCount:
        return narrow(this.dmaCount);
      case REG.dmaCommand:
        return narrow(this.dmaCommand);
      default:
        return size === 8 ? ALL_ONES : 0xffffffffn;
    }
  }

  write(offset: number, size: AccessSize, value: bigint): void {
    if (offset < REG.dmaSource ? size !== 4 : size !== 4 && size !== 8) return;
    // As in QEMU, the DMA registers do not change while a transfer runs.
    if (offset >= REG.dmaSource && this.dmaRunning) return;
    const low = Number(value & 0xffffffffn);
    switch (offset) {
      case REG.liveness:
        this.liveness = low;
        break;
      case REG.factorial:
        this.computeFactorial(low);
        break;
      case REG.status:
        this.status = (this.status & STATUS_COMPUTING) | (low & STATUS_IRQ_ON_FACTORIAL);
        break;
      case REG.raiseInterrupt:
        this.raise(low);
        break;
      case REG.acknowledgeInterrupt:
        this.acknowledge(low);
        break;
      case REG.dmaSource:
        this.dmaSource = value;
        break;
      case REG.dmaDestination:
        this.dmaDestination = value;
        break;
      case REG.dmaCount:
        this.dmaCount = value;
        break;
      case REG.dmaCommand:
        if ((value & RUN) !== 0n) {
          this.dmaCommand = value;
          this.runDma();
        }
        break;
    }
  }

  private computeFactorial(n: number): void {
    let result = 1;
    for (let i = 2; i <= n && result !== 0; i++) result = Math.imul(result, i) >>> 0;
    this.factorial = n === 0 ? 1 : result;
    if (this.status & STATUS_IRQ_ON_FACTORIAL) this.raise(EDU_INTERRUPTS.FACTORIAL);
  }

  private raise(bits: number): void {
    this.interruptStatus = (this.interruptStatus | bits) >>> 0;
    this.options.onInterrupt?.(true);
  }

  private acknowledge(bits: number): void {
    this.interruptStatus = (this.interruptStatus & ~bits) >>> 0;
    if (this.interruptStatus === 0) this.options.onInterrupt?.(false);
  }

  /**
   * Starts the transfer. A synchronous DMA space completes it at once; an asynchronous one (DMA by message) keeps
   * the run bit set until the transfer is done, as QEMU's timer-driven edu does (guests poll the bit either way).
   * A transfer outside the device buffer is refused without touching memory, where QEMU 7.2 aborts the process.
   */
  private runDma(): void {
    const mask = (1n << BigInt(this.options.dmaMaskBits ?? 28)) - 1n;
    const toRam = (this.dmaCommand & BigInt(EDU_DMA_COMMAND.TO_RAM)) !== 0n;
    const ramAddress = (toRam ? this.dmaDestination : this.dmaSource) & mask;
    const deviceAddress = toRam ? this.dmaSource : this.dmaDestination;
    const count = this.dmaCount;
    const outcome: EduDmaOutcome = { source: this.dmaSource, destination: this.dmaDestination, count: Number(count & 0xffffffffn) };
    const start = deviceAddress - BigInt(EDU_BUFFER_ADDRESS);
    if (count === 0n || start < 0n || count > BigInt(EDU_BUFFER_SIZE) || start + count > BigInt(EDU_BUFFER_SIZE - 1)) {
      outcome.error = new RangeError(`edu DMA of ${count} bytes at device address 0x${deviceAddress.toString(16)} leaves the 4 KiB buffer`);
      this.finishDma(outcome);
      return;
    }
    const window = this.buffer.subarray(Number(start), Number(start + count));
    let pending: void | Promise<void>;
    try {
      pending = toRam ? this.dma.write(ramAddress, window) : this.dma.read(ramAddress, window);
    } catch (error) {
      outcome.error = error as Error;
      this.finishDma(outcome);
      return;
    }
    if (!isPromiseLike(pending)) {
      this.finishDma(outcome);
      return;
    }
    const generation = this.generation;
    pending.then(
      () => {
        if (generation === this.generation) this.finishDma(outcome);
      },
      (error: unknown) => {
        if (generation !== this.generation) return;
        outcome.error = error instanceof Error ? error : new Error(String(error));
        this.finishDma(outcome);
      },
    );
  }

  private finishDma(outcome: EduDmaOutcome): void {
    this.dmaCommand &= ~RUN;
    if ((this.dmaCommand & BigInt(EDU_DMA_COMMAND.IRQ)) !== 0n) this.raise(EDU_INTERRUPTS.DMA_DONE);
    this.options.onDma?.(outcome);
  }
}
