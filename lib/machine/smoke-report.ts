/** The report `viommu smoke` ends with: the guest's checks, what it programmed into the unit, faults, how it ended, and the exit code. */
import type { MachineEnd, MachineOutcome } from './kvm-machine';
import type { UnitSummary } from './unit-summary';

/** kvm-unit-tests' result words (lib/report.c), and the summary line it ends with. */
export type CheckStatus = 'PASS' | 'FAIL' | 'SKIP' | 'XPASS' | 'XFAIL';
const CHECK_LINE = /^(PASS|FAIL|SKIP|XPASS|XFAIL): (.*)$/;
const SUMMARY_LINE = /^SUMMARY: (.*)$/;

export interface GuestChecks {
  readonly checks: readonly { readonly status: CheckStatus; readonly name: string }[];
  readonly summary: string | undefined;
}

/** Exit codes of `viommu smoke` beside the guest's own status. */
export const SMOKE_EXIT = { TIMEOUT: 124, CPU_STOPPED: 125 } as const;

/** The PASS/FAIL/SKIP lines and the SUMMARY line of a kvm-unit-tests guest's serial output. */
export function parseGuestChecks(serial: string): GuestChecks {
  const checks: { status: CheckStatus; name: string }[] = [];
  let summary: string | undefined;
  for (const raw of serial.split('\n')) {
    const line = raw.replace(/\r$/, '');
    const check = CHECK_LINE.exec(line);
    if (check) checks.push({ status: check[1] as CheckStatus, name: check[2]! });
    const total = SUMMARY_LINE.exec(line);
    if (total) summary = total[1];
  }
  return { checks, summary };
}

/**
 * The command's exit code: the value the guest wrote to isa-debug-exit (kvm-unit-tests writes 0 when every check
 * passed), 124 when it ran out of time, 125 when the CPU stopped any other way.
 */
export function smokeExitCode(end: MachineEnd): number {
  if (end.kind === 'debug-exit') return end.written & 0xff;
  return end.kind === 'timeout' ? SMOKE_EXIT.TIMEOUT : SMOKE_EXIT.CPU_STOPPED;
}

function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

function bdf(sid: number): string {
  const bus = (sid >> 8).toString(16).padStart(2, '0');
  const device = ((sid >> 3) & 0x1f).toString(16).padStart(2, '0');
  return `${bus}:${device}.${sid & 7}`;
}

function describeEnd(end: MachineEnd, timeoutMs: number): string {
  switch (end.kind) {
    case 'debug-exit':
      return `the guest wrote ${end.written} to isa-debug-exit (QEMU would exit with ${end.status})`;
    case 'timeout':
      return `the guest was still running after ${timeoutMs / 1000} s and was stopped`;
    default:
      return `${end.kind}: ${end.message}${end.detail ? ` (detail ${hex(end.detail)})` : ''}`;
  }
}

export interface SmokeReportInput {
  readonly image: string;
  readonly iommu: string;
  readonly checks: GuestChecks;
  readonly unit: UnitSummary;
  readonly outcome: MachineOutcome;
  readonly timeoutMs: number;
  readonly deviceErrors: ReadonlyMap<string, number>;
  readonly unclaimedMmio: ReadonlyMap<number, { reads: number; writes: number }>;
  readonly deviceSocket?: string;
  /** Mappings of the guest's tables a shadowed device's DMA table lacks (KvmMachine.unshadowedMappings). */
  readonly unshadowed?: readonly { readonly sid: number; readonly iova: number; readonly bytes: number }[];
}

/** The report as text, one fact per line, for a driver developer to read at a glance. */
export function renderSmokeReport(input: SmokeReportInput): string {
  const { checks, unit, outcome } = input;
  const lines: string[] = ['', '==== viommu smoke report ===='];
  lines.push(
    `guest: ${input.image}; unit: ${input.iommu === '' ? 'default properties' : input.iommu}; edu: ${input.deviceSocket ? `vfio-user at ${input.deviceSocket}` : 'in-process'}`,
  );
  const counts = new Map<CheckStatus, number>();
  for (const check of checks.checks) counts.set(check.status, (counts.get(check.status) ?? 0) + 1);
  lines.push(
    `checks: ${checks.checks.length === 0 ? 'none printed' : [...counts].map(([status, n]) => `${n} ${status}`).join(', ')}${checks.summary ? ` (guest's summary: ${checks.summary})` : ''}`,
  );
  for (const check of checks.checks) lines.push(`  ${check.status.padEnd(5)} ${check.name}`);
  lines.push(`unit: ${unit.mode} mode, root table ${hex(unit.rootTable)}, status ${unit.status.length ? unit.status.join(' ') : 'none'}`);
  lines.push(
    `  invalidation queue: ${unit.queue ? `${unit.queue.enabled ? 'on' : 'off'}, ${unit.queue.entries} ${unit.queue.descriptorWidth} descriptors at ${hex(unit.queue.base)}` : 'never set up'}`,
  );
  lines.push(
    `  interrupt remapping: ${unit.interruptRemapping ? `${unit.interruptRemapping.enabled ? 'on' : 'off'}, ${unit.interruptRemapping.entries} entries at ${hex(unit.interruptRemapping.table)}, ${unit.interruptRemapping.extended ? 'x2APIC' : 'xAPIC'} destinations` : 'never set up'}`,
  );
  if (unit.domains.length === 0) lines.push('  domains: none (no device translates)');
  for (const domain of unit.domains) {
    lines.push(
      `  domain of ${bdf(domain.sid)}: ${domain.kind}, DID ${domain.did}, ${domain.kind === 'identity' ? 'all of RAM at IOVA = GPA' : `${domain.mappings.length}${domain.truncated ? '+' : ''} mapped run(s)`}`,
    );
    for (const run of domain.mappings) lines.push(`    IOVA ${hex(run.iova)}-${hex(run.iova + run.bytes - 1)} -> ${hex(run.gpa)} ${run.access}`);
  }
  lines.push(
    `faults: ${unit.faults.length === 0 ? 'none recorded' : `${unit.faults.length} recorded`}${unit.faultStatus.length ? ` (FSTS ${unit.faultStatus.join(' ')})` : ''}`,
  );
  for (const fault of unit.faults) {
    lines.push(
      `  FRCD${fault.index}: ${bdf(fault.sid)} ${fault.access} ${hex(fault.address)}${fault.pasid !== undefined ? ` PASID ${fault.pasid}` : ''}: reason ${hex(fault.reason)} ${fault.description}`,
    );
  }
  for (const gap of input.unshadowed ?? []) {
    lines.push(
      `shadow: ${bdf(gap.sid)}'s DMA table lacks IOVA ${hex(gap.iova)}-${hex(gap.iova + gap.bytes - 1)}, which the guest's tables map: with caching mode the guest must invalidate after making entries present, and it did not (the device's DMA there went by message through the unit)`,
    );
  }
  for (const [error, count] of input.deviceErrors) lines.push(`device error: ${error}${count > 1 ? ` (${count} times)` : ''}`);
  for (const [address, count] of input.unclaimedMmio)
    lines.push(`unclaimed MMIO at ${hex(address)}: ${count.reads} read(s), ${count.writes} write(s) (nothing decodes it)`);
  lines.push(`end: ${describeEnd(outcome.end, input.timeoutMs)}, after ${outcome.exits} exits in ${(outcome.elapsedMs / 1000).toFixed(2)} s`);
  if (outcome.end.kind !== 'debug-exit' && outcome.registers) {
    const { regs, sregs } = outcome.registers;
    lines.push(
      `  rip ${hex(regs.rip)} rsp ${hex(regs.rsp)} rflags ${hex(regs.rflags)} cr0 ${hex(sregs.cr0)} cr2 ${hex(sregs.cr2)} cr3 ${hex(sregs.cr3)} cr4 ${hex(sregs.cr4)} efer ${hex(sregs.efer)} cs ${hex(sregs.cs.selector)}`,
    );
  }
  lines.push(`exit code: ${smokeExitCode(outcome.end)}`);
  return lines.join('\n') + '\n';
}
