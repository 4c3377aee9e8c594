/** `viommu/machine`: a small q35-like PC on KVM around the unit (docs/machine.md), the host `viommu smoke` runs guests on. */
export { KvmMachine, MACHINE_LAYOUT, MAX_CPUS, intxPin } from '../machine/kvm-machine';
export type { KvmMachineOptions, KvmMachineCreateResult, MachineEvent, MachineEnd, MachineOutcome } from '../machine/kvm-machine';
export type { MultibootModule, MultibootBoot } from '../machine/multiboot';
export { renderSmokeReport, parseGuestChecks, smokeExitCode, SMOKE_EXIT } from '../machine/smoke-report';
export type { SmokeReportInput, GuestChecks, CheckStatus } from '../machine/smoke-report';
export { summarizeUnit } from '../machine/unit-summary';
export type { UnitSummary, DomainSummary, FaultSummary } from '../machine/unit-summary';
