/** RegisterFile: reset values, read-only/W1C/write-only masks, access sizes, unknown offsets, the write hook. */
import { strict as assert } from 'node:assert';
import sinon from 'sinon';
import { ViommuError } from '../../lib/errors';
import { computeCapabilities, vtdConfigFromString } from '../../lib/vtd/config';
import { RegisterFile, type RegisterWriteEvent } from '../../lib/vtd/register-file';
import {
  FAULT_RECORD_COUNT,
  FAULT_RECORD_OFFSET,
  REGISTERS,
  faultRecordRegister,
  findRegister,
  parseRegisterName,
  type RegisterName,
} from '../../lib/vtd/registers';

function registerFile(properties = '', hook?: (event: RegisterWriteEvent) => void): RegisterFile {
  return new RegisterFile(computeCapabilities(vtdConfigFromString(properties)), hook);
}

describe('vtd register file', () => {
  it('resets to QEMU 7.2 values', () => {
    const regs = registerFile();
    assert.equal(regs.read(0x00, 4), 0x10);
    assert.equal(regs.read(0x08, 8), 0x00d2008c22260206n);
    assert.equal(regs.read(0x10, 8), 0xf00f4an);
    assert.equal(regs.read(0x38, 4), 0x80000000);
    assert.equal(regs.read(0xa0, 4), 0x80000000);
    assert.equal(regs.read(0x1c, 4), 0);
  });

  it('reads 64-bit registers as two dwords', () => {
    const regs = registerFile();
    assert.equal(regs.read(0x08, 4), 0x22260206);
    assert.equal(regs.read(0x0c, 4), 0x00d2008c);
  });

  it('keeps read-only registers and bits unchanged', () => {
    const regs = registerFile();
    regs.write(0x08, 8, 0n);
    regs.write(0x00, 4, 0xffffffff);
    regs.write(0x1c, 4, 0xffffffff);
    assert.equal(regs.read(0x08, 8), 0x00d2008c22260206n);
    assert.equal(regs.read(0x00, 4), 0x10);
    assert.equal(regs.read(0x1c, 4), 0);
    regs.write(0x38, 4, 0x7fffffff); // FECTL: only IM is writable
    assert.equal(regs.read(0x38, 4), 0);
    regs.write(0x3c, 4, 0xffffffff); // FEDATA: 15:0
    assert.equal(regs.read(0x3c, 4), 0xffff);
  });

  it('applies the writable mask to 64-bit registers (RTADDR keeps bits 9:0 at 0)', () => {
    const regs = registerFile();
    regs.write(0x20, 8, 0xffffffffffffffffn);
    assert.equal(regs.readRaw('RTADDR'), 0xfffffffffffffc00n);
  });

  it('clears W1C bits written as 1 and ignores 0s (FSTS, ICS, FRCD.F)', () => {
    const regs = registerFile();
    regs.writeRaw('FSTS', 0x13n); // PFO, PPF, IQE set by the unit
    regs.write(0x34, 4, 0x1); // clear PFO only
    assert.equal(regs.read(0x34, 4), 0x12);
    regs.write(0x34, 4, 0x12); // PPF is not W1C
    assert.equal(regs.read(0x34, 4), 0x2);
    regs.writeRaw('ICS', 1n);
    regs.write(0x9c, 4, 0);
    assert.equal(regs.read(0x9c, 4), 1);
    regs.write(0x9c, 4, 1);
    assert.equal(regs.read(0x9c, 4), 0);
    regs.writeRaw('FRCD0_HI', 0x80ffff0500000020n);
    regs.write(0x22c, 4, 0x80000000); // upper dword only, as the oracle did
    assert.equal(regs.read(0x228, 8), 0x00ffff0500000020n);
  });

  it('reads write-only bits as 0 but stores them for the unit', () => {
    const regs = registerFile();
    regs.write(0x18, 4, 0x80000000); // GCMD.TE
    assert.equal(regs.read(0x18, 4), 0);
    assert.equal(regs.readRaw('GCMD'), 0x80000000n);
    regs.write(0xf0, 8, 0x1234567000n | 0x45n); // IVA
    assert.equal(regs.read(0xf0, 8), 0n);
    assert.equal(regs.readRaw('IVA'), 0x1234567045n);
  });

  it('writes the upper dword of a 64-bit register alone', () => {
    const events: RegisterWriteEvent[] = [];
    const regs = registerFile('', (e) => events.push(e));
    regs.write(0x28, 4, 0x1234); // CCMD low: DID
    regs.write(0x2c, 4, 0xa0000000); // CCMD high: ICC | global
    assert.equal(regs.readRaw('CCMD'), 0xa000000000001234n);
    assert.equal(events.length, 2);
    assert.equal(events[1]!.register.name, 'CCMD');
    assert.equal(events[1]!.offset, 0x2c);
    assert.equal(events[1]!.written, 0xa000000000000000n);
    assert.equal(events[1]!.accessMask, 0xffffffff00000000n);
    assert.equal(events[1]!.oldValue, 0x1234n);
    assert.equal(events[1]!.newValue, 0xa000000000001234n);
  });

  it('splits an 8-byte access over two 32-bit registers into one event each', () => {
    const hook = sinon.spy();
    const regs = registerFile('', hook);
    regs.write(0x38, 8, 0x0000abcd00000000n); // FECTL = 0, FEDATA = 0xabcd
    assert.equal(regs.read(0x38, 4), 0);
    assert.equal(regs.read(0x3c, 4), 0xabcd);
    assert.equal(regs.read(0x38, 8), 0x0000abcd00000000n);
    assert.equal(hook.callCount, 2);
    assert.deepEqual(
      hook.getCalls().map((c) => (c.args[0] as RegisterWriteEvent).register.name),
      ['FECTL', 'FEDATA'],
    );
    assert.equal((hook.secondCall.args[0] as RegisterWriteEvent).offset, 0x3c);
  });

  it('reads 0 and ignores writes at unknown, misaligned and out-of-window offsets', () => {
    const hook = sinon.spy();
    const regs = registerFile('', hook);
    for (const offset of [0x48, 0x4c, 0x118, 0x230, 0xffc, 0xe00]) {
      assert.deepEqual(regs.write(offset, 4, 0xffffffff), []);
      assert.equal(regs.read(offset, 4), 0);
    }
    assert.equal(regs.read(0x0a, 4), 0); // misaligned
    assert.equal(regs.read(0x0c, 8), 0n); // 8-byte access not 8-aligned
    assert.deepEqual(regs.write(0x24, 8, 1n), []);
    assert.equal(regs.read(0x1000, 4), 0);
    assert.equal(regs.read(-4, 4), 0);
    assert.equal(hook.callCount, 0);
    // A 64-bit write half over a register and half over a hole touches only the register.
    const events = regs.write(0x40, 8, 0xffffffffffffffffn); // FEADDR then FEUADDR (reads 0 in QEMU)
    assert.deepEqual(
      events.map((e) => e.register.name),
      ['FEADDR', 'FEUADDR'],
    );
    assert.equal(regs.read(0x40, 4), 0xfffffffc);
    assert.equal(regs.read(0x44, 4), 0);
  });

  it('refuses access sizes other than 4 and 8 as a programmer error', () => {
    const regs = registerFile();
    assert.throws(
      () => regs.read(0, 2 as 4),
      (e: unknown) => e instanceof ViommuError && e.code === 'ERR_VTD_ACCESS_SIZE',
    );
    assert.throws(() => regs.write(0, 1 as 4, 0), ViommuError);
  });

  it('offers page-request and virtual-command registers only with their ECAP feature', () => {
    const regs = registerFile();
    assert.equal(regs.registerAt(0xc0), undefined);
    assert.equal(regs.registerAt(0xe30), undefined);
    const withPrs = new RegisterFile({ cap: 0n, ecap: 1n << 29n, vccap: 0n });
    assert.equal(withPrs.registerAt(0xc0)?.name, 'PQH');
    assert.equal(withPrs.read(0xe0, 4), 0x80000000);
    const withVcs = new RegisterFile({ cap: 0n, ecap: 1n << 44n, vccap: 1n });
    assert.equal(withVcs.read(0xe30, 8), 1n);
    assert.throws(
      () => regs.readRaw('PQH'),
      (e: unknown) => e instanceof ViommuError && e.code === 'ERR_UNKNOWN_REGISTER',
    );
  });

  it('resets everything the guest changed', () => {
    const regs = registerFile();
    regs.write(0x38, 4, 0);
    regs.write(0x90, 8, 0x1000n);
    regs.reset();
    assert.equal(regs.read(0x38, 4), 0x80000000);
    assert.equal(regs.read(0x90, 8), 0n);
  });

  it('keeps IQA.DW writable (QEMU 7.2 only drops it on read-back) and masks IQT to bits 18:4', () => {
    const regs = registerFile('x-scalable-mode=on');
    regs.write(0x90, 8, 0x12345000n | (1n << 11n) | 0x7n | 0xf0n);
    assert.equal(regs.read(0x90, 8), 0x12345807n);
    regs.write(0x88, 8, 0xffffffffffffffffn);
    assert.equal(regs.read(0x88, 8), 0x7fff0n);
  });

  it('describes the register table consistently', () => {
    for (const register of REGISTERS) {
      const all = register.width === 64 ? 0xffffffffffffffffn : 0xffffffffn;
      assert.equal(register.writable & ~all, 0n, register.name);
      assert.equal(register.writable & register.writeOneToClear, 0n, `${register.name}: W1C bits are not plain-writable`);
      assert.equal(register.writeOnly & ~register.writable, 0n, `${register.name}: write-only bits must be writable`);
      assert.equal(findRegister(register.name), register);
    }
    const names: RegisterName[] = [
      'VER',
      'CAP',
      'ECAP',
      'GCMD',
      'GSTS',
      'RTADDR',
      'CCMD',
      'FSTS',
      'FECTL',
      'FEDATA',
      'FEADDR',
      'FEUADDR',
      'AFLOG',
      'PMEN',
      'PLMBASE',
      'PLMLIMIT',
      'PHMBASE',
      'PHMLIMIT',
      'IQH',
      'IQT',
      'IQA',
      'ICS',
      'IECTL',
      'IEDATA',
      'IEADDR',
      'IEUADDR',
      'IRTA',
      'PQH',
      'PQT',
      'PQA',
      'PRS',
      'PECTL',
      'PEDATA',
      'PEADDR',
      'PEUADDR',
      'MTRRCAP',
      'MTRRDEF',
      'VCCAP',
      'VCMD',
      'VCRSP',
      'IVA',
      'IOTLB',
      'FRCD0_LO',
      'FRCD0_HI',
    ];
    for (const name of names) assert.ok(findRegister(name), `${name} missing`);
    assert.equal(findRegister('IOTLB')!.offset, 0xf8);
    assert.equal(findRegister('FRCD0_LO')!.offset, 0x220);
  });

  it('parses register names from outside the program, and only names the table has', () => {
    for (const register of REGISTERS) assert.equal(parseRegisterName(register.name), register.name);
    for (const text of ['', 'gcmd', 'FRCD1_LO', 'FRCD0', 'MTRR_PHYSBASE10', 'toString', '__proto__']) {
      assert.equal(parseRegisterName(text), undefined, text);
    }
  });

  it('names fault-recording registers by index and half, and refuses an index the unit lacks', () => {
    assert.equal(faultRecordRegister(0, 'LO'), 'FRCD0_LO');
    assert.equal(findRegister(faultRecordRegister(0, 'HI')).offset, FAULT_RECORD_OFFSET + 8);
    for (const index of [FAULT_RECORD_COUNT, -1, 0.5]) {
      assert.throws(
        () => faultRecordRegister(index, 'LO'),
        (e: unknown) => e instanceof ViommuError && e.code === 'ERR_UNKNOWN_REGISTER',
        String(index),
      );
    }
  });
});
