/** The testbed machine as a guest sees it: PCI enumeration of the edu device, its registers, and its DMA. */
import { strict as assert } from 'node:assert';
import { TestbedMachine } from '../../lib/vmm/testbed';
import type { EduDmaOutcome } from '../../lib/devices/edu';

describe('TestbedMachine (no IOMMU)', () => {
  const outcomes: EduDmaOutcome[] = [];
  let machine: TestbedMachine;
  const bar = 0xfe000000n;

  before(() => {
    machine = new TestbedMachine({ ramBytes: 16 << 20, onDma: (outcome) => outcomes.push(outcome) });
  });
  after(() => machine.close());

  function config(register: number): void {
    machine.writePort(0xcf8, 4, 0x80002000 | register);
  }

  it('answers PCI config reads for 00:04.0 with the edu ids, and all ones for empty slots', () => {
    config(0);
    assert.equal(machine.readPort(0xcfc, 4), 0x11e81234);
    machine.writePort(0xcf8, 4, 0x80002800);
    assert.equal(machine.readPort(0xcfc, 4), 0xffffffff);
  });

  it('sizes BAR0 as 1 MiB and decodes it once memory space is enabled', () => {
    config(0x10);
    machine.writePort(0xcfc, 4, 0xffffffff);
    assert.equal(machine.readPort(0xcfc, 4), 0xfff00000);
    machine.writePort(0xcfc, 4, Number(bar));
    assert.equal(machine.readMemory(bar, 4), 0, 'not decoded before the command register enables memory');
    config(0x04);
    machine.writePort(0xcfc, 2, 0x6);
    assert.equal(machine.readMemory(bar, 4), 0x010000ed);
  });

  it('inverts the liveness register and computes factorials', () => {
    machine.writeMemory(bar + 4n, 4, 0x12345678);
    assert.equal(machine.readMemory(bar + 4n, 4), ~0x12345678 >>> 0);
    machine.writeMemory(bar + 8n, 4, 5);
    assert.equal(machine.readMemory(bar + 8n, 4), 120);
  });

  it('copies RAM to its buffer and back by DMA, clearing the run bit', () => {
    machine.writeBytes(0x10000n, Buffer.from('hello from guest RAM'));
    machine.writeMemory64(bar + 0x80n, 0x10000n);
    machine.writeMemory64(bar + 0x88n, 0x40000n);
    machine.writeMemory64(bar + 0x90n, 20n);
    machine.writeMemory64(bar + 0x98n, 1n);
    assert.equal((machine.readMemory64(bar + 0x98n) as bigint) & 1n, 0n);
    machine.writeMemory64(bar + 0x80n, 0x40000n);
    machine.writeMemory64(bar + 0x88n, 0x20000n);
    machine.writeMemory64(bar + 0x98n, 3n);
    assert.equal(Buffer.from(machine.readBytes(0x20000n, 20) as Uint8Array).toString(), 'hello from guest RAM');
    assert.equal(outcomes.filter((o) => o.error).length, 0);
  });

  it('refuses a transfer leaving its 4 KiB buffer without touching memory, and keeps working', () => {
    machine.writeMemory64(bar + 0x80n, 0x40000n);
    machine.writeMemory64(bar + 0x88n, 0x30000n);
    machine.writeMemory64(bar + 0x90n, 4096n);
    machine.writeMemory64(bar + 0x98n, 3n);
    assert.match(String(outcomes.at(-1)!.error), /leaves the 4 KiB buffer/);
    assert.equal(machine.readMemory(bar, 4), 0x010000ed);
  });

  it('reads 0 from unassigned memory and ignores writes there', () => {
    machine.writeMemory(0xe0000000n, 4, 1);
    assert.equal(machine.readMemory(0xe0000000n, 4), 0);
  });
});
