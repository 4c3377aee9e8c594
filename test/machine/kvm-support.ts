/** Test helper: whether KVM can run guests here, and where kvm-unit-tests' VT-d guest lives (../shared/peers or $VIOMMU_PEERS). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvmVirtualMachine } from '../../lib/os/kvm-vm';
import { PEERS } from '../peers';

export const INTEL_IOMMU_FLAT = path.join(PEERS, 'kvm-unit-tests', 'intel-iommu.flat');

let kvmReason: string | undefined | null = null;

/** Why KVM cannot run a guest here (undefined when it can). */
export function kvmUnusableReason(): string | undefined {
  if (kvmReason !== null) return kvmReason;
  const opened = KvmVirtualMachine.open();
  opened.vm?.close();
  kvmReason = opened.reason === undefined ? undefined : `KVM cannot run guests here: ${opened.reason}`;
  return kvmReason;
}

/** Why the kvm-unit-tests guest is missing (undefined when present). */
export function peerGuestMissingReason(): string | undefined {
  return fs.existsSync(INTEL_IOMMU_FLAT) ? undefined : `${INTEL_IOMMU_FLAT} is missing (the peers folder beside the repository, or $VIOMMU_PEERS)`;
}

/** Skips the test (saying why) unless KVM works and, when asked, the peer guest is there. */
export function requireKvm(context: Mocha.Context, needsPeerGuest = false): void {
  const reason = kvmUnusableReason() ?? (needsPeerGuest ? peerGuestMissingReason() : undefined);
  if (reason === undefined) return;
  console.log(`      skipped: ${reason}`);
  context.skip();
}
