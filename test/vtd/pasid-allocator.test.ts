/** PasidAllocator: the range, private data, quota sets, the quarantine rules, bad input, and a model-based property test. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { PASID_SPACE, PasidAllocator, PasidAllocatorError, RID_PASID, type PasidAllocation, type PasidSet } from '../../lib/vtd/pasid-allocator';

const DEVICE_A = 0x0010;
const DEVICE_B = 0x0018;

function pasidOf(result: PasidAllocation): number {
  assert.ok(result.ok, `allocation failed: ${result.ok ? '' : result.reason}`);
  return result.pasid;
}

function throwsCode(action: () => unknown, code: string): void {
  assert.throws(action, (error: unknown) => error instanceof PasidAllocatorError && error.code === code);
}

/** Takes a freed PASID with no bindings through invalidation and fence. */
function retire(allocator: PasidAllocator, pasid: number): void {
  allocator.invalidated(pasid);
  allocator.fenceCompleted();
}

describe('PasidAllocator', () => {
  describe('range', () => {
    it('hands out PASIDs from min up to max and never 0 (RID_PASID)', () => {
      const allocator = new PasidAllocator({ max: 4 });
      const set = allocator.createSet('vm', 10);
      const got = [pasidOf(set.allocate()), pasidOf(set.allocate()), pasidOf(set.allocate())];
      assert.deepEqual([...got].sort(), [1, 2, 3]);
      assert.ok(!got.includes(RID_PASID));
      assert.deepEqual(set.allocate(), { ok: false, reason: 'range-exhausted' });
    });

    it('honours a min above 1 and accepts the full 20-bit end', () => {
      const allocator = new PasidAllocator({ min: 100, max: PASID_SPACE });
      const set = allocator.createSet('vm', 2);
      assert.equal(pasidOf(set.allocate()), 100);
      assert.equal(pasidOf(set.allocate()), 101);
    });

    it('reaches the last PASID of a full 2^20 range and then answers range-exhausted', () => {
      const allocator = new PasidAllocator({ min: PASID_SPACE - 3, max: PASID_SPACE });
      const set = allocator.createSet('vm', 100);
      assert.deepEqual(
        [pasidOf(set.allocate()), pasidOf(set.allocate()), pasidOf(set.allocate())],
        [PASID_SPACE - 3, PASID_SPACE - 2, PASID_SPACE - 1],
      );
      assert.deepEqual(set.allocate(), { ok: false, reason: 'range-exhausted' });
    });

    it('refuses ranges that include 0, pass 2^20, are empty or are not integers', () => {
      for (const range of [
        { min: 0, max: 8 },
        { min: 1, max: PASID_SPACE + 1 },
        { min: 5, max: 5 },
        { min: 6, max: 5 },
        { min: 1.5, max: 8 },
        { max: Number.NaN },
      ]) {
        throwsCode(() => new PasidAllocator(range), 'ERR_PASID_RANGE');
      }
    });
  });

  describe('private data', () => {
    it('allocates PASIDs with no data (no process address space behind them)', () => {
      const allocator = new PasidAllocator<{ mm: string }>({ max: 8 });
      const pasid = pasidOf(allocator.createSet('vm', 1).allocate());
      assert.equal(allocator.data(pasid), undefined);
      assert.equal(allocator.state(pasid), 'held');
    });

    it('finds data by PASID, lets several PASIDs share one address space, and replaces it only while held', () => {
      const allocator = new PasidAllocator<{ mm: string }>({ max: 8 });
      const set = allocator.createSet('vm', 4);
      const space = { mm: 'guest process 1' };
      const first = pasidOf(set.allocate(space));
      const second = pasidOf(set.allocate(space));
      assert.notEqual(first, second);
      assert.equal(allocator.data(first), space);
      assert.equal(allocator.data(second), space);
      const other = { mm: 'guest process 2' };
      assert.equal(allocator.setData(second, other), true);
      assert.equal(allocator.data(second), other);
      assert.equal(allocator.data(first), space);
      assert.equal(allocator.setData(7, other), false, 'a PASID that is not held takes no data');
      assert.equal(allocator.data(7), undefined);
    });

    it('keeps data readable while quarantined and drops it on release', () => {
      const allocator = new PasidAllocator<string>({ max: 8 });
      const set = allocator.createSet('vm', 1);
      const pasid = pasidOf(set.allocate('tables at 0x1000'));
      set.free(pasid);
      assert.equal(allocator.data(pasid), 'tables at 0x1000');
      assert.equal(allocator.setData(pasid, 'other'), false);
      retire(allocator, pasid);
      assert.equal(allocator.data(pasid), undefined);
      const again = pasidOf(set.allocate());
      assert.equal(again, pasid, 'a released PASID is reused first');
      assert.equal(allocator.data(again), undefined, 'the old data does not come back');
    });
  });

  describe('sets and quotas', () => {
    it('answers quota-reached at the quota and range-exhausted when the range is empty', () => {
      const allocator = new PasidAllocator({ max: 4 });
      const small = allocator.createSet('small', 1);
      const large = allocator.createSet('large', 10);
      pasidOf(small.allocate());
      assert.deepEqual(small.allocate(), { ok: false, reason: 'quota-reached' });
      pasidOf(large.allocate());
      pasidOf(large.allocate());
      assert.deepEqual(large.allocate(), { ok: false, reason: 'range-exhausted' });
      assert.deepEqual(small.allocate(), { ok: false, reason: 'quota-reached' }, 'the quota is checked first');
    });

    it('a quota of 0 allows nothing', () => {
      const allocator = new PasidAllocator({ max: 4 });
      assert.deepEqual(allocator.createSet('none', 0).allocate(), { ok: false, reason: 'quota-reached' });
    });

    it('quarantined PASIDs no longer count against the quota of the set that freed them', () => {
      const allocator = new PasidAllocator({ max: 8 });
      const set = allocator.createSet('vm', 1);
      const first = pasidOf(set.allocate());
      assert.deepEqual(set.free(first), { ok: true });
      assert.equal(set.heldCount, 0);
      assert.equal(set.quarantinedCount, 1);
      const second = pasidOf(set.allocate());
      assert.notEqual(second, first);
    });

    it("refuses to free what the set does not hold: another set's, a free, a quarantined or an out-of-range PASID", () => {
      const allocator = new PasidAllocator({ max: 8 });
      const mine = allocator.createSet('mine', 4);
      const theirs = allocator.createSet('theirs', 4);
      const theirPasid = pasidOf(theirs.allocate());
      const freed = pasidOf(mine.allocate());
      mine.free(freed);
      for (const pasid of [theirPasid, 6, freed, RID_PASID, 8, PASID_SPACE - 1]) {
        assert.deepEqual(mine.free(pasid), { ok: false, reason: 'not-held' }, `PASID ${pasid}`);
      }
      assert.equal(allocator.state(theirPasid), 'held');
      assert.deepEqual(theirs.held(), [theirPasid]);
      assert.equal(allocator.state(freed), 'quarantined');
      assert.equal(allocator.heldCount, 1);
      assert.equal(allocator.quarantinedCount, 1);
    });

    it('lists the PASIDs a set holds', () => {
      const allocator = new PasidAllocator({ max: 16 });
      const set = allocator.createSet('vm', 8);
      const pasids = [0, 1, 2, 3, 4].map(() => pasidOf(set.allocate()));
      set.free(pasids[1]!);
      set.free(pasids[3]!);
      assert.deepEqual(
        set.held().sort((a, b) => a - b),
        [pasids[0], pasids[2], pasids[4]],
      );
      assert.ok(set.holds(pasids[0]!) && !set.holds(pasids[1]!));
      assert.equal(set.heldCount, 3);
    });

    it('closing a set quarantines all it holds and frees its name; a closed set cannot allocate', () => {
      const allocator = new PasidAllocator({ max: 16 });
      const set = allocator.createSet('vm', 8);
      const pasids = [pasidOf(set.allocate()), pasidOf(set.allocate())];
      throwsCode(() => allocator.createSet('vm', 8), 'ERR_PASID_SET_NAME');
      assert.equal(set.close(), 2);
      assert.equal(set.closed, true);
      for (const pasid of pasids) assert.equal(allocator.state(pasid), 'quarantined');
      throwsCode(() => set.allocate(), 'ERR_PASID_SET_CLOSED');
      assert.deepEqual(set.free(pasids[0]!), { ok: false, reason: 'not-held' });
      assert.equal(set.close(), 0);
      const next = allocator.createSet('vm', 8);
      assert.ok(!pasids.includes(pasidOf(next.allocate())), 'the old PASIDs are still quarantined');
    });

    it('refuses quotas that are not non-negative integers', () => {
      const allocator = new PasidAllocator({ max: 16 });
      for (const quota of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY])
        throwsCode(() => allocator.createSet(`q${quota}`, quota), 'ERR_PASID_QUOTA');
    });
  });

  describe('quarantine', () => {
    let allocator: PasidAllocator;
    let set: PasidSet<unknown>;
    let pasid: number;

    beforeEach(() => {
      allocator = new PasidAllocator({ max: 4 });
      set = allocator.createSet('vm', 3);
      pasid = pasidOf(set.allocate());
    });

    /** Takes every other PASID of the 3-PASID range, so the next allocation must say whether `pasid` came back. */
    function exhaustOthers(): void {
      pasidOf(set.allocate());
      pasidOf(set.allocate());
    }

    it('without devices: quarantined until an invalidation and then a fence', () => {
      set.free(pasid);
      exhaustOthers();
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation');
      assert.deepEqual(set.allocate(), { ok: false, reason: 'range-exhausted' });
      assert.equal(allocator.fenceCompleted(), 0, 'a fence alone releases nothing');
      allocator.invalidated(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-fence');
      assert.deepEqual(set.allocate(), { ok: false, reason: 'range-exhausted' }, 'not before the fence');
      assert.equal(allocator.fenceCompleted(), 1);
      assert.equal(allocator.state(pasid), 'free');
      assert.equal(allocator.quarantineStage(pasid), undefined);
      assert.equal(pasidOf(set.allocate()), pasid);
    });

    it('an invalidation of another PASID does not count', () => {
      set.free(pasid);
      allocator.invalidated(pasid + 1);
      allocator.fenceCompleted();
      assert.equal(allocator.state(pasid), 'quarantined');
    });

    it('a global invalidation covers every quarantined PASID', () => {
      const second = pasidOf(set.allocate());
      set.free(pasid);
      set.free(second);
      allocator.invalidated('all');
      assert.equal(allocator.quarantinedCount, 2);
      assert.equal(allocator.fenceCompleted(), 2);
      assert.equal(allocator.state(pasid), 'free');
      assert.equal(allocator.state(second), 'free');
      assert.equal(set.quarantinedCount, 0);
    });

    it('with devices: waits for every unbind, then for an invalidation after the last one, then a fence', () => {
      assert.equal(allocator.bind(pasid, DEVICE_A), true);
      assert.equal(allocator.bind(pasid, DEVICE_B), true);
      assert.equal(allocator.bind(pasid, DEVICE_B), true, 'binding twice is harmless');
      assert.deepEqual(allocator.boundDevices(pasid).sort(), [DEVICE_A, DEVICE_B]);
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'draining');
      allocator.invalidated(pasid);
      allocator.fenceCompleted();
      assert.equal(allocator.quarantineStage(pasid), 'draining', 'devices still bound');
      assert.equal(allocator.unbind(pasid, DEVICE_A), true);
      allocator.invalidated('all');
      allocator.fenceCompleted();
      assert.equal(allocator.quarantineStage(pasid), 'draining', 'one device still bound');
      assert.equal(allocator.unbind(pasid, DEVICE_B), true);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation', 'invalidations before the last unbind do not count');
      allocator.fenceCompleted();
      assert.equal(allocator.state(pasid), 'quarantined');
      retire(allocator, pasid);
      assert.equal(allocator.state(pasid), 'free');
      assert.deepEqual(allocator.boundDevices(pasid), []);
    });

    it('only an invalidation noted before the fence counts: the one after waits for the next fence', () => {
      const second = pasidOf(set.allocate());
      set.free(pasid);
      set.free(second);
      allocator.invalidated(pasid);
      assert.equal(allocator.fenceCompleted(), 1);
      allocator.invalidated(second);
      assert.equal(allocator.state(second), 'quarantined');
      assert.equal(allocator.fenceCompleted(), 1);
      assert.equal(allocator.state(second), 'free');
    });

    it("a set's own invalidations and fences release only what that set freed (units sharing one allocator)", () => {
      const allocator = new PasidAllocator({ max: 16 });
      const a = allocator.createSet('vm-a', 4);
      const b = allocator.createSet('vm-b', 4);
      const fromA = (a.allocate() as { pasid: number }).pasid;
      const fromB = (b.allocate() as { pasid: number }).pasid;
      a.free(fromA);
      b.free(fromB);
      b.invalidated(fromA);
      assert.equal(allocator.quarantineStage(fromA), 'awaiting-invalidation', "another VM's invalidation does not count");
      a.invalidated(fromA);
      b.invalidated('all');
      assert.equal(a.fenceCompleted(), 1);
      assert.equal(allocator.state(fromA), 'free');
      assert.equal(allocator.quarantineStage(fromB), 'awaiting-fence', "vm-a's wait does not release vm-b's PASID");
      assert.equal(b.fenceCompleted(), 1);
      assert.equal(allocator.state(fromB), 'free');
      assert.deepEqual([a.quarantinedCount, b.quarantinedCount, allocator.quarantinedCount], [0, 0, 0]);
    });

    it('binds only held PASIDs and unbinds only bound devices, answering false otherwise', () => {
      assert.equal(allocator.bind(3, DEVICE_A), false, 'free');
      assert.equal(allocator.bind(RID_PASID, DEVICE_A), false, 'RID_PASID is never held');
      assert.equal(allocator.unbind(pasid, DEVICE_A), false, 'held but not bound');
      assert.equal(allocator.bind(pasid, DEVICE_A), true);
      set.free(pasid);
      assert.equal(allocator.bind(pasid, DEVICE_B), false, 'quarantined');
      assert.equal(allocator.unbind(pasid, DEVICE_B), false);
      assert.deepEqual(allocator.boundDevices(pasid), [DEVICE_A]);
    });

    it('unbinding while held leaves a plain quarantine on free', () => {
      allocator.bind(pasid, DEVICE_A);
      allocator.unbind(pasid, DEVICE_A);
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation');
    });
  });

  describe('invalidations before the free (the Linux order: clear the entry, invalidate, wait, free)', () => {
    let allocator: PasidAllocator<string>;
    let set: PasidSet<string>;
    let pasid: number;

    beforeEach(() => {
      allocator = new PasidAllocator<string>({ max: 4 });
      set = allocator.createSet('vm', 3);
      pasid = pasidOf(set.allocate('tables at 0x2000'));
    });

    it('an invalidation and a fence, then the free: released by the free itself, data dropped', () => {
      set.invalidated(pasid);
      assert.equal(set.fenceCompleted(), 0, 'a held PASID is not released by a fence');
      assert.equal(allocator.state(pasid), 'held');
      assert.deepEqual(set.free(pasid), { ok: true });
      assert.equal(allocator.state(pasid), 'free');
      assert.equal(allocator.quarantineStage(pasid), undefined);
      assert.equal(allocator.data(pasid), undefined);
      assert.deepEqual([set.heldCount, set.quarantinedCount, allocator.heldCount, allocator.quarantinedCount], [0, 0, 0, 0]);
      assert.equal(set.fenceCompleted(), 0, 'nothing was left for a fence to release');
      assert.equal(pasidOf(set.allocate()), pasid, 'handed out again first');
    });

    it('an invalidation without a fence after it, then the free: waits only for the fence', () => {
      set.fenceCompleted();
      allocator.invalidated(pasid);
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-fence');
      assert.equal(allocator.data(pasid), 'tables at 0x2000', 'kept until the release');
      assert.equal(set.fenceCompleted(), 1);
      assert.equal(allocator.state(pasid), 'free');
      assert.equal(allocator.data(pasid), undefined);
    });

    it("the owner's global invalidation before the free counts like one of the PASID", () => {
      set.invalidated('all');
      set.fenceCompleted();
      const second = pasidOf(set.allocate());
      set.free(pasid);
      assert.equal(allocator.state(pasid), 'free');
      set.free(second);
      assert.equal(allocator.quarantineStage(second), 'awaiting-invalidation', 'allocated after that invalidation');
      assert.equal(pasidOf(set.allocate()), pasid);
      set.invalidated('all');
      assert.equal(allocator.quarantineStage(second), 'awaiting-fence');
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-fence', 'allocated again before the global one');
      assert.equal(set.fenceCompleted(), 2);
      assert.deepEqual([allocator.state(pasid), allocator.state(second)], ['free', 'free']);
    });

    it('a later invalidation with no fence after it does not undo an earlier invalidation and fence', () => {
      set.invalidated(pasid);
      set.fenceCompleted();
      set.invalidated(pasid);
      set.free(pasid);
      assert.equal(allocator.state(pasid), 'free', 'of the PASID');
      const second = pasidOf(set.allocate());
      set.invalidated('all');
      set.fenceCompleted();
      set.invalidated('all');
      set.free(second);
      assert.equal(allocator.state(second), 'free', 'global');
    });

    it('a device bound after the invalidation holds the PASID back, and its unbind starts over', () => {
      set.invalidated(pasid);
      set.fenceCompleted();
      allocator.bind(pasid, DEVICE_A);
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'draining');
      allocator.unbind(pasid, DEVICE_A);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation');
      set.fenceCompleted();
      assert.equal(allocator.state(pasid), 'quarantined');
      set.invalidated(pasid);
      assert.equal(set.fenceCompleted(), 1);
      assert.equal(allocator.state(pasid), 'free');
    });

    it('invalidations while a device is bound do not count, even with a fence before its unbind', () => {
      allocator.bind(pasid, DEVICE_A);
      set.invalidated(pasid);
      set.invalidated('all');
      set.fenceCompleted();
      allocator.unbind(pasid, DEVICE_A);
      set.fenceCompleted();
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation', 'the invalidations came while the device was bound');
    });

    it('an unbind after the invalidation and fence makes them not count', () => {
      allocator.bind(pasid, DEVICE_A);
      allocator.unbind(pasid, DEVICE_A);
      set.invalidated(pasid);
      allocator.bind(pasid, DEVICE_B);
      set.fenceCompleted();
      allocator.unbind(pasid, DEVICE_B);
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation');
    });

    it("another VM's invalidations never count, and its fence completes none of ours", () => {
      const other = allocator.createSet('other-vm', 3);
      other.invalidated(pasid);
      other.invalidated('all');
      other.fenceCompleted();
      set.fenceCompleted();
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation');
      const second = pasidOf(set.allocate());
      set.invalidated(second);
      other.fenceCompleted();
      set.free(second);
      assert.equal(allocator.quarantineStage(second), 'awaiting-fence', "vm's invalidation counts, other-vm's fence does not");
    });

    it("an invalidation from the PASID's previous life does not count", () => {
      set.invalidated(pasid);
      set.fenceCompleted();
      set.free(pasid);
      assert.equal(pasidOf(set.allocate()), pasid);
      set.free(pasid);
      assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation');
    });
  });

  describe('bad input', () => {
    it('answers architecturally for every 20-bit value outside the range, and changes nothing', () => {
      const allocator = new PasidAllocator({ min: 16, max: 32 });
      const set = allocator.createSet('vm', 4);
      const held = pasidOf(set.allocate());
      for (const pasid of [RID_PASID, 15, 32, PASID_SPACE - 1]) {
        assert.deepEqual(set.free(pasid), { ok: false, reason: 'not-held' });
        assert.equal(allocator.state(pasid), 'free');
        assert.equal(allocator.bind(pasid, DEVICE_A), false);
        assert.equal(allocator.unbind(pasid, DEVICE_A), false);
        allocator.invalidated(pasid);
      }
      assert.equal(allocator.state(held), 'held');
      assert.equal(allocator.heldCount, 1);
    });

    it('throws a typed error, before any change, for values no 20-bit field can hold', () => {
      const allocator = new PasidAllocator({ max: 32 });
      const set = allocator.createSet('vm', 4);
      const held = pasidOf(set.allocate());
      allocator.bind(held, DEVICE_A);
      for (const bad of [-1, 1.5, PASID_SPACE, Number.NaN, Number.POSITIVE_INFINITY, '1' as unknown as number]) {
        throwsCode(() => set.free(bad), 'ERR_PASID_VALUE');
        throwsCode(() => allocator.bind(bad, DEVICE_A), 'ERR_PASID_VALUE');
        throwsCode(() => allocator.unbind(bad, DEVICE_A), 'ERR_PASID_VALUE');
        throwsCode(() => allocator.invalidated(bad), 'ERR_PASID_VALUE');
        throwsCode(() => allocator.state(bad), 'ERR_PASID_VALUE');
        throwsCode(() => allocator.data(bad), 'ERR_PASID_VALUE');
      }
      for (const device of [-1, 0x10000, 2.5]) {
        throwsCode(() => allocator.bind(held, device), 'ERR_PASID_DEVICE');
        throwsCode(() => allocator.unbind(held, device), 'ERR_PASID_DEVICE');
      }
      assert.equal(allocator.state(held), 'held');
      assert.deepEqual(allocator.boundDevices(held), [DEVICE_A]);
      assert.deepEqual(set.held(), [held]);
    });
  });

  describe('against a model (fast-check commands)', () => {
    /**
     * Since the PASID last became quiet (allocated, or its last device unbound): nothing yet; an owner invalidation
     * while no device was bound; or such an invalidation and then an owner fence.
     */
    type Cleanliness = 'dirty' | 'invalidated' | 'fenced';
    interface ModelPasid {
      owner: number;
      status: 'held' | 'quarantined';
      devices: Set<number>;
      clean: Cleanliness;
      data: string | undefined;
    }
    interface ModelSet {
      quota: number;
      closed: boolean;
    }
    interface Model {
      min: number;
      max: number;
      pasids: Map<number, ModelPasid>;
      sets: ModelSet[];
      nextData: number;
    }
    interface Real {
      allocator: PasidAllocator<string>;
      sets: PasidSet<string>[];
    }
    type Cmd = fc.Command<Model, Real>;

    const stageOf = (entry: ModelPasid | undefined): string | undefined =>
      entry?.status !== 'quarantined'
        ? undefined
        : entry.devices.size !== 0
          ? 'draining'
          : entry.clean === 'invalidated'
            ? 'awaiting-fence'
            : 'awaiting-invalidation';

    /** A free (or a close) of a PASID its set holds: released at once when clean, else quarantined. */
    function freeInModel(model: Model, pasid: number): void {
      const entry = model.pasids.get(pasid)!;
      if (entry.devices.size === 0 && entry.clean === 'fenced') model.pasids.delete(pasid);
      else {
        entry.status = 'quarantined';
        // Nothing counts while draining: the last unbind starts it over.
        if (entry.devices.size !== 0) entry.clean = 'dirty';
      }
    }

    /** An invalidation by `set`'s queue (undefined: through the allocator, any set's) covering `target`. */
    function invalidateInModel(model: Model, target: number | 'all', set: number | undefined): void {
      for (const [pasid, entry] of model.pasids) {
        if (
          (target === 'all' || target === pasid) &&
          (set === undefined || set === entry.owner) &&
          entry.devices.size === 0 &&
          entry.clean === 'dirty'
        )
          entry.clean = 'invalidated';
      }
    }

    /** A fence of `set` (undefined: every set's): returns how many quarantined PASIDs it released. */
    function fenceInModel(model: Model, set: number | undefined): number {
      let released = 0;
      for (const [pasid, entry] of [...model.pasids]) {
        if ((set !== undefined && set !== entry.owner) || entry.clean !== 'invalidated') continue;
        if (entry.status === 'held') entry.clean = 'fenced';
        else {
          model.pasids.delete(pasid);
          released++;
        }
      }
      return released;
    }

    const heldBy = (model: Model, set: number): number[] =>
      [...model.pasids]
        .filter(([, p]) => p.status === 'held' && p.owner === set)
        .map(([pasid]) => pasid)
        .sort((a, b) => a - b);

    /** Every observable of the allocator agrees with the model, for every PASID up to just past the range. */
    function agree(model: Model, real: Real): void {
      const { allocator } = real;
      let held = 0;
      let quarantined = 0;
      for (let pasid = 0; pasid < model.max + 3; pasid++) {
        const entry = model.pasids.get(pasid);
        assert.equal(allocator.state(pasid), entry?.status ?? 'free', `state of ${pasid}`);
        assert.equal(allocator.quarantineStage(pasid), stageOf(entry), `quarantine stage of ${pasid}`);
        assert.equal(allocator.data(pasid), entry?.data, `data of ${pasid}`);
        assert.deepEqual(allocator.boundDevices(pasid).sort(), [...(entry?.devices ?? [])].sort(), `devices of ${pasid}`);
        if (entry?.status === 'held') held++;
        if (entry?.status === 'quarantined') quarantined++;
      }
      assert.equal(allocator.heldCount, held);
      assert.equal(allocator.quarantinedCount, quarantined);
      model.sets.forEach((modelSet, index) => {
        const set = real.sets[index]!;
        const expected = heldBy(model, index);
        assert.deepEqual(
          set.held().sort((a, b) => a - b),
          expected,
        );
        assert.ok(set.heldCount <= modelSet.quota, 'quota exceeded');
        assert.equal(set.quarantinedCount, [...model.pasids.values()].filter((p) => p.status === 'quarantined' && p.owner === index).length);
        assert.equal(set.closed, modelSet.closed);
      });
    }

    class Allocate implements Cmd {
      constructor(
        readonly set: number,
        readonly withData: boolean,
      ) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const set = this.set % model.sets.length;
        const modelSet = model.sets[set]!;
        const data = this.withData ? `data ${model.nextData++}` : undefined;
        if (modelSet.closed) {
          throwsCode(() => real.sets[set]!.allocate(data), 'ERR_PASID_SET_CLOSED');
          return agree(model, real);
        }
        const result = real.sets[set]!.allocate(data);
        const rangeHasFree = Array.from({ length: model.max - model.min }, (_, i) => model.min + i).some((p) => !model.pasids.has(p));
        if (heldBy(model, set).length >= modelSet.quota) assert.deepEqual(result, { ok: false, reason: 'quota-reached' });
        else if (!rangeHasFree) assert.deepEqual(result, { ok: false, reason: 'range-exhausted' });
        else {
          assert.ok(result.ok, `expected a PASID, got ${result.ok ? '' : result.reason}`);
          assert.ok(
            Number.isInteger(result.pasid) && result.pasid >= model.min && result.pasid < model.max,
            `PASID ${result.pasid} outside the range`,
          );
          assert.equal(
            model.pasids.get(result.pasid)?.status,
            undefined,
            `PASID ${result.pasid} handed out while ${model.pasids.get(result.pasid)?.status}`,
          );
          model.pasids.set(result.pasid, { owner: set, status: 'held', devices: new Set(), clean: 'dirty', data });
        }
        agree(model, real);
      }
      toString(): string {
        return `allocate(set ${this.set}${this.withData ? ', data' : ''})`;
      }
    }

    class Free implements Cmd {
      constructor(
        readonly set: number,
        readonly pasid: number,
      ) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const set = this.set % model.sets.length;
        const entry = model.pasids.get(this.pasid);
        const result = real.sets[set]!.free(this.pasid);
        if (entry?.status === 'held' && entry.owner === set) {
          assert.deepEqual(result, { ok: true });
          freeInModel(model, this.pasid);
        } else assert.deepEqual(result, { ok: false, reason: 'not-held' });
        agree(model, real);
      }
      toString(): string {
        return `free(set ${this.set}, ${this.pasid})`;
      }
    }

    class Bind implements Cmd {
      constructor(
        readonly pasid: number,
        readonly device: number,
      ) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const entry = model.pasids.get(this.pasid);
        const expected = entry?.status === 'held';
        assert.equal(real.allocator.bind(this.pasid, this.device), expected);
        if (expected) entry!.devices.add(this.device);
        agree(model, real);
      }
      toString(): string {
        return `bind(${this.pasid}, ${this.device})`;
      }
    }

    class Unbind implements Cmd {
      constructor(
        readonly pasid: number,
        readonly device: number,
      ) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const entry = model.pasids.get(this.pasid);
        const expected = entry?.devices.has(this.device) ?? false;
        assert.equal(real.allocator.unbind(this.pasid, this.device), expected);
        if (expected) {
          entry!.devices.delete(this.device);
          if (entry!.devices.size === 0) entry!.clean = 'dirty';
        }
        agree(model, real);
      }
      toString(): string {
        return `unbind(${this.pasid}, ${this.device})`;
      }
    }

    class Invalidate implements Cmd {
      constructor(readonly pasid: number | 'all') {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        real.allocator.invalidated(this.pasid);
        invalidateInModel(model, this.pasid, undefined);
        agree(model, real);
      }
      toString(): string {
        return `invalidated(${this.pasid})`;
      }
    }

    /** One VM's queue invalidates: it counts only for that set's PASIDs. */
    class SetInvalidate implements Cmd {
      constructor(
        readonly set: number,
        readonly pasid: number | 'all',
      ) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const set = this.set % model.sets.length;
        real.sets[set]!.invalidated(this.pasid);
        invalidateInModel(model, this.pasid, set);
        agree(model, real);
      }
      toString(): string {
        return `set ${this.set}.invalidated(${this.pasid})`;
      }
    }

    class Fence implements Cmd {
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const released = fenceInModel(model, undefined);
        assert.equal(real.allocator.fenceCompleted(), released);
        agree(model, real);
      }
      toString(): string {
        return 'fenceCompleted()';
      }
    }

    /** One VM's wait descriptor completes: it completes only that set's invalidations. */
    class SetFence implements Cmd {
      constructor(readonly set: number) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const set = this.set % model.sets.length;
        const released = fenceInModel(model, set);
        assert.equal(real.sets[set]!.fenceCompleted(), released);
        agree(model, real);
      }
      toString(): string {
        return `set ${this.set}.fenceCompleted()`;
      }
    }

    class Close implements Cmd {
      constructor(readonly set: number) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const set = this.set % model.sets.length;
        const held = model.sets[set]!.closed ? [] : heldBy(model, set);
        assert.equal(real.sets[set]!.close(), held.length);
        for (const pasid of held) freeInModel(model, pasid);
        model.sets[set]!.closed = true;
        agree(model, real);
      }
      toString(): string {
        return `close(set ${this.set})`;
      }
    }

    /** A value no 20-bit field can hold, through one of the entry points: a typed error and no change. */
    class BadInput implements Cmd {
      constructor(
        readonly operation: number,
        readonly value: number,
      ) {}
      check(): boolean {
        return true;
      }
      run(model: Model, real: Real): void {
        const { allocator } = real;
        const operations: Array<() => unknown> = [
          () => real.sets[0]!.free(this.value),
          () => allocator.bind(this.value, DEVICE_A),
          () => allocator.unbind(this.value, DEVICE_A),
          () => allocator.invalidated(this.value),
          () => real.sets[0]!.invalidated(this.value),
          () => allocator.setData(this.value, 'x'),
        ];
        throwsCode(operations[this.operation % operations.length]!, 'ERR_PASID_VALUE');
        agree(model, real);
      }
      toString(): string {
        return `bad(${this.operation}, ${this.value})`;
      }
    }

    const pasid = fc.integer({ min: 0, max: 12 });
    const device = fc.integer({ min: 0, max: 2 });
    const badValue = fc.oneof(fc.integer({ min: -1000, max: -1 }), fc.integer({ min: PASID_SPACE, max: 2 ** 31 }), fc.double({ noInteger: true }));
    const commands = fc.commands<Model, Real>(
      [
        fc.tuple(fc.nat(3), fc.boolean()).map(([set, withData]) => new Allocate(set, withData)),
        fc.tuple(fc.nat(3), pasid).map(([set, p]) => new Free(set, p)),
        fc.tuple(pasid, device).map(([p, d]) => new Bind(p, d)),
        fc.tuple(pasid, device).map(([p, d]) => new Unbind(p, d)),
        fc.oneof(pasid, fc.constant('all' as const)).map((p) => new Invalidate(p)),
        fc.tuple(fc.nat(3), fc.oneof(pasid, fc.constant('all' as const))).map(([set, p]) => new SetInvalidate(set, p)),
        fc.constant(new Fence()),
        fc.nat(3).map((set) => new SetFence(set)),
        fc.nat(3).map((set) => new Close(set)),
        fc.tuple(fc.nat(5), badValue).map(([operation, value]) => new BadInput(operation, value)),
      ],
      { size: '+1' },
    );

    it('never holds a PASID twice, never reuses one in quarantine, keeps quotas and the range, and refuses what is not held', () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 1, max: 3 }),
          fc.integer({ min: 1, max: 8 }),
          fc.array(fc.integer({ min: 0, max: 9 }), { minLength: 1, maxLength: 3 }),
          commands,
          (min, size, quotas, cmds) => {
            const allocator = new PasidAllocator<string>({ min, max: min + size });
            const setup = () => ({
              model: { min, max: min + size, pasids: new Map(), sets: quotas.map((quota) => ({ quota, closed: false })), nextData: 0 },
              real: { allocator, sets: quotas.map((quota, i) => allocator.createSet(`vm${i}`, quota)) },
            });
            fc.modelRun(setup, cmds);
          },
        ),
        { numRuns: 300 },
      );
    });
  });
});
