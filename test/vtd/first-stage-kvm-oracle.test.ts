/**
 * First-stage walks against KVM's walk of the same IA-32e tables: random tables in one SharedRegion that a KVM VM
 * maps as guest RAM, random linear addresses, KVM_TRANSLATE on a long-mode vCPU with CR3 at our top table.
 *
 * What KVM_TRANSLATE is, and therefore what this compares (Linux arch/x86/kvm/x86.c and mmu/paging_tmpl.h):
 * - It walks in software (KVM's guest page-table walker, the code KVM emulates guest accesses with), for a
 *   supervisor-mode data read (access 0 in kvm_mmu_gva_to_gpa_system), under the vCPU's CR0/CR4/EFER and CPUID.
 *   It is an implementation of the CPU's rules independent of ours, not the silicon's page walker itself.
 * - It answers valid/invalid and the physical address. Its writeable and usermode fields are the constants 1 and 0,
 *   so R/W is not compared (nor XD or WPE/CR0.WP, which a read never meets). U/S is observed another way: a second
 *   vCPU with CR4.SMAP set (EFLAGS.AC clear) refuses a supervisor read exactly when U/S is 1 at every level, so
 *   "user page" is compared with whether our user-mode read succeeds.
 * - Fault kinds, levels and entry addresses are not reported, so a fault is compared as "invalid" only: not
 *   present, reserved bits, and a table outside guest RAM all read as invalid on both sides.
 * - It sets Accessed flags only when the walk succeeds (after the permission check), so the A flags left in memory
 *   are compared for valid translations only; after a fault ours may have set A in the levels above (as the walk
 *   used them), which KVM does not. It never sets D for a read. EA (EAFE) is VT-d's own and not compared.
 * - It does not check canonical form (it indexes with bits 47:12, or 56:12, and ignores the rest), so only
 *   canonical addresses are drawn here; first-stage-walk.test.ts covers the canonical check.
 * - The vCPU's CPUID sets what counts as reserved: MAXPHYADDR = our address width, Page1GB = FS1GP, and the
 *   vendor is Intel (for an AMD vendor KVM reserves bit 8 of non-leaf entries such as PML4Es; Intel ignores it, as
 *   VT-d does). EFER.NXE is set, as VT-d never reserves XD. 1 GiB pages are compared only where KVM offers Page1GB, and
 *   5 levels only where the host CPU has LA57; the configurations that cannot be opened are listed once.
 *
 * Without a usable /dev/kvm every test skips, after printing why once. VIOMMU_KVM_DEVICE picks another device path
 * (a missing one shows the skip), VIOMMU_KVM_SEED replays a failing run, VIOMMU_KVM_RUNS changes the run count.
 */
import type { FaultRecord } from '../../lib/vtd/fault';
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { SharedRegion } from '../../lib/memory/shared-region';
import { KvmTranslator, type KvmTranslation } from '../../lib/os/kvm';
import { encodeBig, type Field } from '../../lib/vtd/bitfield';
import { faultReason } from '../../lib/vtd/fault-reasons';
import { FirstStageWalker, FS_FR, splitAddress, type FirstStagePage, type FirstStageRequest } from '../../lib/vtd/first-stage-walk';
import { FIRST_STAGE_TABLE_ENTRY } from '../../lib/vtd/structures';
import { PAGE, indexOf } from './paging-builder';

const DEVICE = process.env['VIOMMU_KVM_DEVICE'] ?? '/dev/kvm';
const RUNS = Number(process.env['VIOMMU_KVM_RUNS'] ?? 1000);
const BASE = 0x20_0000;
const REGION_BYTES = 16 * PAGE;
/** Table pages inside guest RAM; whichever page a walk lands on holds a random entry at the index it uses. */
const POOL = Array.from({ length: 8 }, (_, k) => BASE + k * PAGE);
/** A top table outside guest RAM (but below every MAXPHYADDR used): both sides must call the walk invalid. */
const OUTSIDE = BASE + 0x10_0000;

interface WantedConfig {
  readonly levels: 4 | 5;
  readonly haw: number;
  readonly fs1gp: boolean;
}

const WANTED: readonly WantedConfig[] = [
  { levels: 4, haw: 48, fs1gp: true },
  { levels: 4, haw: 48, fs1gp: false },
  { levels: 4, haw: 39, fs1gp: false },
  { levels: 5, haw: 52, fs1gp: true },
  { levels: 5, haw: 46, fs1gp: false },
];

interface OracleConfig extends WantedConfig {
  readonly translator: KvmTranslator;
  readonly walker: FirstStageWalker;
}

const E = FIRST_STAGE_TABLE_ENTRY.f;
function fieldMask(field: Field): bigint {
  return ((1n << BigInt(field.width)) - 1n) << BigInt(field.lsb);
}
/** Bits that mean nothing to a supervisor read of any entry kind (D, G, PAT-in-PTE and the ignored ranges). */
const IGNORED = fieldMask(E.IGN6) | fieldMask(E.IGN8) | fieldMask(E.EA) | fieldMask(E.IGN11) | fieldMask(E.IGN52);

function target(haw: number): fc.Arbitrary<bigint> {
  // Unbiased, so that the high address bits (where the width check lives) are set as often as the low ones.
  const below = (shift: number) => fc.noBias(fc.bigInt(0n, (1n << BigInt(haw - shift)) - 1n)).map((n) => n << BigInt(shift));
  const inRange = fc.oneof(
    { weight: 32, arbitrary: fc.constantFrom(...POOL).map(BigInt) },
    { weight: 3, arbitrary: below(21) },
    { weight: 3, arbitrary: below(30) },
    { weight: 2, arbitrary: below(12) },
  );
  // Bits at or above the width, mostly the first one, where an off-by-one would show.
  const reservedBit = fc.oneof(fc.constant(haw), fc.integer({ min: haw, max: 51 }));
  return fc.oneof(
    { weight: 24, arbitrary: inRange },
    { weight: 1, arbitrary: fc.tuple(inRange, reservedBit).map(([address, bit]) => address | (1n << BigInt(bit))) },
  );
}

/** A random entry of any kind: its meaning depends on the level that reads it, as with a hostile guest. */
function entry(haw: number): fc.Arbitrary<bigint> {
  return fc
    .record({
      present: fc.oneof({ weight: 19, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.constant(0) }),
      rw: fc.nat(1),
      us: fc.oneof({ weight: 3, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.constant(0) }),
      pwt: fc.nat(1),
      pcd: fc.nat(1),
      accessed: fc.nat(1),
      ps: fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constant(1) }),
      xd: fc.nat(1),
      address: target(haw),
      noise: fc.oneof(
        { weight: 2, arbitrary: fc.constant(0n) },
        { weight: 1, arbitrary: fc.bigInt(0n, (1n << 64n) - 1n).map((bits) => bits & IGNORED) },
      ),
    })
    .map(
      (e) =>
        encodeBig(FIRST_STAGE_TABLE_ENTRY, {
          P: e.present,
          RW: e.rw,
          US: e.us,
          PWT: e.pwt,
          PCD: e.pcd,
          A: e.accessed,
          PS: e.ps,
          XD: e.xd,
          ADDR: e.address >> 12n,
        }) | e.noise,
    );
}

/** The canonical address that uses these indexes: top-level indexes 256-511 land in the upper half. */
function linearAddress(levels: number, indexes: number[], offset: number): bigint {
  let va = BigInt(offset);
  for (let level = 1; level <= levels; level++) va |= BigInt(indexes[level - 1]!) << BigInt(12 + 9 * (level - 1));
  const signBit = levels === 5 ? 56n : 47n;
  return BigInt.asUintN(64, BigInt.asIntN(Number(signBit) + 1, va));
}

function describeOurs(result: FirstStagePage | FaultRecord): string {
  if (result.ok) return `page 0x${result.address.toString(16)} (${result.pageSize} bytes, level ${result.level})`;
  return `fault ${faultReason(result.reason)?.name ?? result.reason} at level ${result.level}`;
}

function describeKvm(result: KvmTranslation): string {
  if (!result.valid) return 'invalid';
  return `0x${result.physicalAddress!.toString(16)}${result.userPage === undefined ? '' : result.userPage ? ' (user page)' : ' (supervisor page)'}`;
}

function read(va: bigint, supervisor: boolean): FirstStageRequest {
  return { ...splitAddress(va), write: false, execute: false, supervisor };
}

describe('first-stage walk: agrees with KVM walking the same tables (KVM_TRANSLATE)', function () {
  let region: SharedRegion | undefined;
  let mirror: ArrayBuffer;
  const configs: OracleConfig[] = [];
  const notOpened: string[] = [];
  let unavailable: string | undefined;
  let logged = false;

  before(() => {
    region = SharedRegion.create('kvm-oracle', REGION_BYTES);
    mirror = new ArrayBuffer(REGION_BYTES);
    const mirrorMemory = new GuestMemory();
    mirrorMemory.addRegion({ name: 'mirror', start: BASE, buffer: mirror });
    for (const wanted of WANTED) {
      const opened = KvmTranslator.open(region, BASE, {
        levels: wanted.levels,
        physicalAddressBits: wanted.haw,
        pages1g: wanted.fs1gp,
        devicePath: DEVICE,
      });
      if (opened.translator) {
        configs.push({
          ...wanted,
          translator: opened.translator,
          walker: new FirstStageWalker(mirrorMemory, { addressWidth: wanted.haw, fs1gp: wanted.fs1gp }),
        });
      } else if (opened.cause === 'kvm') {
        unavailable = opened.reason;
        break;
      } else {
        notOpened.push(`${wanted.levels}-level/${wanted.haw}-bit${wanted.fs1gp ? '/1 GiB' : ''}: ${opened.reason}`);
      }
    }
    if (unavailable === undefined && configs.length === 0) unavailable = `no configuration could be opened (${notOpened.join('; ')})`;
  });

  after(() => {
    for (const config of configs) config.translator.close();
    region?.close();
  });

  function requireKvm(context: Mocha.Context): void {
    if (unavailable === undefined) return;
    if (!logged) console.log(`      KVM oracle skipped: ${unavailable}`);
    logged = true;
    context.skip();
  }

  it(`gives the same valid/invalid answer, physical address, U/S and Accessed flags for ${RUNS} random addresses`, function () {
    requireKvm(this);
    if (notOpened.length > 0) console.log(`      not compared on this host: ${notOpened.join('; ')}`);
    const ram = region!;
    const ramBytes = new Uint8Array(ram.buffer);
    const ramView = new DataView(ram.buffer);
    const mirrorBytes = new Uint8Array(mirror);
    const put = (address: number, value: bigint) => ramView.setBigUint64(address - BASE, value, true);

    const scenario = fc.nat(configs.length - 1).chain((c) =>
      fc.record({
        config: fc.constant(c),
        topInPool: fc.oneof({ weight: 15, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
        indexes: fc.array(fc.nat(511), { minLength: 5, maxLength: 5 }),
        offset: fc.nat(PAGE - 1),
        walkEntries: fc.array(fc.array(entry(configs[c]!.haw), { minLength: 5, maxLength: 5 }), { minLength: POOL.length, maxLength: POOL.length }),
        strays: fc.array(fc.tuple(fc.nat(POOL.length - 1), fc.nat(511), entry(configs[c]!.haw)), { maxLength: 8 }),
      }),
    );

    const seen = new Map<string, number>();
    const count = (outcome: string) => seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
    const seed = Number(process.env['VIOMMU_KVM_SEED'] ?? Math.floor(Math.random() * 2 ** 31));
    try {
      fc.assert(
        fc.property(scenario, (s) => {
          const config = configs[s.config]!;
          const va = linearAddress(config.levels, s.indexes, s.offset);
          ramBytes.fill(0);
          POOL.forEach((page, p) => {
            for (let level = 1; level <= config.levels; level++) put(page + indexOf(va, level) * 8, s.walkEntries[p]![level - 1]!);
          });
          for (const [p, index, value] of s.strays) put(POOL[p]! + index * 8, value);
          const top = s.topInPool ? POOL[0]! : OUTSIDE;
          config.translator.setRoot(top);
          mirrorBytes.set(ramBytes);

          const kvm = config.translator.translate(va);
          const params = { fsTable: top, fsLevels: config.levels, wpe: true, eafe: false, fpd: false };
          const ours = config.walker.walk(params, read(va, true));
          count(ours.ok ? `page ${ours.pageSize}` : `fault ${faultReason(ours.reason)?.name}`);
          const where = `0x${va.toString(16)} (${config.levels}-level, ${config.haw}-bit${config.fs1gp ? ', 1 GiB pages' : ''})`;
          assert.equal(kvm.valid, ours.ok, `${where}: KVM ${describeKvm(kvm)}, ours ${describeOurs(ours)}`);
          if (!ours.ok) return;
          const expected = ours.address + Number(va & BigInt(ours.pageSize - 1));
          assert.equal(kvm.physicalAddress, expected, `${where}: KVM ${describeKvm(kvm)}, ours ${describeOurs(ours)}`);
          assert.ok(Buffer.from(ram.buffer).equals(Buffer.from(mirror)), `${where}: KVM and our walk left different Accessed flags`);
          if (kvm.userPage !== undefined) {
            const user = config.walker.walk(params, read(va, false));
            count(kvm.userPage ? 'user page' : 'supervisor page');
            assert.equal(
              kvm.userPage,
              user.ok,
              `${where}: KVM says ${kvm.userPage ? 'user' : 'supervisor'} page, our user read gives ${describeOurs(user)}`,
            );
            if (!user.ok) assert.equal(user.reason, FS_FR.USER_SUPERVISOR);
          }
        }),
        { seed, numRuns: RUNS },
      );
    } catch (error) {
      throw new Error(`KVM oracle disagreed with seed ${seed} (replay with VIOMMU_KVM_SEED=${seed}): ${(error as Error).message}`, { cause: error });
    }

    // Agreement proves little unless the random tables reached every outcome.
    const wanted = [
      'page 4096',
      'page 2097152',
      'fault SM_FIRST_STAGE_NOT_PRESENT',
      'fault SM_FIRST_STAGE_RESERVED',
      'fault SM_FIRST_STAGE_PML4_ACCESS',
      'fault SM_FIRST_STAGE_ACCESS',
    ];
    if (configs.some((c) => c.fs1gp)) wanted.push('page 1073741824');
    if (configs.some((c) => c.translator.userPageProbe)) wanted.push('user page', 'supervisor page');
    if (RUNS >= 1000) for (const outcome of wanted) assert.ok(seen.has(outcome), `no run ended in ${outcome}: ${JSON.stringify([...seen])}`);
  });
});
