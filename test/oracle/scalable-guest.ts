/** A guest's scalable-mode structures for the edu device (root, context, PASID directory and table, one domain), for the differential tests. */
import { encodeBig, type FieldTable } from '../../lib/vtd/bitfield';
import { PASID_DIRECTORY_ENTRY, PASID_PGTT, SCALABLE_CONTEXT_ENTRY, SCALABLE_PASID_ENTRY, SCALABLE_ROOT_ENTRY } from '../../lib/vtd/structures';
import { EDU_SID, PAGE, type OracleGuest } from './harness';

/** RTADDR.TTM = 01: scalable mode. */
export const TTM_SCALABLE = 1n << 10n;

export type Values = Partial<Record<string, number>>;

/** A guest's scalable-mode structures for the edu device: root, context, PASID directory, PASID table, one 3-level domain. */
export class ScalableGuest {
  readonly root: number;
  readonly contexts: number;
  readonly directory: number;
  readonly pasids: number;
  readonly top: number;

  constructor(readonly guest: OracleGuest) {
    this.root = guest.allocPage();
    this.contexts = guest.allocPage();
    this.directory = guest.allocPage();
    this.pasids = guest.allocPage();
    this.top = guest.allocPage();
  }

  async write(address: number, table: FieldTable, values: Values): Promise<void> {
    const value = encodeBig(table, values);
    for (let q = 0; q < table.sizeBits / 64; q++) await this.guest.writeq(address + q * 8, BigInt.asUintN(64, value >> BigInt(64 * q)));
  }

  async rootEntry(values: Values = {}): Promise<void> {
    await this.write(this.root, SCALABLE_ROOT_ENTRY, { LP: 1, LCTP: this.contexts / PAGE, ...values });
  }

  async context(values: Values = {}): Promise<void> {
    await this.write(this.contexts + (EDU_SID % 128) * 32, SCALABLE_CONTEXT_ENTRY, { P: 1, PDTS: 0, PASIDDIRPTR: this.directory / PAGE, ...values });
  }

  async directoryEntry(values: Values = {}): Promise<void> {
    await this.write(this.directory, PASID_DIRECTORY_ENTRY, { P: 1, PTP: this.pasids / PAGE, ...values });
  }

  async pasidEntry(pasid: number, values: Values = {}): Promise<void> {
    await this.write(this.pasids + pasid * 64, SCALABLE_PASID_ENTRY, {
      P: 1,
      PGTT: PASID_PGTT.SECOND_STAGE,
      AW: 1,
      SSPTPTR: this.top / PAGE,
      DID: 3,
      ...values,
    });
  }

  /** Register-based global context and IOTLB invalidation (QEMU 7.2 has no PASID cache to flush). */
  async invalidate(): Promise<void> {
    await this.guest.setReg('CCMD', 0xa000000000000000n);
    await this.guest.setReg('IOTLB', 0x9000000000000000n);
  }

  async enable(): Promise<void> {
    await this.guest.setReg('RTADDR', BigInt(this.root) | TTM_SCALABLE);
    await this.guest.gcmd(0x40000000);
    await this.invalidate();
    await this.guest.gcmd(0x80000000);
  }
}
