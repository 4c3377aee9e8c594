/**
 * The iommufd nesting backend behind the host-backend interface: VFIO cdev devices (with their PASIDs) are its
 * devices, and what it can back is what the host's IOMMU_GET_HW_INFO said.
 */
import { EventEmitter } from 'node:events';
import { decodeBig, type FieldTable } from '../vtd/bitfield';
import type { VtdConfig } from '../vtd/config';
import { CAP_FIELDS, ECAP_FIELDS } from '../vtd/registers';
import {
  attachKindError,
  type HostAttachRequest,
  type HostBacking,
  type HostDeviceAttachment,
  type HostIommuBackend,
  type HostIommuBackendEvents,
} from './host-backend';
import type { IommufdNesting } from './iommufd-nesting';
import { NestingBackend, nestingConfigProblems, type NestingBackendOptions, type NestingDomainSource } from './nesting-backend';

/** The names of the fields of `table` that are non-zero in `value`. */
function fieldsSet<N extends string>(table: FieldTable<N>, value: bigint): ReadonlySet<string> {
  const decoded: Record<string, bigint> = decodeBig(table, value);
  return new Set(Object.keys(decoded).filter((name) => decoded[name] !== 0n));
}

export class NestingHostBackend extends EventEmitter<HostIommuBackendEvents> implements HostIommuBackend {
  readonly name = 'nesting';
  readonly attachKinds = ['iommufd-device'] as const;
  /** The backend itself, for what only nesting does (following one more PASID of an attached device: `watch`). */
  readonly backend: NestingBackend;

  /** `nesting` must be set up (its capabilities known) before backing() or configProblems() is asked. */
  constructor(
    private readonly nesting: IommufdNesting,
    unit: NestingDomainSource,
    options: NestingBackendOptions,
  ) {
    super();
    this.backend = new NestingBackend(nesting, unit, options);
    this.backend.on('error', (sid, pasid, error) => {
      if (this.listenerCount('error') > 0) this.emit('error', sid, pasid, error);
    });
    this.backend.on('refused', (sid, pasid, reason) => this.emit('refused', sid, pasid, reason));
    this.backend.on('hostFault', (fault) => this.emit('hostFault', fault));
    this.backend.on('guestFault', (fault, reason) => this.emit('guestFault', fault, reason));
  }

  backing(): HostBacking {
    const capabilities = this.nesting.capabilities();
    const firstStage = capabilities.nested && capabilities.pageTableFormats.includes('vtd-s1');
    return {
      tableFormats: firstStage ? ['first-stage', 'identity'] : ['identity'],
      addressWidths: capabilities.addressWidths,
      capFields: fieldsSet(CAP_FIELDS, capabilities.cap),
      ecapFields: fieldsSet(ECAP_FIELDS, capabilities.ecap),
      pasidBits: capabilities.maxPasidLog2,
    };
  }

  configProblems(config: VtdConfig): string[] {
    return nestingConfigProblems(config, this.nesting.capabilities());
  }

  attach(request: HostAttachRequest): HostDeviceAttachment {
    if (request.kind !== 'iommufd-device') throw attachKindError(this, request);
    const sid = request.sid;
    this.backend.attach(sid, request.pasids ?? []);
    return {
      sid,
      // Host requests complete inside the guest's command that caused them: nothing is ever on its way.
      settled: () => Promise.resolve(),
      detach: () => {
        this.backend.detach(sid);
        return Promise.resolve();
      },
    };
  }

  pending(): undefined {
    return this.backend.pending();
  }

  settled(): Promise<void> {
    return Promise.resolve();
  }

  pollFaults(): number {
    return this.backend.pollFaults();
  }

  close(): Promise<void> {
    this.backend.close();
    return Promise.resolve();
  }
}
