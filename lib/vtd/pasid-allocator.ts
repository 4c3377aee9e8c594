/** PasidAllocator: PASIDs from [min, max) handed to per-VM quota sets, reused only once no device is bound and their caches are known clean. */

import { ViommuError } from '../errors';
import { PASID_CACHE_INVALIDATE } from './structures';

/*
 * Why a quarantine: after a guest frees a PASID, hardware may still hold it in its PASID cache, IOTLB or device
 * TLBs, and devices may still be bound to it (their requests still carry it). Handing the number to another VM
 * before those are gone would let one VM's stale translations or in-flight requests land in another's address
 * space. So a PASID is reused only once (a) no device is bound to it, (b) its owner's queue has processed an
 * invalidation covering it (per PASID or global) after it became quiet, and (c) a wait descriptor of that queue has
 * completed after that invalidation.
 *
 * Quiet means held with no device bound: from its allocation, or from its last unbind. Nothing fills a cache for a
 * quiet PASID except the guest's own use of it, so an invalidation after it became quiet empties everything its
 * last use left, and a completed wait after that invalidation says the emptying is done. That is why the
 * invalidation may come before the free: Linux clears the PASID entry, invalidates the PASID cache and IOTLB for it,
 * waits, and only then frees it; such a PASID is released by the free itself. An invalidation seen while a device
 * was bound does not count (the device could refill the caches after it; the unbind makes the PASID quiet again,
 * later), and only the owner's queue counts: another VM's invalidation says nothing about this VM's caches. So at
 * free, with no device bound, a PASID is released at once if such an invalidation and a wait after it are both
 * seen; goes to 'awaiting-fence' if only the invalidation is; else to 'awaiting-invalidation'. With a device still
 * bound it goes to 'draining', and its last unbind moves it to 'awaiting-invalidation'.
 *
 * Which mistakes are whose:
 *  - A PASID value is guest-controlled (the VCMD operand and descriptor PASID fields are 20 bits wide), so any
 *    integer in [0, 2^20) is accepted everywhere and answered architecturally: "not held", false, 'free', or
 *    ignored, including 0 (RID_PASID) and values outside [min, max).
 *  - Anything else (a fraction, a negative number, NaN, 2^20 or more, a requester id outside 16 bits, a bad range
 *    or quota, a duplicate set name, allocating from a closed set) cannot come from a guest field: it is the
 *    caller's mistake and throws PasidAllocatorError before any state changes.
 *
 * Cost: every operation is O(1) amortised. Released PASIDs go on a stack, never-used ones come from a cursor; a
 * PASID waiting for an invalidation sits in a list it can leave in O(1) (swap with the last), and one waiting for a
 * fence sits in a pending list that the fence empties, so a fence touches only what it releases. "Came after" is
 * decided by stamps from one event clock: per PASID when it became quiet and its first owner invalidation since;
 * per set its last global invalidation and its last fence. A fence or a global invalidation writes its set's stamp
 * and visits no held PASID. Per-PASID state lives in typed arrays indexed by PASID that grow with the cursor, so a
 * large unused range costs nothing.
 */

/** The PASID a request without PASID uses in scalable mode; never allocated. */
export const RID_PASID = 0;
/** PASIDs are as wide as the descriptors' PASID field (20 bits): the largest range end an allocator accepts. */
export const PASID_SPACE = PASID_CACHE_INVALIDATE.f.PASID.maxValue + 1;
/** Requester ids (bus:device.function) are 16-bit. */
const REQUESTER_ID_LIMIT = 0x1_0000;

export type PasidState = 'free' | 'held' | 'quarantined';
/** Where a quarantined PASID is on its way out: waiting for unbinds, for an invalidation, or for a fence. */
export type QuarantineStage = 'draining' | 'awaiting-invalidation' | 'awaiting-fence';
/** Why an allocation found nothing: the whole range is held or quarantined, or this set holds its quota. */
export type PasidShortage = 'range-exhausted' | 'quota-reached';

export type PasidAllocation = { readonly ok: true; readonly pasid: number } | { readonly ok: false; readonly reason: PasidShortage };

export type PasidRelease = { readonly ok: true } | { readonly ok: false; readonly reason: 'not-held' };

export interface PasidRange {
  /** First PASID handed out; at least 1, since 0 is RID_PASID. Default 1. */
  readonly min?: number;
  /** One past the last PASID handed out; at most 2^20 (PASID_SPACE). */
  readonly max: number;
}

export type PasidAllocatorErrorCode =
  'ERR_PASID_RANGE' | 'ERR_PASID_VALUE' | 'ERR_PASID_DEVICE' | 'ERR_PASID_QUOTA' | 'ERR_PASID_SET_NAME' | 'ERR_PASID_SET_CLOSED';

/** A caller's mistake with the allocator (never a guest's: guest values get architectural answers). */
export class PasidAllocatorError extends ViommuError {
  constructor(code: PasidAllocatorErrorCode, message: string) {
    super(code, message);
    this.name = 'PasidAllocatorError';
  }
}

/** One VM's share of the PASID range: at most `quota` PASIDs held at once. */
export interface PasidSet<T> {
  readonly name: string;
  readonly quota: number;
  /** PASIDs this set holds now (never more than quota). */
  readonly heldCount: number;
  /** PASIDs this set freed that are still quarantined (they no longer count against the quota). */
  readonly quarantinedCount: number;
  readonly closed: boolean;
  /** Takes a PASID that is neither held nor quarantined, with optional private data; quota is checked first. */
  allocate(data?: T): PasidAllocation;
  /**
   * Gives up a PASID this set holds: released at once when no device is bound and an invalidation of it and a wait
   * after that have both come since it became quiet, else quarantined. Any other PASID is answered "not held" and
   * nothing changes.
   */
  free(pasid: number): PasidRelease;
  holds(pasid: number): boolean;
  /** The PASIDs this set holds, in no particular order. */
  held(): number[];
  /** This VM's queue processed an invalidation covering `pasid` ('all': a global one): counts only for PASIDs this set holds or freed. */
  invalidated(pasid: number | 'all'): void;
  /** This VM's wait descriptor completed: releases the PASIDs this set freed whose invalidation it follows; returns how many (not those a free released at once). */
  fenceCompleted(): number;
  /** The VM is gone: frees everything it holds (into quarantine), frees its name for reuse; returns how many. */
  close(): number;
}

const enum Stage {
  Free = 0,
  Held = 1,
  Draining = 2,
  AwaitingInvalidation = 3,
  AwaitingFence = 4,
}

const FIRST_CAPACITY = 64;
const NOT_HELD: PasidRelease = Object.freeze({ ok: false, reason: 'not-held' });
const FREED: PasidRelease = Object.freeze({ ok: true });
const RANGE_EXHAUSTED: PasidAllocation = Object.freeze({ ok: false, reason: 'range-exhausted' });
const QUOTA_REACHED: PasidAllocation = Object.freeze({ ok: false, reason: 'quota-reached' });

function checkPasid(pasid: number, operation: string): void {
  if (!(Number.isInteger(pasid) && pasid >= 0 && pasid < PASID_SPACE)) {
    throw new PasidAllocatorError('ERR_PASID_VALUE', `${operation}: PASID ${String(pasid)} is not an integer in [0, 2^20); PASIDs are 20-bit fields`);
  }
}

function checkDevice(device: number, operation: string): void {
  if (!(Number.isInteger(device) && device >= 0 && device < REQUESTER_ID_LIMIT)) {
    throw new PasidAllocatorError('ERR_PASID_DEVICE', `${operation}: device ${String(device)} is not a 16-bit requester id (bus << 8 | devfn)`);
  }
}

/** The shared state behind an allocator and its sets. */
class PasidSpace<T> {
  /** Per PASID (index = PASID, valid below `capacity`): Stage, owning set's index, position in its current list. */
  stage = new Uint8Array(0);
  owner = new Int32Array(0);
  listPosition = new Int32Array(0);
  /** Per PASID, stamps of `clock`: when it last became quiet (held, no device bound), and its first owner invalidation since then (counts only if later). */
  quietSince = new Float64Array(0);
  invalidatedAt = new Float64Array(0);
  capacity = 0;
  /** Orders allocations, unbinds, invalidations and fences; a double counts exactly to 2^53 events. */
  clock = 0;
  /** Every PASID below the cursor has been handed out at least once. */
  cursor: number;
  readonly released: number[] = [];
  readonly sets: QuotaSet<T>[] = [];
  readonly openSetNames = new Set<string>();
  readonly data = new Map<number, T>();
  readonly bindings = new Map<number, Set<number>>();
  heldCount = 0;
  quarantinedCount = 0;

  constructor(
    readonly min: number,
    readonly max: number,
  ) {
    this.cursor = min;
  }

  take(set: QuotaSet<T>, data: T | undefined): PasidAllocation {
    let pasid: number;
    if (this.released.length !== 0) pasid = this.released.pop()!;
    else if (this.cursor < this.max) {
      pasid = this.cursor++;
      if (pasid >= this.capacity) this.grow();
    } else return RANGE_EXHAUSTED;
    this.stage[pasid] = Stage.Held;
    this.owner[pasid] = set.index;
    this.quietSince[pasid] = ++this.clock;
    this.listPosition[pasid] = set.heldList.length;
    set.heldList.push(pasid);
    if (data !== undefined) this.data.set(pasid, data);
    this.heldCount++;
    return { ok: true, pasid };
  }

  give(set: QuotaSet<T>, pasid: number): PasidRelease {
    checkPasid(pasid, 'free');
    if (!this.isHeldBy(set, pasid)) return NOT_HELD;
    removeAt(set.heldList, this.listPosition, this.listPosition[pasid]!);
    this.heldCount--;
    const devices = this.bindings.get(pasid);
    if (devices !== undefined && devices.size !== 0) {
      this.quarantine(set);
      this.stage[pasid] = Stage.Draining;
      return FREED;
    }
    const quiet = this.quietSince[pasid]!;
    const own = this.invalidatedAt[pasid]!;
    const invalidated = own > quiet;
    if ((invalidated && own < set.fencedAt) || set.fencedGlobalAt > quiet) {
      this.stage[pasid] = Stage.Free;
      this.data.delete(pasid);
      this.released.push(pasid);
      return FREED;
    }
    this.quarantine(set);
    if (invalidated || set.globalAt > quiet) {
      this.stage[pasid] = Stage.AwaitingFence;
      set.awaitingFence.push(pasid);
    } else this.awaitInvalidation(pasid);
    return FREED;
  }

  isHeldBy(set: QuotaSet<T>, pasid: number): boolean {
    return pasid < this.capacity && this.stage[pasid] === Stage.Held && this.owner[pasid] === set.index;
  }

  stageOf(pasid: number): Stage {
    return pasid < this.capacity ? (this.stage[pasid] as Stage) : Stage.Free;
  }

  bind(pasid: number, device: number): boolean {
    if (this.stageOf(pasid) !== Stage.Held) return false;
    let devices = this.bindings.get(pasid);
    if (devices === undefined) this.bindings.set(pasid, (devices = new Set()));
    devices.add(device);
    return true;
  }

  unbind(pasid: number, device: number): boolean {
    const devices = this.bindings.get(pasid);
    if (devices === undefined || !devices.delete(device)) return false;
    if (devices.size !== 0) return true;
    this.bindings.delete(pasid);
    // An invalidation seen while a device was still bound does not count: the device could refill caches after it.
    this.quietSince[pasid] = ++this.clock;
    if (this.stage[pasid] === Stage.Draining) this.awaitInvalidation(pasid);
    return true;
  }

  /** `pasid` was invalidated by the queue of `by` (any set's when undefined): only its owner's invalidations count. */
  invalidated(pasid: number, by?: QuotaSet<T>): void {
    const stage = this.stageOf(pasid);
    if (stage === Stage.Held) {
      if (by !== undefined && by.index !== this.owner[pasid]) return;
      // The first one since it became quiet is kept: a fence after it is all a free needs to see.
      if (this.invalidatedAt[pasid]! <= this.quietSince[pasid]!) this.invalidatedAt[pasid] = ++this.clock;
      return;
    }
    if (stage !== Stage.AwaitingInvalidation) return;
    const owner = this.sets[this.owner[pasid]!]!;
    if (by !== undefined && by !== owner) return;
    removeAt(owner.awaitingInvalidation, this.listPosition, this.listPosition[pasid]!);
    this.stage[pasid] = Stage.AwaitingFence;
    owner.awaitingFence.push(pasid);
  }

  invalidatedAll(set: QuotaSet<T>): void {
    set.globalAt = ++this.clock;
    const waiting = set.awaitingInvalidation;
    for (let i = 0; i < waiting.length; i++) {
      const pasid = waiting[i]!;
      this.stage[pasid] = Stage.AwaitingFence;
      set.awaitingFence.push(pasid);
    }
    waiting.length = 0;
  }

  fenceCompleted(set: QuotaSet<T>): number {
    set.fencedAt = ++this.clock;
    set.fencedGlobalAt = set.globalAt;
    const pending = set.awaitingFence;
    const count = pending.length;
    const hasData = this.data.size !== 0;
    for (let i = 0; i < count; i++) {
      const pasid = pending[i]!;
      this.stage[pasid] = Stage.Free;
      if (hasData) this.data.delete(pasid);
      this.released.push(pasid);
    }
    pending.length = 0;
    set.quarantinedCount -= count;
    this.quarantinedCount -= count;
    return count;
  }

  private quarantine(set: QuotaSet<T>): void {
    this.quarantinedCount++;
    set.quarantinedCount++;
  }

  private awaitInvalidation(pasid: number): void {
    const owner = this.sets[this.owner[pasid]!]!;
    this.stage[pasid] = Stage.AwaitingInvalidation;
    this.listPosition[pasid] = owner.awaitingInvalidation.length;
    owner.awaitingInvalidation.push(pasid);
  }

  private grow(): void {
    const capacity = Math.min(this.max, Math.max(FIRST_CAPACITY, this.capacity * 2));
    const stage = new Uint8Array(capacity);
    stage.set(this.stage);
    const owner = new Int32Array(capacity);
    owner.set(this.owner);
    const listPosition = new Int32Array(capacity);
    listPosition.set(this.listPosition);
    const quietSince = new Float64Array(capacity);
    quietSince.set(this.quietSince);
    const invalidatedAt = new Float64Array(capacity);
    invalidatedAt.set(this.invalidatedAt);
    this.stage = stage;
    this.owner = owner;
    this.listPosition = listPosition;
    this.quietSince = quietSince;
    this.invalidatedAt = invalidatedAt;
    this.capacity = capacity;
  }
}

/** Removes list[index] in O(1) by moving the last element into its place (and updating that element's position). */
function removeAt(list: number[], positions: Int32Array, index: number): void {
  const last = list.pop()!;
  if (index < list.length) {
    list[index] = last;
    positions[last] = index;
  }
}

class QuotaSet<T> implements PasidSet<T> {
  readonly heldList: number[] = [];
  /** Quarantined PASIDs this set freed, with no device bound, not yet covered by an invalidation. */
  readonly awaitingInvalidation: number[] = [];
  /** Quarantined PASIDs this set freed, covered by an invalidation since its last fence. */
  readonly awaitingFence: number[] = [];
  /** Clock stamps: this set's last global invalidation, its last fence, and the last global invalidation before that fence. */
  globalAt = 0;
  fencedAt = 0;
  fencedGlobalAt = 0;
  quarantinedCount = 0;
  closed = false;

  constructor(
    private readonly space: PasidSpace<T>,
    readonly index: number,
    readonly name: string,
    readonly quota: number,
  ) {}

  get heldCount(): number {
    return this.heldList.length;
  }

  allocate(data?: T): PasidAllocation {
    if (this.closed) throw new PasidAllocatorError('ERR_PASID_SET_CLOSED', `PASID set "${this.name}" is closed; create a new set for the VM`);
    if (this.heldList.length >= this.quota) return QUOTA_REACHED;
    return this.space.take(this, data);
  }

  free(pasid: number): PasidRelease {
    return this.space.give(this, pasid);
  }

  holds(pasid: number): boolean {
    checkPasid(pasid, 'holds');
    return this.space.isHeldBy(this, pasid);
  }

  held(): number[] {
    return [...this.heldList];
  }

  invalidated(pasid: number | 'all'): void {
    if (pasid === 'all') this.space.invalidatedAll(this);
    else {
      checkPasid(pasid, 'invalidated');
      this.space.invalidated(pasid, this);
    }
  }

  fenceCompleted(): number {
    return this.space.fenceCompleted(this);
  }

  close(): number {
    if (this.closed) return 0;
    const count = this.heldList.length;
    while (this.heldList.length !== 0) this.space.give(this, this.heldList[this.heldList.length - 1]!);
    this.closed = true;
    this.space.openSetNames.delete(this.name);
    return count;
  }
}

/**
 * Hands out PASIDs of [min, max) to quota sets (one per VM) and keeps freed ones in quarantine until they are safe
 * to reuse. The unit drives the quarantine: bind/unbind as devices attach to a PASID, invalidated() for each
 * PASID-cache or PASID-based IOTLB invalidation the guest's queue processes, fenceCompleted() at each wait
 * descriptor. `T` is the private data kept per PASID (several PASIDs may carry the same address space).
 */
export class PasidAllocator<T = unknown> {
  readonly min: number;
  readonly max: number;
  readonly #space: PasidSpace<T>;

  constructor(range: PasidRange) {
    const min = range.min ?? 1;
    const max = range.max;
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max > PASID_SPACE || min >= max) {
      throw new PasidAllocatorError(
        'ERR_PASID_RANGE',
        `PASID range [${String(min)}, ${String(max)}) must be integers with 1 <= min < max <= 2^20 (0 is RID_PASID)`,
      );
    }
    this.min = min;
    this.max = max;
    this.#space = new PasidSpace<T>(min, max);
  }

  /** A set of at most `quota` held PASIDs; `name` (the VM's) must not belong to another open set. */
  createSet(name: string, quota: number): PasidSet<T> {
    if (!Number.isSafeInteger(quota) || quota < 0) {
      throw new PasidAllocatorError('ERR_PASID_QUOTA', `quota ${String(quota)} for PASID set "${name}" must be a non-negative integer`);
    }
    const space = this.#space;
    if (space.openSetNames.has(name)) {
      throw new PasidAllocatorError('ERR_PASID_SET_NAME', `a PASID set named "${name}" is already open; close it first or pick another name`);
    }
    const set = new QuotaSet<T>(space, space.sets.length, name, quota);
    space.sets.push(set);
    space.openSetNames.add(name);
    return set;
  }

  get heldCount(): number {
    return this.#space.heldCount;
  }

  get quarantinedCount(): number {
    return this.#space.quarantinedCount;
  }

  state(pasid: number): PasidState {
    checkPasid(pasid, 'state');
    const stage = this.#space.stageOf(pasid);
    return stage === Stage.Free ? 'free' : stage === Stage.Held ? 'held' : 'quarantined';
  }

  /** Undefined unless the PASID is quarantined. */
  quarantineStage(pasid: number): QuarantineStage | undefined {
    checkPasid(pasid, 'quarantineStage');
    switch (this.#space.stageOf(pasid)) {
      case Stage.Draining:
        return 'draining';
      case Stage.AwaitingInvalidation:
        return 'awaiting-invalidation';
      case Stage.AwaitingFence:
        return 'awaiting-fence';
      default:
        return undefined;
    }
  }

  /** The private data of a held or quarantined PASID (kept until release, for teardown paths); else undefined. */
  data(pasid: number): T | undefined {
    checkPasid(pasid, 'data');
    return this.#space.data.get(pasid);
  }

  /** Replaces a held PASID's private data (undefined removes it); false, changing nothing, if it is not held. */
  setData(pasid: number, data: T | undefined): boolean {
    checkPasid(pasid, 'setData');
    const space = this.#space;
    if (space.stageOf(pasid) !== Stage.Held) return false;
    if (data === undefined) space.data.delete(pasid);
    else space.data.set(pasid, data);
    return true;
  }

  /** Records that a device (requester id) uses a held PASID; true if it is bound now (binding twice is harmless). */
  bind(pasid: number, device: number): boolean {
    checkPasid(pasid, 'bind');
    checkDevice(device, 'bind');
    return this.#space.bind(pasid, device);
  }

  /** The device stopped using the PASID (held or quarantined); false if it was not bound. */
  unbind(pasid: number, device: number): boolean {
    checkPasid(pasid, 'unbind');
    checkDevice(device, 'unbind');
    return this.#space.unbind(pasid, device);
  }

  boundDevices(pasid: number): number[] {
    checkPasid(pasid, 'boundDevices');
    const devices = this.#space.bindings.get(pasid);
    return devices === undefined ? [] : [...devices];
  }

  /**
   * The guest's queue processed a PASID-cache or PASID-based IOTLB invalidation covering `pasid` ('all': a global
   * one). It counts for a PASID only if it comes after the PASID became quiet (allocated or last unbound), so a
   * held PASID invalidated and fenced before its free is released by the free.
   */
  invalidated(pasid: number | 'all'): void {
    const space = this.#space;
    if (pasid === 'all') for (const set of space.sets) space.invalidatedAll(set);
    else {
      checkPasid(pasid, 'invalidated');
      space.invalidated(pasid);
    }
  }

  /**
   * A wait descriptor completed: every invalidation noted so far is done. Releases what they covered; returns how
   * many. With several units on one allocator, each unit should fence through its own set (PasidSet.fenceCompleted),
   * so that one guest's wait never releases PASIDs another guest has not finished invalidating.
   */
  fenceCompleted(): number {
    const space = this.#space;
    let count = 0;
    for (const set of space.sets) count += space.fenceCompleted(set);
    return count;
  }
}
