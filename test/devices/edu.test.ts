/** The edu DMA engine with synchronous and asynchronous DMA spaces: run bit, interrupt, faults, reset mid-transfer. */
import assert from 'node:assert/strict';
import type { AsyncDmaSpace } from '../../lib/memory';
import { EDU_BUFFER_ADDRESS, EDU_INTERRUPTS, EDU_REGISTERS, EduDevice, type EduDmaOutcome } from '../../lib/devices/edu';
import { DmaFault, EFAULT, GuestMemory } from '../../lib/memory';

/** A DMA space whose transfers complete only when the test says so. */
class DeferredDma implements AsyncDmaSpace {
  readonly memory = new Uint8Array(0x10000);
  readonly queue: { settle: (error?: Error) => void; address: bigint; length: number }[] = [];
  read(address: bigint, into: Uint8Array): Promise<void> {
    return this.defer(address, into.length, () => into.set(this.memory.subarray(Number(address), Number(address) + into.length)));
  }
  write(address: bigint, data: Uint8Array): Promise<void> {
    const copy = data.slice();
    return this.defer(address, data.length, () => this.memory.set(copy, Number(address)));
  }
  private defer(address: bigint, length: number, apply: () => void): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ address, length, settle: (error) => (error ? reject(error) : (apply(), resolve())) });
    });
  }
}

function program(edu: EduDevice, source: number, destination: number, count: number, command: number): void {
  edu.write(EDU_REGISTERS.dmaSource, 8, BigInt(source));
  edu.write(EDU_REGISTERS.dmaDestination, 8, BigInt(destination));
  edu.write(EDU_REGISTERS.dmaCount, 8, BigInt(count));
  edu.write(EDU_REGISTERS.dmaCommand, 8, BigInt(command));
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

describe('EduDevice', () => {
  it('completes a transfer through a synchronous DmaSpace within the command write', () => {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(0x10000) });
    memory.write(0x100, Buffer.from('sync'));
    const lines: boolean[] = [];
    const edu = new EduDevice(memory.dma, { onInterrupt: (raised) => lines.push(raised) });
    program(edu, 0x100, EDU_BUFFER_ADDRESS, 4, 0x1 | 0x4);
    assert.equal(edu.read(EDU_REGISTERS.dmaCommand, 8) & 1n, 0n);
    program(edu, EDU_BUFFER_ADDRESS, 0x200, 4, 0x1 | 0x2);
    assert.equal(Buffer.from(memory.read(0x200, 4)).toString(), 'sync');
    assert.deepEqual(lines, [true]);
    assert.equal(Number(edu.read(EDU_REGISTERS.interruptStatus, 4)), EDU_INTERRUPTS.DMA_DONE);
  });

  it('keeps the run bit set while an asynchronous transfer is in flight, then clears it and raises the interrupt', async () => {
    const dma = new DeferredDma();
    dma.memory.set(Buffer.from('async'), 0x300);
    const outcomes: EduDmaOutcome[] = [];
    const lines: boolean[] = [];
    const edu = new EduDevice(dma, { onDma: (outcome) => outcomes.push(outcome), onInterrupt: (raised) => lines.push(raised) });
    program(edu, 0x300, EDU_BUFFER_ADDRESS, 5, 0x1 | 0x4);
    assert.equal(edu.dmaRunning, true);
    assert.equal(edu.read(EDU_REGISTERS.dmaCommand, 8) & 1n, 1n);
    // Writes to the DMA registers are ignored while running (QEMU's rule); a second start is too.
    edu.write(EDU_REGISTERS.dmaSource, 8, 0x999n);
    edu.write(EDU_REGISTERS.dmaCommand, 8, 1n);
    assert.equal(edu.read(EDU_REGISTERS.dmaSource, 8), 0x300n);
    assert.equal(dma.queue.length, 1);
    assert.deepEqual(lines, []);
    dma.queue.shift()!.settle();
    await flush();
    assert.equal(edu.dmaRunning, false);
    assert.deepEqual(lines, [true]);
    assert.equal(outcomes.length, 1);
    assert.equal(outcomes[0]!.error, undefined);
    program(edu, EDU_BUFFER_ADDRESS, 0x400, 5, 0x1 | 0x2);
    dma.queue.shift()!.settle();
    await flush();
    assert.equal(Buffer.from(dma.memory.subarray(0x400, 0x405)).toString(), 'async');
  });

  it('reports an asynchronous fault in the outcome and still clears the run bit', async () => {
    const dma = new DeferredDma();
    const outcomes: EduDmaOutcome[] = [];
    const edu = new EduDevice(dma, { onDma: (outcome) => outcomes.push(outcome) });
    program(edu, 0x300, EDU_BUFFER_ADDRESS, 8, 0x1);
    dma.queue.shift()!.settle(new DmaFault(0x300n, 8, 'read', 'refused by the peer', EFAULT));
    await flush();
    assert.equal(edu.dmaRunning, false);
    assert.ok(outcomes[0]!.error instanceof DmaFault);
  });

  it('forgets a transfer in flight when reset: its late completion changes nothing', async () => {
    const dma = new DeferredDma();
    const outcomes: EduDmaOutcome[] = [];
    const edu = new EduDevice(dma, { onDma: (outcome) => outcomes.push(outcome) });
    program(edu, 0x300, EDU_BUFFER_ADDRESS, 8, 0x1 | 0x4);
    edu.reset();
    assert.equal(edu.dmaRunning, false);
    dma.queue.shift()!.settle();
    await flush();
    assert.deepEqual(outcomes, []);
    assert.equal(edu.read(EDU_REGISTERS.interruptStatus, 4), 0n);
  });
});
