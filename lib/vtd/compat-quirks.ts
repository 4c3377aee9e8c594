/** Places where the unit follows QEMU rather than the letter of the VT-d spec, each listed once and selectable by compat. */

import type { Compat, VtdConfig } from './config';

export type QuirkId =
  | 'iqa-readback-drops-dw'
  | 'frcd-pv-ffff-without-pasid'
  | 'top-table-read-error-is-context-invalid'
  | 'second-stage-not-present-is-permission-fault'
  | 'srtp-acts-on-every-gcmd-write'
  | 'srtp-flushes-caches'
  | 'collapse-faults-from-pending-source'
  | 'context-domain-invalidation-is-global'
  | 'compatibility-interrupts-pass-without-cfi';

export interface CompatQuirk {
  readonly id: QuirkId;
  /** The compat settings that enable it; 'all' means the unit always behaves this way (spec-permitted or spec-silent). */
  readonly compat: readonly Compat[] | 'all';
  readonly description: string;
}

export const COMPAT_QUIRKS: readonly CompatQuirk[] = [
  {
    id: 'iqa-readback-drops-dw', compat: ['qemu-7.2'],
    description: 'IQA reads back as base | QS; DW is latched but not shown (QEMU 7.2 vtd_handle_iqa_write)',
  },
  {
    id: 'frcd-pv-ffff-without-pasid', compat: ['qemu-7.2'],
    description: 'FRCD.PV is 0xffff (PP = 0) for requests without PASID; the spec leaves PV 0',
  },
  {
    id: 'top-table-read-error-is-context-invalid', compat: ['qemu-7.2'],
    description: 'an unreadable top-level page table gives fault 3 (invalid context entry) instead of 7',
  },
  {
    id: 'second-stage-not-present-is-permission-fault', compat: 'all',
    description: 'a second-stage entry with R = W = 0 gives fault 6 (read) or 5 (write); legacy mode has no separate not-present code',
  },
  {
    id: 'srtp-acts-on-every-gcmd-write', compat: 'all',
    description: 'SRTP and SIRTP latch the pointer on every GCMD write with the bit set, not only on a 0 -> 1 change',
  },
  {
    id: 'srtp-flushes-caches', compat: 'all',
    description: 'SRTP drops the context cache and IOTLB (QEMU 7.2 vtd_handle_gcmd_srtp; later advertised as CAP.ESRTPS)',
  },
  {
    id: 'collapse-faults-from-pending-source', compat: 'all',
    description: 'a fault from a source id that already has a pending record is not recorded (spec-permitted fault compression)',
  },
  {
    id: 'context-domain-invalidation-is-global', compat: 'all',
    description: 'a domain-selective context-cache invalidation is done (and reported in CCMD.CAIG) as global, as in QEMU',
  },
  {
    id: 'compatibility-interrupts-pass-without-cfi', compat: ['qemu-7.2'],
    description: 'with IRE on, compatibility-format MSIs pass even when GSTS.CFIS is 0 (spec: blocked with fault 0x25)',
  },
];

/** The quirks in effect for a configuration. */
export function quirksFor(config: Pick<VtdConfig, 'compat'>): ReadonlySet<QuirkId> {
  const set = new Set<QuirkId>();
  for (const quirk of COMPAT_QUIRKS) {
    if (quirk.compat === 'all' || quirk.compat.includes(config.compat)) set.add(quirk.id);
  }
  return set;
}
