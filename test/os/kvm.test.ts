/** KVM as a translation oracle: the addon's KvmVm (fds, memory lifetime, errors) and KvmTranslator on hand-built tables. */
import { strict as assert } from 'node:assert';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { SharedRegion } from '../../lib/memory/shared-region';
import { native, type NativeKvmVm, type SystemCallError } from '../../lib/native';
import { KvmTranslator, type KvmTranslatorOptions } from '../../lib/os/kvm';
import { openFdCount, tick } from '../helpers';
import { PAGE, TableWriter } from '../vtd/paging-builder';

/** Set VIOMMU_KVM_DEVICE=/nonexistent to see the suite skip as it does on machines without KVM. */
const DEVICE = process.env['VIOMMU_KVM_DEVICE'] ?? '/dev/kvm';
const BASE = 0x10_0000;
const REGION_BYTES = 64 * PAGE;
const A = 1n << 5n;

v8.setFlagsFromString('--expose-gc');
const collectGarbage = vm.runInNewContext('gc') as () => void;

function systemError(code: string, syscall?: RegExp) {
  return (error: SystemCallError) => error.code === code && (syscall === undefined || syscall.test(error.syscall));
}

/** The 1 GiB option that this host's KVM can honour (see KvmTranslator.open's causes). */
function hostOptions(options: KvmTranslatorOptions, region: SharedRegion): KvmTranslatorOptions {
  const probe = KvmTranslator.open(region, BASE, { ...options, devicePath: DEVICE });
  if (probe.translator) {
    probe.translator.close();
    return { ...options, devicePath: DEVICE };
  }
  return { ...options, devicePath: DEVICE, pages1g: false };
}

describe('KVM translation oracle: the OS edge', function () {
  let unavailable: string | undefined;
  let logged = false;
  let pages1g = false;

  before(() => {
    const region = SharedRegion.create('kvm-probe', PAGE);
    const opened = KvmTranslator.open(region, 0, { devicePath: DEVICE, pages1g: false });
    if (opened.translator) {
      opened.translator.close();
      const with1g = KvmTranslator.open(region, 0, { devicePath: DEVICE });
      pages1g = with1g.translator !== undefined;
      with1g.translator?.close();
    } else {
      unavailable = opened.reason;
    }
    region.close();
  });

  function requireKvm(context: Mocha.Context): void {
    if (unavailable === undefined) return;
    if (!logged) console.log(`      KVM tests skipped: ${unavailable}`);
    logged = true;
    context.skip();
  }

  describe('KvmTranslator.open without a usable KVM', () => {
    it('says why instead of throwing: no such device, or a device that is not KVM', () => {
      const region = SharedRegion.create('kvm-absent', PAGE);
      const before = openFdCount();
      const missing = KvmTranslator.open(region, 0, { devicePath: '/nonexistent/kvm' });
      assert.equal(missing.translator, undefined);
      assert.equal(missing.cause, 'kvm');
      assert.match(missing.reason ?? '', /\/nonexistent\/kvm does not exist/);
      const notKvm = KvmTranslator.open(region, 0, { devicePath: '/dev/null' });
      assert.equal(notKvm.cause, 'kvm');
      assert.match(notKvm.reason ?? '', /KVM_GET_API_VERSION.*ENOTTY/);
      assert.equal(openFdCount(), before, 'the device fds opened on the way are closed');
      region.close();
    });

    it('throws for programmer mistakes: bad options, a misaligned base, memory already unmapped', () => {
      const region = SharedRegion.create('kvm-options', PAGE);
      assert.throws(() => KvmTranslator.open(region, 0, { levels: 3 as never }), { code: 'ERR_KVM_OPTIONS' });
      assert.throws(() => KvmTranslator.open(region, 0, { physicalAddressBits: 53 }), { code: 'ERR_KVM_OPTIONS' });
      assert.throws(() => KvmTranslator.open(region, 0x800, {}), { code: 'ERR_KVM_OPTIONS' });
      assert.throws(() => KvmTranslator.open(region, 2 ** 39, { physicalAddressBits: 39 }), { code: 'ERR_KVM_OPTIONS' });
      region.close();
      assert.throws(() => KvmTranslator.open(region, 0, {}), { code: 'ERR_KVM_MEMORY_UNMAPPED' });
    });
  });

  describe('KvmVm (addon)', () => {
    function openVm(): NativeKvmVm {
      return new native.KvmVm!(DEVICE);
    }

    it('opens /dev/kvm, checks API version 12, creates a VM and vCPUs, and closes every fd once', function () {
      requireKvm(this);
      const before = openFdCount();
      const kvm = openVm();
      assert.equal(kvm.apiVersion, 12);
      assert.equal(kvm.closed, false);
      assert.equal(kvm.createVcpu(), 0);
      assert.equal(kvm.createVcpu(), 1);
      assert.equal(kvm.vcpuCount, 2);
      assert.equal(openFdCount(), before + 4, '/dev/kvm, the VM and two vCPUs');
      assert.ok(
        kvm.supportedCpuid().some((entry) => entry.function === 0x8000_0008),
        'CPUID carries the address sizes',
      );
      assert.equal(kvm.close(), true);
      assert.equal(kvm.close(), false);
      assert.equal(kvm.closed, true);
      assert.equal(openFdCount(), before);
      assert.throws(() => kvm.createVcpu(), systemError('EBADF'));
      assert.throws(() => kvm.translate(0, 0n), systemError('EBADF'));
    });

    it('closes the fds of a VM nobody closed when it is garbage-collected', async function () {
      requireKvm(this);
      const before = openFdCount();
      (() => {
        for (let i = 0; i < 4; i++) openVm().createVcpu();
      })();
      assert.equal(openFdCount(), before + 12);
      for (let round = 0; round < 20 && openFdCount() !== before; round++) {
        collectGarbage();
        await tick(1);
      }
      assert.equal(openFdCount(), before);
    });

    it('refuses bad memory and arguments with errno-named errors', function () {
      requireKvm(this);
      const kvm = openVm();
      const fd = native.memfdCreate('kvm-args', 2 * PAGE);
      const mapping = native.mapFd(fd, 0, 2 * PAGE, true);
      assert.throws(() => kvm.setUserMemoryRegion(0, 0, new ArrayBuffer(100)), systemError('EINVAL', /SET_USER_MEMORY_REGION/));
      assert.throws(() => kvm.setUserMemoryRegion(0, 0x800, mapping.buffer), systemError('EINVAL'));
      assert.throws(() => kvm.setUserMemoryRegion(0, 0, 'memory' as never), { code: 'ERR_INVALID_ARG_TYPE' });
      assert.throws(() => kvm.setUserMemoryRegion(-1, 0, mapping.buffer), { code: 'ERR_INVALID_ARG_VALUE' });
      kvm.setUserMemoryRegion(0, 0, mapping.buffer);
      kvm.setUserMemoryRegion(0, 0x10_0000, mapping.buffer);
      assert.throws(() => kvm.translate(0, 0n), systemError('ENOENT', /KVM_TRANSLATE/), 'no vCPU 0 yet');
      const vcpu = kvm.createVcpu();
      assert.throws(() => kvm.translate(vcpu, -1n), { code: 'ERR_INVALID_ARG_VALUE' });
      assert.throws(() => kvm.setSregs(vcpu, { ...kvm.getSregs(vcpu), cr3: 'x' } as never), { code: 'ERR_INVALID_ARG_TYPE' });
      assert.throws(() => kvm.setCpuid(vcpu, [{ function: 0 }] as never), { code: 'ERR_INVALID_ARG_TYPE' });
      // Paging on without PAE and with long mode active: the kernel says EINVAL.
      assert.throws(() => kvm.setSregs(vcpu, { ...kvm.getSregs(vcpu), cr0: 0x8000_0001n, efer: 0x500n }), systemError('EINVAL', /SET_SREGS/));
      mapping.unmap();
      assert.throws(() => kvm.translate(vcpu, 0n), systemError('EFAULT', /KVM_TRANSLATE/));
      const detached = native.mapFd(fd, 0, PAGE, true);
      const buffer = detached.buffer;
      detached.unmap();
      assert.throws(() => kvm.setUserMemoryRegion(1, 0x20_0000, buffer), systemError('EFAULT'));
      kvm.close();
      fd.close();
    });
  });

  describe('KvmTranslator on hand-built tables', () => {
    let region: SharedRegion;
    let memory: GuestMemory;
    let tables: TableWriter;
    let top: number;

    beforeEach(() => {
      region = SharedRegion.create('kvm-tables', REGION_BYTES);
      memory = new GuestMemory();
      memory.addSharedRegion('ram', BASE, region);
      tables = new TableWriter(memory, BASE);
      top = tables.page();
    });

    afterEach(() => region.close());

    function open(options: KvmTranslatorOptions = {}): KvmTranslator {
      const opened = KvmTranslator.open(region, BASE, hostOptions(options, region));
      if (!opened.translator) assert.fail(`KVM opened for the probe but not now: ${opened.reason}`);
      opened.translator.setRoot(top);
      return opened.translator;
    }

    it('translates an identity-mapped 4-level table: 4 KiB and 2 MiB pages, 1 GiB where KVM offers them', function () {
      requireKvm(this);
      const pages: { va: bigint; size: '4k' | '2m' | '1g'; leafLevel: number }[] = [
        { va: 0x1234_5000n, size: '4k', leafLevel: 1 },
        { va: 0x4060_0000n, size: '2m', leafLevel: 2 },
        ...(pages1g ? [{ va: 0x80_4000_0000n, size: '1g' as const, leafLevel: 3 }] : []),
      ];
      for (const { va, size } of pages) tables.mapFirst(top, 4, va, Number(va), { size });
      const translator = open({ pages1g });
      for (const { va, leafLevel } of pages) {
        for (const offset of [0n, 0xabcn, 0xfffn]) {
          const result = translator.translate(va + offset);
          assert.equal(result.valid, true, `0x${(va + offset).toString(16)}`);
          assert.equal(result.physicalAddress, Number(va + offset));
        }
        for (let level = 4; level >= leafLevel; level--) {
          assert.equal(tables.read64(tables.firstEntryAddress(top, 4, va, level)) & A, A, `A set at level ${level} by KVM's walk`);
        }
      }
      assert.equal(translator.translate(0x5000_0000n).valid, false, 'an unmapped page');
      assert.equal(translator.translate(0x7f00_0000_0000n).valid, false, 'an empty PML4 slot');
      assert.equal(translator.translate(0x7f00_0000_0000n).physicalAddress, undefined);
      translator.close();
      assert.equal(translator.closed, true);
    });

    it('maps the upper half through PML4 slots 256-511 and follows the root that setRoot gives', function () {
      requireKvm(this);
      tables.mapFirst(top, 4, 0xffff_8000_0000_3000n, 0x7000);
      const translator = open();
      assert.equal(translator.translate(0xffff_8000_0000_3010n).physicalAddress, 0x7010);
      assert.equal(translator.translate(-0x7fff_ffff_d000n + 0x10n).physicalAddress, 0x7010, 'negative bigint = upper half');
      const other = tables.page();
      tables.mapFirst(other, 4, 0xffff_8000_0000_3000n, 0x9000);
      translator.setRoot(other);
      assert.equal(translator.tableRoot, other);
      assert.equal(translator.translate(0xffff_8000_0000_3010n).physicalAddress, 0x9010);
      assert.throws(() => translator.setRoot(other + 8), { code: 'ERR_KVM_ROOT' });
      translator.close();
    });

    it('tells user pages from supervisor pages by repeating the read with CR4.SMAP set', function () {
      requireKvm(this);
      tables.mapFirst(top, 4, 0x1000n, 0x2000, { us: true });
      tables.mapFirst(top, 4, 0x20_1000n, 0x3000, { us: false });
      tables.mapFirst(top, 4, 0x4000_1000n, 0x4000, { us: true });
      const pdpe = tables.firstEntryAddress(top, 4, 0x4000_1000n, 3);
      tables.write64(pdpe, tables.read64(pdpe) & ~4n);
      const translator = open();
      if (!translator.userPageProbe) {
        translator.close();
        this.skip();
      }
      assert.equal(translator.translate(0x1000n).userPage, true);
      assert.equal(translator.translate(0x20_1000n).userPage, false, 'U/S clear in the PTE');
      assert.equal(translator.translate(0x4000_1000n).userPage, false, 'U/S clear in the PDPE rules the subtree');
      assert.equal(translator.translate(0x4000_1000n).physicalAddress, 0x4000, 'supervisor reads still translate');
      translator.close();
    });

    it('reserves what the CPU reserves: address bits from MAXPHYADDR, PS in a PML4E, 2 MiB leaf bits 20:13, PS in a PDPE without 1 GiB pages', function () {
      requireKvm(this);
      const va = 0x5000n;
      tables.mapFirst(top, 4, va, 0x6000);
      const pte = tables.firstEntryAddress(top, 4, va, 1);
      const pml4e = tables.firstEntryAddress(top, 4, va, 4);
      const narrow = open({ physicalAddressBits: 39, pages1g: false });
      const wide = open({ physicalAddressBits: 48 });
      const check = (what: string, narrowValid: boolean, wideValid: boolean) => {
        assert.equal(narrow.translate(va).valid, narrowValid, `39-bit: ${what}`);
        assert.equal(wide.translate(va).valid, wideValid, `48-bit: ${what}`);
      };
      check('plain', true, true);
      const plain = tables.read64(pte);
      tables.write64(pte, plain | (1n << 40n));
      check('PTE address bit 40', false, true);
      tables.write64(pte, plain | (1n << 63n) | (0x7ffn << 52n) | (1n << 8n) | (1n << 7n));
      check('XD (EFER.NXE), ignored bits 62:52, G and PAT', true, true);
      tables.write64(pte, plain);
      const pml4Value = tables.read64(pml4e);
      tables.write64(pml4e, pml4Value | (1n << 8n));
      check('bit 8 of a PML4E, ignored on Intel (AMD reserves it)', true, true);
      tables.write64(pml4e, pml4Value | (1n << 7n));
      check('PS in a PML4E', false, false);
      tables.write64(pml4e, pml4Value);

      const big = 0x20_0000n;
      tables.mapFirst(top, 4, big, 0x60_0000, { size: '2m', extra: 1n << 12n });
      const pde = tables.firstEntryAddress(top, 4, big, 2);
      assert.equal(wide.translate(big + 0x1234n).physicalAddress, 0x60_1234, 'bit 12 of a 2 MiB leaf is PAT, not address');
      tables.write64(pde, tables.read64(pde) | (1n << 13n));
      assert.equal(wide.translate(big).valid, false, 'bit 13 of a 2 MiB leaf is reserved');

      const huge = 0x80_0000_0000n;
      tables.mapFirst(top, 4, huge, 0x4000_0000, { size: '1g' });
      assert.equal(narrow.translate(huge).valid, false, 'PS in a PDPE without 1 GiB pages');
      narrow.close();
      wide.close();
    });

    it('walks 5 levels with CR4.LA57 where the host CPU has it, and says so where it does not', function () {
      requireKvm(this);
      const va = 0x00ab_cdef_1234_5000n;
      tables.mapFirst(top, 5, va, 0x55_5000);
      const opened = KvmTranslator.open(region, BASE, { levels: 5, pages1g: false, devicePath: DEVICE });
      if (!opened.translator) {
        assert.equal(opened.cause, '5-level');
        assert.match(opened.reason, /LA57/);
        return;
      }
      opened.translator.setRoot(top);
      assert.equal(opened.translator.translate(va + 0x10n).physicalAddress, 0x55_5010);
      opened.translator.close();
    });

    it('refuses to translate once the region is unmapped, and keeps memory mapped that JS dropped', async function () {
      requireKvm(this);
      tables.mapFirst(top, 4, 0x3000n, 0x8000);
      const translator = open();
      assert.equal(translator.translate(0x3000n).physicalAddress, 0x8000);
      region.close();
      assert.throws(() => translator.translate(0x3000n), systemError('EFAULT', /KVM_TRANSLATE/));
      translator.close();

      // A mapping nobody references any more stays mapped while the VM holds its buffer.
      const kvm = new native.KvmVm!(DEVICE);
      const vcpu = kvm.createVcpu();
      const sregs = kvm.getSregs(vcpu);
      (() => {
        const fd = native.memfdCreate('kvm-kept', 4 * PAGE);
        const mapping = native.mapFd(fd, 0, 4 * PAGE, true);
        const view = new DataView(mapping.buffer);
        view.setBigUint64(0, 0x1003n, true);
        view.setBigUint64(0x1000, 0x2003n, true);
        view.setBigUint64(0x2000, 0x3003n, true);
        view.setBigUint64(0x3000, 0xa003n, true);
        kvm.setUserMemoryRegion(0, 0, mapping.buffer);
        fd.close();
      })();
      for (let round = 0; round < 5; round++) {
        collectGarbage();
        await tick(1);
      }
      kvm.setCpuid(vcpu, kvm.supportedCpuid());
      const code = { ...sregs.ds, selector: 8, type: 11, l: true, limit: 0xffff_ffff, g: true };
      kvm.setSregs(vcpu, { ...sregs, cr0: 0x8001_0031n, cr3: 0n, cr4: 0x20n, efer: 0xd00n, cs: code });
      assert.equal(kvm.translate(vcpu, 0x123n).physicalAddress, 0xa123n, 'the tables written before collection are still there');
      kvm.close();
    });
  });
});
