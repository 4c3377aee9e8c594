/**
 * The one face of a host IOMMU backend, as the testbed, the vfio-user attachment and the KVM machine use it: what
 * the host can back, which unit properties it cannot honour, devices attached by a tagged request, the hold on the
 * unit's completions, and events for failures, refusals and host faults.
 */
import { ViommuError } from '../errors';
import type { VtdDomain } from '../vtd/address-space';
import type { VtdConfig } from '../vtd/config';
import type { HostFault } from './iommufd-nesting';
import type { ShadowTarget } from './shadow-backend';

/** Which backend: 'shadow' (vfio-user DMA tables follow the guest's mappings) or 'nesting' (iommufd walks the guest's tables). */
export type HostBackendName = 'shadow' | 'nesting';

/** What a guest's IOMMU tables say that the host can carry; 'any' where the unit walks the tables itself. */
export interface HostBacking {
  /** Domain kinds a device may translate through. */
  readonly tableFormats: 'any' | readonly VtdDomain['kind'][];
  /** Input address widths of the guest's tables (first-stage: 48 for 4-level, 57 for 5-level). */
  readonly addressWidths: 'any' | readonly number[];
  /** CAP fields the host has (non-zero), by CAP_FIELDS name: what the unit may offer beyond its own walks. */
  readonly capFields: 'any' | ReadonlySet<string>;
  /** ECAP fields the host has (non-zero), by ECAP_FIELDS name. */
  readonly ecapFields: 'any' | ReadonlySet<string>;
  /** PASID width the host hands out (0: none beyond the requests without PASID). */
  readonly pasidBits: 'any' | number;
}

/**
 * A device to put under the backend. What a device is differs per backend, so the request says which kind it is:
 * - 'vfio-user-dma-table': a vfio-user device's DMA map table, kept equal to the guest's mappings (shadow);
 * - 'iommufd-device': a VFIO cdev already added to the backend's IommufdNesting under key `sid`, followed for its
 *   requests without PASID and for each of `pasids` (nesting).
 */
export type HostAttachRequest =
  | { readonly kind: 'vfio-user-dma-table'; readonly sid: number; readonly table: ShadowTarget }
  | { readonly kind: 'iommufd-device'; readonly sid: number; readonly pasids?: readonly number[] };

export type HostAttachKind = HostAttachRequest['kind'];

/** One attached device. */
export interface HostDeviceAttachment {
  readonly sid: number;
  /** Resolves once every host request decided for this device so far has been answered. */
  settled(): Promise<void>;
  /** Stops following the guest for this device and takes back what the host was given for it. */
  detach(): Promise<void>;
}

/** The backend's events; every one is optional to listen to ('error' included: nothing throws for want of a listener). */
export interface HostIommuBackendEvents {
  /** A host request failed (or a device refused one); the device keeps working on what it had. pasid: undefined for requests without PASID. */
  error: [sid: number, pasid: number | undefined, error: Error];
  /** The guest programmed something this host cannot back: that (device, PASID) is detached from the host. */
  refused: [sid: number, pasid: number | undefined, reason: string];
  /** A host fault the guest's tables allow: the host's own problem, for the VMM's log. */
  hostFault: [fault: HostFault];
  /** A host fault the guest's tables refuse: recorded in the guest's fault records (reason: the fault reason code). */
  guestFault: [fault: HostFault, reason: number];
}

/**
 * A host IOMMU backend. It follows the unit's domains by itself once a device is attached: binds and unbinds as the
 * guest programs its entries, and forwards the guest's invalidations once per domain.
 */
export interface HostIommuBackend {
  readonly name: HostBackendName;
  /** The attachment kinds this backend takes; attach() refuses any other. */
  readonly attachKinds: readonly HostAttachKind[];
  /** What the host can back, so the unit offers the guest only that. */
  backing(): HostBacking;
  /** The properties of a unit configured as `config` that this host cannot honour, each saying what to change; empty when all can be. */
  configProblems(config: VtdConfig): string[];
  /** Puts a device under the backend; throws ERR_HOST_ATTACH_KIND for a kind it does not take. */
  attach(request: HostAttachRequest): HostDeviceAttachment;
  /** What is outstanding, for the unit's completion hold: a promise of settled() while host requests are on their way, else undefined. */
  pending(): Promise<void> | undefined;
  /** Resolves once every host request decided so far has been answered. */
  settled(): Promise<void>;
  /** Reads the host's fault queue and routes each fault (events 'guestFault' and 'hostFault'); returns how many were read. */
  pollFaults(): number;
  /** Detaches every device this backend attached. */
  close(): Promise<void>;
  on<E extends keyof HostIommuBackendEvents>(event: E, listener: (...args: HostIommuBackendEvents[E]) => void): this;
  off<E extends keyof HostIommuBackendEvents>(event: E, listener: (...args: HostIommuBackendEvents[E]) => void): this;
}

/** The refusal of an attachment of a kind the backend does not take. */
export function attachKindError(backend: Pick<HostIommuBackend, 'name' | 'attachKinds'>, request: HostAttachRequest): ViommuError {
  const takes = backend.attachKinds.map((kind) => `'${kind}'`).join(' or ');
  return new ViommuError(
    'ERR_HOST_ATTACH_KIND',
    `the ${backend.name} backend takes ${takes} attachments, not '${request.kind}' (device 0x${request.sid.toString(16)}): attach it to a backend of that kind`,
  );
}
