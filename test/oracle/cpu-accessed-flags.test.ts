/**
 * The CPU as an oracle for the A and D flags of a faulting walk (the open question behind the QEMU 10.0 quirk
 * 'first-stage-rights-checked-per-level'): a vCPU of the KVM machine switches to IA-32e paging (compatibility mode,
 * CR0.WP set) and makes one access; a fault goes nowhere (IDT limit 0: a triple fault ends the run), and the host
 * reads the guest's paging entries back. Each case is one run.
 *
 * What this shows depends on the KVM: with hardware paging (EPT/NPT) the silicon walks the guest's tables; with
 * shadow paging (kvm_pvm, as on the machines this project is built on) KVM's own walker (arch/x86/kvm/mmu/
 * paging_tmpl.h) does, which models Intel's rule "walk first, then set A and D only if the walk succeeded" (KVM
 * commit 8cbc70696f14). The test prints which KVM module ran it. Skips, saying why, without a usable /dev/kvm.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { KvmMachine } from '../../lib/machine/kvm-machine';
import { GUEST_LOAD_ADDRESS, GuestCode, multibootImage } from '../machine/guest-images';
import { requireKvm } from '../machine/kvm-support';

const P = 1n;
const RW = 2n;
const US = 4n;
const A = 1n << 5n;
const D = 1n << 6n;
const PS = 1n << 7n;
const PML4 = 0x30_0000;
const PDPT = 0x30_1000;
const PD_LOW = 0x30_2000;
const PD_TEST = 0x30_3000;
const PT_TEST = 0x30_4000;
/** The address the case accesses: PML4E 0, PDPTE 1, PDE 0, PTE 0. */
const TEST_VA = 0x4000_0000;
const TEST_PAGE = 0x40_0000;

function u32(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff];
}

/** 32-bit code: IDT limit 0, CR3, CR4.PAE, EFER.LME, CR0.PG|WP (IA-32e paging, compatibility mode), one access, exit 1. */
function guest(access: 'read' | 'write'): GuestCode {
  const code = new GuestCode();
  const b = code.bytes;
  b.push(0x0f, 0x01, 0x1d, ...u32(GUEST_LOAD_ADDRESS + 0xff0)); // lidt [zeroed bss]: limit 0
  b.push(0xb8, ...u32(PML4), 0x0f, 0x22, 0xd8); // mov eax, PML4; mov cr3, eax
  b.push(0x0f, 0x20, 0xe0, 0x0d, ...u32(0x20), 0x0f, 0x22, 0xe0); // cr4 |= PAE
  b.push(0xb9, ...u32(0xc000_0080), 0x0f, 0x32, 0x0d, ...u32(0x100), 0x0f, 0x30); // EFER.LME
  b.push(0x0f, 0x20, 0xc0, 0x0d, ...u32(0x8001_0000), 0x0f, 0x22, 0xc0); // cr0 |= PG | WP
  if (access === 'write') code.store32(TEST_VA, 0x1234_5678);
  else code.load32(TEST_VA);
  return code.exit(1);
}

interface Entries {
  pdpte: bigint;
  pde: bigint;
  pte: bigint;
}

/** One run: the tables (PDPTE 1 -> PD -> PT -> the test page, flags as given), one access; the entries afterwards. */
async function run(access: 'read' | 'write', flags: Entries): Promise<{ end: string; after: Entries } | undefined> {
  const created = await KvmMachine.create({});
  if (created.machine === undefined) return undefined;
  const machine = created.machine;
  try {
    machine.load(multibootImage(guest(access)));
    const memory = machine.testbed.memory;
    memory.writeU64(PML4, BigInt(PDPT) | P | RW | US | A);
    memory.writeU64(PDPT, BigInt(PD_LOW) | P | RW | US | A);
    // The first 2 MiB, identity-mapped, where the code and its data live.
    memory.writeU64(PD_LOW, P | RW | US | A | D | PS);
    memory.writeU64(PDPT + 8, BigInt(PD_TEST) | flags.pdpte);
    memory.writeU64(PD_TEST, BigInt(PT_TEST) | flags.pde);
    memory.writeU64(PT_TEST, BigInt(TEST_PAGE) | flags.pte);
    const outcome = await machine.run(10_000);
    const end = outcome.end.kind === 'debug-exit' ? `exit ${outcome.end.written}` : outcome.end.kind;
    return { end, after: { pdpte: memory.readU64(PDPT + 8), pde: memory.readU64(PD_TEST), pte: memory.readU64(PT_TEST) } };
  } finally {
    machine.close();
  }
}

function kvmModule(): string {
  try {
    return (
      fs
        .readdirSync('/sys/module')
        .filter((name) => /^kvm_/.test(name))
        .join(', ') || 'kvm'
    );
  } catch {
    return 'unknown';
  }
}

function parameter(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * Whether KVM walks the guest's tables itself (shadow paging): kvm_pvm, or kvm_intel without EPT, or kvm_amd without
 * NPT. Then the flags are KVM's model of the CPU, asserted exactly; with hardware paging they are the silicon's, and
 * only printed for faulting cases (vendors may differ).
 */
function shadowPaging(): boolean {
  const module = kvmModule();
  if (module.includes('kvm_pvm')) return true;
  const ept = parameter('/sys/module/kvm_intel/parameters/ept');
  const npt = parameter('/sys/module/kvm_amd/parameters/npt');
  return ept === 'N' || ept === '0' || npt === '0' || npt === 'N';
}

const flagsOf = (value: bigint): string =>
  [
    ['A', A],
    ['D', D],
  ]
    .filter(([, bit]) => (value & (bit as bigint)) !== 0n)
    .map(([name]) => name)
    .join('') || '-';

describe('the CPU (a KVM vCPU) on the A and D flags of a faulting access', function () {
  this.timeout(60_000);
  before(function () {
    requireKvm(this);
    console.log(`      KVM module: ${kvmModule()} (${shadowPaging() ? "shadow paging: KVM's walker" : 'hardware paging: the silicon'})`);
  });

  const table = P | RW | US;
  const cases: Array<{ name: string; access: 'read' | 'write'; flags: Entries; end: string; after: [string, string, string] }> = [
    {
      name: 'a write to a writable page (control)',
      access: 'write',
      flags: { pdpte: table, pde: table, pte: table },
      end: 'exit 1',
      after: ['A', 'A', 'AD'],
    },
    { name: 'a read of a page (control)', access: 'read', flags: { pdpte: table, pde: table, pte: table }, end: 'exit 1', after: ['A', 'A', 'A'] },
    {
      name: 'a supervisor write to a read-only page (CR0.WP)',
      access: 'write',
      flags: { pdpte: table, pde: table, pte: P | US },
      end: 'shutdown',
      after: ['-', '-', '-'],
    },
    {
      name: 'a supervisor write under a read-only PDE (CR0.WP)',
      access: 'write',
      flags: { pdpte: table, pde: P | US, pte: table },
      end: 'shutdown',
      after: ['-', '-', '-'],
    },
    {
      name: 'a read of a not-present page',
      access: 'read',
      flags: { pdpte: table, pde: table, pte: RW | US },
      end: 'shutdown',
      after: ['-', '-', '-'],
    },
  ];
  for (const c of cases) {
    it(`${c.name}: ${c.end}, A/D afterwards PDPTE ${c.after[0]}, PDE ${c.after[1]}, PTE ${c.after[2]}`, async function () {
      const result = await run(c.access, c.flags);
      if (result === undefined) this.skip();
      const seen: [string, string, string] = [flagsOf(result!.after.pdpte), flagsOf(result!.after.pde), flagsOf(result!.after.pte)];
      console.log(`      ${result!.end}; PDPTE ${seen[0]}, PDE ${seen[1]}, PTE ${seen[2]}`);
      assert.equal(result!.end, c.end);
      if (c.end === 'shutdown' && !shadowPaging()) return;
      assert.deepEqual(seen, c.after);
    });
  }
});
