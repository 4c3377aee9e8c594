/**
 * The shadow backend behind the host-backend interface: vfio-user DMA tables are its devices, and since the unit
 * walks the guest's tables itself, the host backs anything those tables can say once caching mode is on.
 */
import { EventEmitter } from 'node:events';
import {
  attachKindError,
  type HostAttachRequest,
  type HostBacking,
  type HostDeviceAttachment,
  type HostIommuBackend,
  type HostIommuBackendEvents,
} from './host-backend';
import type { ShadowAttachment, ShadowBackend } from './shadow-backend';
import type { VtdConfig } from '../vtd/config';

const UNIT_WALKS_EVERYTHING: HostBacking = Object.freeze({
  tableFormats: 'any',
  addressWidths: 'any',
  capFields: 'any',
  ecapFields: 'any',
  pasidBits: 'any',
});

export class ShadowHostBackend extends EventEmitter<HostIommuBackendEvents> implements HostIommuBackend {
  readonly name = 'shadow';
  readonly attachKinds = ['vfio-user-dma-table'] as const;
  private readonly attached = new Set<ShadowAttachment>();

  constructor(readonly shadow: ShadowBackend) {
    super();
    shadow.on('error', (sid, error) => {
      // vfio-user carries no PASID: a shadowed device's requests are all without one.
      if (this.listenerCount('error') > 0) this.emit('error', sid, undefined, error);
    });
  }

  backing(): HostBacking {
    return UNIT_WALKS_EVERYTHING;
  }

  configProblems(config: VtdConfig): string[] {
    return config['caching-mode']
      ? []
      : [
          'shadowing needs caching-mode=on: without it the guest need not invalidate after making entries present, and devices would never get those mappings',
        ];
  }

  attach(request: HostAttachRequest): HostDeviceAttachment {
    if (request.kind !== 'vfio-user-dma-table') throw attachKindError(this, request);
    const attachment = this.shadow.attach(request.sid, request.table);
    this.attached.add(attachment);
    return {
      sid: request.sid,
      settled: () => attachment.settled(),
      detach: () => {
        this.attached.delete(attachment);
        return attachment.detach();
      },
    };
  }

  pending(): Promise<void> | undefined {
    return this.shadow.pending();
  }

  settled(): Promise<void> {
    return this.shadow.settled();
  }

  /** No host queue to read: a shadowed device's faults happen in the unit's own walks (its DMA by message) and are recorded there. */
  pollFaults(): number {
    return 0;
  }

  async close(): Promise<void> {
    const attachments = [...this.attached];
    this.attached.clear();
    await Promise.all(attachments.map((attachment) => attachment.detach()));
  }
}
