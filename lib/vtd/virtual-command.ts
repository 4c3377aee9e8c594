/**
 * The virtual command interface (ECAP.VCS, VT-d 3.3 layout): a guest allocates and frees PASIDs by writing VCMD and
 * reads the answer in VCRSP. The PASIDs come from a PasidAllocator set, so a VMM can give several units (VMs) one
 * host-wide allocator with a quota each; freed PASIDs go through the allocator's quarantine.
 */

import { ViommuError } from '../errors';
import { encodeBig, getFieldBig } from './bitfield';
import { PasidAllocator, type PasidSet } from './pasid-allocator';
import type { RegisterFile } from './register-file';
import { VCMD_FIELDS, VCRSP_FIELDS } from './registers';

export const VIRTUAL_COMMAND = { ALLOCATE_PASID: 1, FREE_PASID: 2 } as const;

/**
 * VCRSP.SC values. 16 is the command-specific error of both PASID commands (none left to allocate; freeing a PASID
 * this guest does not hold). The spec leaves other commands' answers to each command; an unsupported one gets 1,
 * the general "invalid command" code of the 3.1 layout's status field.
 */
export const VIRTUAL_COMMAND_STATUS = { SUCCESS: 0, UNSUPPORTED: 1, PASID_ERROR: 16 } as const;

export interface VirtualCommandOptions {
  /** PASID width the unit offers (ECAP.PSS + 1, 20 when PSS is not set): allocations stay below 2^bits. */
  readonly pasidBits: number;
  /**
   * Where the PASIDs come from: a set of a host-wide allocator (quota per VM). Default: a private allocator over
   * [1, 2^pasidBits) with the whole range as quota.
   */
  readonly pasids?: { readonly allocator: PasidAllocator<unknown>; readonly set: PasidSet<unknown> };
}

export class VirtualCommandInterface {
  readonly allocator: PasidAllocator<unknown>;
  readonly pasids: PasidSet<unknown>;
  private readonly limit: number;

  constructor(
    private readonly registers: RegisterFile,
    options: VirtualCommandOptions,
  ) {
    this.limit = 2 ** options.pasidBits;
    if (options.pasids !== undefined) {
      // Every PASID the set may hand out must fit the guest's PASID fields (ECAP.PSS): checked once, here.
      if (options.pasids.allocator.max > this.limit) {
        throw new ViommuError(
          'ERR_PASID_RANGE',
          `the PASID allocator hands out PASIDs up to ${options.pasids.allocator.max - 1}, beyond this unit's ${options.pasidBits}-bit PASIDs; give the unit x-pasid-bits to match, or an allocator with max <= 2^${options.pasidBits}`,
        );
      }
      this.allocator = options.pasids.allocator;
      this.pasids = options.pasids.set;
    } else {
      this.allocator = new PasidAllocator<unknown>({ min: 1, max: this.limit });
      this.pasids = this.allocator.createSet('guest', this.limit - 1);
    }
  }

  /** VCMD was written: runs the command at once (VCRSP.IP never reads 1) and sets VCRSP. */
  execute(): void {
    const written = this.registers.readRaw('VCMD');
    const command = Number(getFieldBig(written, VCMD_FIELDS.f.CMD));
    const operand = getFieldBig(written, VCMD_FIELDS.f.OPERAND);
    const { status, result } = this.run(command, operand);
    this.registers.writeRaw('VCRSP', encodeBig(VCRSP_FIELDS, { IP: 0, SC: status, RESULT: result }));
  }

  /**
   * The guest was reset and forgot its PASIDs: each is freed, then counted as invalidated (reset dropped every
   * cache). One already invalidated and waited for since it became quiet is released by the free; the others by
   * the next completed wait, unless a device is still bound.
   */
  reset(): void {
    for (const pasid of this.pasids.held()) {
      this.pasids.free(pasid);
      this.pasids.invalidated(pasid);
    }
  }

  private run(command: number, operand: bigint): { status: number; result: bigint } {
    switch (command) {
      case VIRTUAL_COMMAND.ALLOCATE_PASID: {
        const allocation = this.pasids.allocate();
        return allocation.ok
          ? { status: VIRTUAL_COMMAND_STATUS.SUCCESS, result: BigInt(allocation.pasid) }
          : { status: VIRTUAL_COMMAND_STATUS.PASID_ERROR, result: 0n };
      }
      case VIRTUAL_COMMAND.FREE_PASID: {
        // The operand is 48 bits wide; anything that is not a PASID this guest holds is refused the same way.
        if (operand >= BigInt(this.limit)) return { status: VIRTUAL_COMMAND_STATUS.PASID_ERROR, result: 0n };
        const released = this.pasids.free(Number(operand));
        return { status: released.ok ? VIRTUAL_COMMAND_STATUS.SUCCESS : VIRTUAL_COMMAND_STATUS.PASID_ERROR, result: 0n };
      }
      default:
        return { status: VIRTUAL_COMMAND_STATUS.UNSUPPORTED, result: 0n };
    }
  }
}
