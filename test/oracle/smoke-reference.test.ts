/**
 * kvm-unit-tests' intel-iommu.flat on QEMU 7.2 with KVM (the reference run of ../shared/peers/README.md, edu at
 * 00:04.0 as on our machine) against `viommu smoke`: the register values the guest prints (VER, CAP, ECAP), the
 * interrupt handles it programs, the requester id it maps, and every check, line for line.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { runSmoke } from '../../lib/cli/smoke';
import { INTEL_IOMMU_FLAT, requireKvm } from '../machine/kvm-support';
import { qemuAvailability } from './qemu';

/** The guest's lines that carry register values or programming choices, not addresses its allocator picked. */
const COMPARED =
  /^(smp: waiting for .*|VT-d version:.*|\s+cap:.*|\s+ecap:.*|(PASS|FAIL|SKIP): .*|vtd_setup_msi: .*|INTR: alloc IRTE index .*|map 4K page IOVA 0 to 0x[0-9a-f]+ \(sid=.*\)|SUMMARY: .*)$/;

function comparedLines(serial: string): string[] {
  return (
    serial
      .split('\n')
      .map((line) => line.replace(/\r$/, ''))
      .filter((line) => COMPARED.test(line))
      // The page the guest maps is wherever its allocator found RAM: QEMU's firmware lays memory out differently.
      .map((line) => line.replace(/to 0x[0-9a-f]+ /, 'to (page) '))
  );
}

function runQemu(iommu: string, cpus: number): Promise<{ code: number | null; serial: string }> {
  const args = [
    '-accel',
    'kvm',
    '-cpu',
    'host,-arch-capabilities',
    '-M',
    'q35,kernel-irqchip=split',
    '-smp',
    String(cpus),
    '-m',
    '256M',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=0x4',
    '-device',
    `intel-iommu,${iommu}`,
    '-device',
    'edu,addr=4',
    '-kernel',
    INTEL_IOMMU_FLAT,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(qemuAvailability().binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let serial = '';
    child.stdout.on('data', (chunk: Buffer) => (serial += chunk.toString('latin1')));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, serial }));
  });
}

async function runOurs(iommu: string, cpus: number): Promise<{ code: number; serial: string }> {
  const stdout = new PassThrough();
  let serial = '';
  stdout.on('data', (chunk: Buffer) => (serial += chunk.toString('latin1')));
  const code = await runSmoke(
    { kernel: INTEL_IOMMU_FLAT, iommu, timeout: '60', ram: '256', smp: String(cpus) },
    { stdout, stderr: new PassThrough() },
  );
  return { code, serial: serial.slice(0, serial.indexOf('==== viommu smoke report ====')) };
}

describe('differential: kvm-unit-tests intel-iommu.flat on QEMU 7.2 with KVM vs viommu smoke', function () {
  this.timeout(120_000);

  const runs = [
    { iommu: 'intremap=on,eim=off', cpus: 1 },
    { iommu: 'intremap=on,eim=off,caching-mode=on', cpus: 1 },
    { iommu: 'intremap=on,eim=off,aw-bits=48', cpus: 1 },
    { iommu: 'intremap=on,eim=off', cpus: 4 },
  ];
  for (const { iommu, cpus } of runs) {
    it(`prints the same register values and checks with ${iommu} on ${cpus} vCPU(s)`, async function () {
      requireKvm(this, true);
      const qemu = qemuAvailability();
      if (!qemu.available) {
        console.log(`      skipped: ${qemu.reason}`);
        this.skip();
      }
      const [reference, ours] = [await runQemu(iommu, cpus), await runOurs(iommu, cpus)];
      assert.equal(reference.code, 1, `QEMU's isa-debug-exit status for a guest that passed is 1:\n${reference.serial}`);
      assert.equal(ours.code, 0, ours.serial);
      const expected = comparedLines(reference.serial);
      assert.equal(expected.filter((line) => line.startsWith('PASS: ')).length, 11, reference.serial);
      assert.deepEqual(comparedLines(ours.serial), expected);
    });
  }
});
