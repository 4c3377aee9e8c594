/** The KVM machine with tiny guests: how guests end (status, triple fault, spinning), wild accesses, a DMA fault, and the runner's contract. */
import assert from 'node:assert/strict';
import { KvmMachine, type MachineOutcome } from '../../lib/machine/kvm-machine';
import { parseGuestChecks, renderSmokeReport, smokeExitCode } from '../../lib/machine/smoke-report';
import { summarizeUnit } from '../../lib/machine/unit-summary';
import { KvmVirtualMachine } from '../../lib/os/kvm-vm';
import { SharedRegion } from '../../lib/memory';
import { EDU_REGISTERS } from '../../lib/devices/edu';
import { DMAR_BASE } from '../../lib/vmm/testbed';
import { OFFSET, GCMD, GSTS } from '../../lib/vtd/register-bits';
import { GUEST_LOAD_ADDRESS, GuestCode, multibootImage } from './guest-images';
import { requireKvm } from './kvm-support';
import { ServeProcess } from '../vfio-user/cli-process';
import { waitFor } from '../helpers';

/** Where the machine's firmware puts edu's BAR0: the first BAR of the PCI window. */
const EDU_BAR0 = 0xc000_0000;
const EDU_DEVFN = 4 << 3;

async function runGuest(code: GuestCode, timeoutMs = 10_000, iommu = ''): Promise<{ machine: KvmMachine; outcome: MachineOutcome; report: string }> {
  const created = await KvmMachine.create({ iommu });
  assert.ok(created.machine, created.reason);
  const machine = created.machine;
  machine.load(multibootImage(code));
  const outcome = await machine.run(timeoutMs);
  const report = renderSmokeReport({
    image: 'test guest',
    iommu,
    timeoutMs,
    checks: parseGuestChecks(''),
    outcome,
    unit: summarizeUnit(
      machine.unit,
      machine.placedFunctions.map((fn) => fn.devfn),
    ),
    deviceErrors: machine.deviceErrors,
    unclaimedMmio: machine.unclaimedMmio,
  });
  return { machine, outcome, report };
}

describe('KVM machine with tiny guests', function () {
  this.timeout(30_000);
  const machines: KvmMachine[] = [];
  afterEach(() => machines.splice(0).forEach((machine) => machine.close()));

  async function run(code: GuestCode, timeoutMs?: number, iommu?: string) {
    const result = await runGuest(code, timeoutMs, iommu);
    machines.push(result.machine);
    return result;
  }

  it('ends with the status the guest writes to isa-debug-exit, and the exit code follows it', async function () {
    requireKvm(this);
    const { outcome, report } = await run(new GuestCode().exit(5));
    assert.deepEqual(outcome.end, { kind: 'debug-exit', status: 11, written: 5 });
    assert.equal(smokeExitCode(outcome.end), 5);
    assert.match(report, /end: the guest wrote 5 to isa-debug-exit \(QEMU would exit with 11\)/);
  });

  it('reports a triple fault with the registers where the CPU stopped', async function () {
    requireKvm(this);
    const { outcome, report } = await run(new GuestCode().tripleFault());
    assert.equal(outcome.end.kind, 'shutdown');
    assert.equal(smokeExitCode(outcome.end), 125);
    assert.ok(outcome.registers, 'registers are reported');
    assert.match(report, /end: shutdown: vCPU 0: the guest shut the CPU down \(a triple fault/);
    assert.match(report, /rip 0x[0-9a-f]+ rsp/);
  });

  it('stops a spinning guest at the timeout and says where it was', async function () {
    requireKvm(this);
    const code = new GuestCode().spin();
    const { outcome, report } = await run(code, 500);
    assert.equal(outcome.end.kind, 'timeout');
    assert.equal(smokeExitCode(outcome.end), 124);
    assert.equal(outcome.registers?.regs.rip, BigInt(GUEST_LOAD_ADDRESS + 32), 'rip is the jmp $');
    assert.match(report, /still running after 0.5 s and was stopped/);
  });

  it('lets a wild MMIO write land nowhere, counts it, and keeps running', async function () {
    requireKvm(this);
    const { machine, outcome, report } = await run(new GuestCode().store32(0xd000_0000, 0x1234).load32(0xd000_1000).exit(0));
    assert.equal(outcome.end.kind, 'debug-exit');
    assert.deepEqual(machine.unclaimedMmio.get(0xd000_0000), { reads: 0, writes: 1 });
    assert.deepEqual(machine.unclaimedMmio.get(0xd000_1000), { reads: 1, writes: 0 });
    assert.match(report, /unclaimed MMIO at 0xd0000000: 0 read\(s\), 1 write\(s\)/);
  });

  it('records the fault of a DMA to an IOVA the guest never mapped, and the guest goes on', async function () {
    requireKvm(this);
    // Translation on over an empty root table, then edu reads 4 bytes at IOVA 0x1000.
    const rootTable = 0x20_0000;
    const code = new GuestCode()
      .store32(DMAR_BASE + OFFSET.RTADDR, rootTable)
      .store32(DMAR_BASE + OFFSET.RTADDR + 4, 0)
      .store32(DMAR_BASE + OFFSET.GCMD, GCMD.SRTP)
      .waitFor(DMAR_BASE + OFFSET.GSTS, GSTS.RTPS)
      .store32(DMAR_BASE + OFFSET.GCMD, GCMD.TE)
      .waitFor(DMAR_BASE + OFFSET.GSTS, GSTS.TES)
      .pciConfigWrite(EDU_DEVFN, 0x04, 0x0006) // memory decoding and bus mastering
      .store32(EDU_BAR0 + EDU_REGISTERS.dmaSource, 0x1000)
      .store32(EDU_BAR0 + EDU_REGISTERS.dmaSource + 4, 0)
      .store32(EDU_BAR0 + EDU_REGISTERS.dmaDestination, 0x40000)
      .store32(EDU_BAR0 + EDU_REGISTERS.dmaDestination + 4, 0)
      .store32(EDU_BAR0 + EDU_REGISTERS.dmaCount, 4)
      .store32(EDU_BAR0 + EDU_REGISTERS.dmaCommand, 1)
      .waitFor(EDU_BAR0 + EDU_REGISTERS.dmaCommand, 1, true)
      .exit(0);
    const { outcome, report } = await run(code);
    assert.deepEqual(outcome.end, { kind: 'debug-exit', status: 1, written: 0 });
    assert.match(report, /unit: legacy mode, root table 0x200000, status RTPS TES/);
    assert.match(report, /faults: 1 recorded \(FSTS PPF\)/);
    assert.match(report, /FRCD0: 00:04\.0 read 0x1000: reason 0x1 /);
    assert.match(report, /domains: none/);
  });

  it('gives the guest all-ones from a vfio-user device whose server died, lists the failures once each, and keeps running', async function () {
    requireKvm(this);
    const server = await ServeProcess.start();
    const created = await KvmMachine.create({ deviceSocket: server.socketPath });
    assert.ok(created.machine, created.reason);
    const machine = created.machine;
    machines.push(machine);
    await server.stop();
    await waitFor(() => machine.attachment!.client.closed, 'the attachment to notice its server is gone');
    const result = 0x20_0000;
    machine.load(multibootImage(new GuestCode().load32(EDU_BAR0).storeEax(result).load32(EDU_BAR0).exit(0)));
    const outcome = await machine.run(10_000);
    assert.deepEqual(outcome.end, { kind: 'debug-exit', status: 1, written: 0 });
    assert.equal(machine.testbed.memory.readU32(result), 0xffff_ffff);
    assert.equal(machine.deviceErrors.get(`MMIO ${'0x' + EDU_BAR0.toString(16)} failed: the vfio-user client is closed`), 2);
  });
});

describe('KVM vCPU runner', function () {
  this.timeout(30_000);

  function openWith(code: GuestCode): { vm: KvmVirtualMachine; ram: SharedRegion; vcpu: number } {
    const opened = KvmVirtualMachine.open();
    assert.ok(opened.vm, opened.reason);
    const ram = SharedRegion.create('runner-test', 4 << 20);
    const image = multibootImage(code);
    // Without a loader: the image as it lies in RAM, its 32-byte header first and the code after it.
    new Uint8Array(ram.buffer).set(image, GUEST_LOAD_ADDRESS);
    opened.vm.addMemory(0, 0, ram);
    const vcpu = opened.vm.createVcpu();
    opened.vm.enterProtectedMode(vcpu, { eip: GUEST_LOAD_ADDRESS + 32 });
    return { vm: opened.vm, ram, vcpu };
  }

  it('hands each exit over and resumes with the answer; a read needs exactly its bytes', async function () {
    requireKvm(this);
    const { vm, ram, vcpu } = openWith(new GuestCode().load32(0xd000_0000).out(0x80, 0).spin());
    try {
      const seen: string[] = [];
      await new Promise<void>((resolve) => {
        const runner = vm.run(vcpu, (exit) => {
          if (exit.reason === 'mmio') {
            seen.push(`mmio ${exit.address.toString(16)} ${exit.size} ${exit.write}`);
            assert.throws(() => runner.complete(new Uint8Array(2)), /takes 4 bytes, got 2/);
            assert.throws(() => runner.complete(), /needs its bytes/);
            runner.complete(Uint8Array.of(0x78, 0x56, 0x34, 0x12));
          } else if (exit.reason === 'io') {
            seen.push(`io ${exit.port.toString(16)} ${exit.size} ${exit.write}`);
            assert.equal(vm.registers(vcpu).regs.rax, 0n, 'registers are readable while the vCPU waits');
            runner.stop();
            assert.throws(() => runner.complete(Uint8Array.of(1)), /not waiting|read takes/);
          } else {
            seen.push(exit.reason);
            assert.equal(runner.running, false);
            resolve();
          }
        });
      });
      assert.deepEqual(seen, ['mmio d0000000 4 false', 'io 80 4 true', 'stopped']);
    } finally {
      vm.close();
      ram.close();
    }
  });

  it('takes a spinning vCPU out of the guest when the VM closes', async function () {
    requireKvm(this);
    const { vm, ram, vcpu } = openWith(new GuestCode().spin());
    try {
      const ended = new Promise<string>((resolve) => vm.run(vcpu, (exit) => resolve(exit.reason)));
      await new Promise((resolve) => setTimeout(resolve, 50));
      vm.close();
      assert.equal(await ended, 'stopped');
      assert.equal(vm.closed, true);
    } finally {
      ram.close();
    }
  });
});
