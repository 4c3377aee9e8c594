/**
 * The virtual command interface as a guest driver uses it: ECAP.VCS and VCCAP.PAS announce it, a 64-bit VCMD write
 * runs a command, VCRSP answers (IP clear, status, the PASID), and freed PASIDs come back only after the guest has
 * invalidated them and a wait descriptor has completed.
 */
import { strict as assert } from 'node:assert';
import { encodeBig, getFieldBig } from '../../lib/vtd/bitfield';
import { PasidAllocator } from '../../lib/vtd/pasid-allocator';
import { ECAP_FIELDS, VCCAP_FIELDS, VCMD_FIELDS, VCRSP_FIELDS, findRegister } from '../../lib/vtd/registers';
import { OFFSET } from '../../lib/vtd/register-bits';
import { VIRTUAL_COMMAND, VIRTUAL_COMMAND_STATUS } from '../../lib/vtd/virtual-command';
import { VtdUnit } from '../../lib/vtd/unit';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { ScalableGuest, pasidDescriptor as P } from './scalable-guest';
import { SID } from './unit-guest';

const VCMD_UNIT = 'x-scalable-mode=on,x-pasid-mode=on,x-vcmd=on';
const VCRSP = findRegister('VCRSP')!.offset;
const VCCAP = findRegister('VCCAP')!.offset;

interface Response {
  inProgress: boolean;
  status: number;
  result: number;
}

function command(guest: ScalableGuest, cmd: number, operand = 0n): Response {
  guest.unit.write(OFFSET.VCMD, 8, encodeBig(VCMD_FIELDS, { CMD: cmd, OPERAND: operand }));
  const response = guest.unit.read(VCRSP, 8);
  return {
    inProgress: getFieldBig(response, VCRSP_FIELDS.f.IP) === 1n,
    status: Number(getFieldBig(response, VCRSP_FIELDS.f.SC)),
    result: Number(getFieldBig(response, VCRSP_FIELDS.f.RESULT)),
  };
}

function ramOf(bytes: number): GuestMemory {
  const memory = new GuestMemory();
  memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(bytes) });
  return memory;
}

const allocate = (guest: ScalableGuest): Response => command(guest, VIRTUAL_COMMAND.ALLOCATE_PASID);
const free = (guest: ScalableGuest, pasid: number | bigint): Response => command(guest, VIRTUAL_COMMAND.FREE_PASID, BigInt(pasid));

function queueGuest(config = VCMD_UNIT): ScalableGuest {
  const guest = new ScalableGuest(config);
  guest.enableScalable();
  guest.setupWideQueue();
  return guest;
}

describe('vtd unit: virtual command interface (x-vcmd)', () => {
  it('is announced by ECAP.VCS and VCCAP.PAS, with PSS from x-pasid-bits; absent without x-vcmd', () => {
    const guest = new ScalableGuest(`${VCMD_UNIT},x-pasid-bits=8`);
    const ecap = guest.unit.read(OFFSET.ECAP, 8);
    assert.equal(getFieldBig(ecap, ECAP_FIELDS.f.VCS), 1n);
    assert.equal(getFieldBig(ecap, ECAP_FIELDS.f.PSS), 7n);
    assert.equal(getFieldBig(guest.unit.read(VCCAP, 8), VCCAP_FIELDS.f.PAS), 1n);
    const plain = new ScalableGuest('x-scalable-mode=on,x-pasid-mode=on');
    assert.equal(getFieldBig(plain.unit.read(OFFSET.ECAP, 8), ECAP_FIELDS.f.VCS), 0n);
    assert.equal(plain.unit.read(VCCAP, 8), 0n, 'an absent register reads 0');
    plain.unit.write(OFFSET.VCMD, 8, 1n);
    assert.equal(plain.unit.read(VCRSP, 8), 0n, 'and a write to VCMD does nothing');
    assert.equal(plain.unit.virtualCommands, undefined);
  });

  it('refuses x-vcmd without PASID support, and PASID widths outside 1..20', () => {
    assert.throws(() => new ScalableGuest('x-scalable-mode=on,x-vcmd=on'), /vcmd-needs-pasid/);
    assert.throws(() => new ScalableGuest('x-scalable-mode=on,x-pasid-mode=on,x-pasid-bits=21'), /pasid-bits-1-to-20/);
    assert.throws(() => new ScalableGuest('x-scalable-mode=on,x-pasid-bits=8'), /pasid-bits-1-to-20/);
  });

  it('allocates distinct PASIDs from 1, never 0, each answered at once (IP clear, status 0)', () => {
    const guest = queueGuest();
    const seen = new Set<number>();
    for (let i = 0; i < 100; i++) {
      const response = allocate(guest);
      assert.deepEqual({ inProgress: response.inProgress, status: response.status }, { inProgress: false, status: VIRTUAL_COMMAND_STATUS.SUCCESS });
      assert.ok(response.result >= 1 && !seen.has(response.result));
      seen.add(response.result);
    }
  });

  it("answers status 16 when no PASID is left in the unit's width, and to a free of a PASID the guest does not hold", () => {
    const guest = queueGuest(`${VCMD_UNIT},x-pasid-bits=2`);
    const pasids = [allocate(guest), allocate(guest), allocate(guest)].map((r) => r.result);
    assert.deepEqual(pasids.sort(), [1, 2, 3]);
    assert.equal(allocate(guest).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'PASIDs 1..3 are all of 2 bits');
    assert.equal(free(guest, 0).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'RID_PASID is never held');
    assert.equal(free(guest, 4).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'beyond the width');
    assert.equal(free(guest, 0xffff_ffff_ffffn).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'the whole 48-bit operand');
    assert.equal(free(guest, 2).status, VIRTUAL_COMMAND_STATUS.SUCCESS);
    assert.equal(free(guest, 2).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'freed twice');
  });

  it('answers an unsupported command with status 1 and changes nothing', () => {
    const guest = queueGuest();
    for (const cmd of [0, 3, 0xff]) assert.equal(command(guest, cmd).status, VIRTUAL_COMMAND_STATUS.UNSUPPORTED, `command ${cmd}`);
    assert.equal(guest.unit.virtualCommands!.allocator.heldCount, 0);
  });

  it('acts on a 64-bit write or a write of the upper dword, as the other 64-bit command registers', () => {
    const guest = queueGuest();
    guest.unit.write(OFFSET.VCMD, 4, BigInt(VIRTUAL_COMMAND.ALLOCATE_PASID));
    assert.equal(guest.unit.read(VCRSP, 8), 0n, 'the lower dword alone does not run it');
    guest.unit.write(OFFSET.VCMD + 4, 4, 0n);
    assert.equal(Number(getFieldBig(guest.unit.read(VCRSP, 8), VCRSP_FIELDS.f.RESULT)), 1);
  });

  it('keeps a freed PASID out of reach until the guest invalidates it and a wait descriptor completes', () => {
    const guest = queueGuest(`${VCMD_UNIT},x-pasid-bits=2`);
    const pasids = [allocate(guest).result, allocate(guest).result, allocate(guest).result];
    const [victim, other] = pasids;
    assert.equal(free(guest, victim!).status, VIRTUAL_COMMAND_STATUS.SUCCESS);
    assert.equal(allocate(guest).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'quarantined: not handed out again');
    guest.invalidate(P.cachePasid(1, other!));
    assert.equal(allocate(guest).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'an invalidation of another PASID releases nothing');
    guest.invalidate(P.cachePasid(1, victim!));
    const again = allocate(guest);
    assert.equal(again.status, VIRTUAL_COMMAND_STATUS.SUCCESS, 'its PASID-cache invalidation and the wait after it release it');
    assert.equal(again.result, victim);
  });

  it('hands a PASID out again right after its free when the guest tore it down first (the Linux order), and still waits in the old order', () => {
    const guest = queueGuest(`${VCMD_UNIT},x-pasid-bits=2`);
    const [linux, late, other] = [allocate(guest).result, allocate(guest).result, allocate(guest).result] as [number, number, number];
    guest.scalableContext(SID);
    guest.firstStage(SID, linux, 5);
    guest.invalidate(P.cachePasid(5, linux));
    // Caching mode is off, so making an entry present needs no invalidation: nothing has covered `late` before its free.
    guest.firstStage(SID, late, 6);
    // Linux: clear the entry, PASID-cache and PASID-based IOTLB invalidation of the PASID, a wait, then the VCMD free.
    guest.pasidEntry(SID, linux, { P: 0 });
    guest.invalidate(P.cachePasid(5, linux), P.iotlbPasid(5, linux));
    assert.equal(free(guest, linux).status, VIRTUAL_COMMAND_STATUS.SUCCESS);
    assert.equal(guest.unit.virtualCommands!.allocator.state(linux), 'free', 'its caches were clean, and known clean, when it was freed');
    const again = allocate(guest);
    assert.deepEqual([again.status, again.result], [VIRTUAL_COMMAND_STATUS.SUCCESS, linux], 'allocatable at once');
    // The other order: freed first, so only an invalidation after the free (and a wait) may release it.
    assert.equal(free(guest, late).status, VIRTUAL_COMMAND_STATUS.SUCCESS);
    assert.equal(allocate(guest).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'quarantined until invalidated');
    guest.invalidate(P.cachePasid(1, other));
    assert.equal(allocate(guest).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'an invalidation of another PASID releases nothing');
    guest.pasidEntry(SID, late, { P: 0 });
    guest.invalidate(P.cachePasid(6, late), P.iotlbPasid(6, late));
    assert.equal(allocate(guest).result, late, 'released by its invalidation and the wait after it');
  });

  it('counts PASID-based IOTLB and global PASID-cache invalidations too; a device still bound holds the PASID back', () => {
    const guest = queueGuest(`${VCMD_UNIT},x-pasid-bits=1`);
    const only = allocate(guest).result;
    assert.equal(only, 1);
    const allocator = guest.unit.virtualCommands!.allocator;
    assert.ok(allocator.bind(only, 0x20));
    free(guest, only);
    guest.invalidate(P.iotlbPasid(4, only));
    assert.equal(allocate(guest).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'bound: draining');
    allocator.unbind(only, 0x20);
    guest.invalidate(P.cacheGlobal());
    assert.equal(allocate(guest).result, only, 'unbound, invalidated after, fenced');
  });

  it("refuses, at construction, a shared allocator whose PASIDs would not fit the unit's width", () => {
    const allocator = new PasidAllocator<unknown>({ min: 1, max: 1 << 20 });
    const make = (config: string) =>
      new VtdUnit({ memory: ramOf(1 << 20), config, onInterrupt: () => {}, pasids: { allocator, set: allocator.createSet(config, 2) } });
    assert.throws(() => make(`${VCMD_UNIT},x-pasid-bits=8`), /ERR_PASID_RANGE|beyond this unit's 8-bit PASIDs/);
    assert.doesNotThrow(() => make(VCMD_UNIT));
  });

  it('shares a host-wide allocator between units, each within its quota', () => {
    const allocator = new PasidAllocator<unknown>({ min: 1, max: 1 << 20 });
    const units = ['vm-a', 'vm-b'].map(
      (name) =>
        new VtdUnit({
          memory: ramOf(1 << 20),
          config: VCMD_UNIT,
          onInterrupt: () => {},
          pasids: { allocator, set: allocator.createSet(name, 2) },
        }),
    );
    const results = units.flatMap((unit) =>
      [1, 2, 3].map(() => {
        unit.write(OFFSET.VCMD, 8, BigInt(VIRTUAL_COMMAND.ALLOCATE_PASID));
        const response = unit.read(VCRSP, 8);
        return { status: Number(getFieldBig(response, VCRSP_FIELDS.f.SC)), pasid: Number(getFieldBig(response, VCRSP_FIELDS.f.RESULT)) };
      }),
    );
    assert.deepEqual(
      results.map((r) => r.status),
      [0, 0, 16, 0, 0, 16],
      'the third allocation of each VM is over its quota',
    );
    const granted = results.filter((r) => r.status === 0).map((r) => r.pasid);
    assert.equal(new Set(granted).size, 4, 'no PASID is given to both VMs');
  });

  it("releases the guest's PASIDs on reset, through the quarantine", () => {
    const guest = queueGuest(`${VCMD_UNIT},x-pasid-bits=1`);
    assert.equal(allocate(guest).result, 1);
    guest.unit.reset();
    guest.enableScalable();
    guest.setupWideQueue();
    assert.equal(allocate(guest).status, VIRTUAL_COMMAND_STATUS.PASID_ERROR, 'not before a wait completes');
    guest.invalidate();
    assert.equal(allocate(guest).result, 1);
  });
});
