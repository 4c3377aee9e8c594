/** Typed errors of the vfio-user client: requests refused locally, before anything reaches the server. */

import { ViommuError } from '../../errors';

export type VfioUserClientErrorCode =
  /** A DMA_MAP that overlaps a mapping already made (or in flight). */
  | 'ERR_VFIO_USER_DMA_OVERLAP'
  /** A DMA_MAP beyond the server's max_dma_maps. */
  | 'ERR_VFIO_USER_DMA_LIMIT'
  /** A DMA_UNMAP of a range that is not exactly one mapping. */
  | 'ERR_VFIO_USER_DMA_NOT_MAPPED'
  /** A DMA range that is empty, wraps past 2^64, or is not aligned to the server's smallest page size. */
  | 'ERR_VFIO_USER_DMA_RANGE'
  /** A region index the server did not describe. */
  | 'ERR_VFIO_USER_NO_REGION'
  /** A region access outside the region, or of a kind (read, write, mmap) the region does not allow. */
  | 'ERR_VFIO_USER_REGION_ACCESS'
  /** A SET_IRQS outside the IRQ index's count, or for an index the server did not describe. */
  | 'ERR_VFIO_USER_IRQ_RANGE'
  /** The server answered a region access with fewer bytes than asked. */
  | 'ERR_VFIO_USER_SHORT_ACCESS'
  /** The server's description of the device is inconsistent (wrong index in a reply, argsz that keeps growing). */
  | 'ERR_VFIO_USER_ENUMERATION'
  /** The client was used before start() finished, or after close(). */
  | 'ERR_VFIO_USER_CLIENT_STATE';

export class VfioUserClientError extends ViommuError {
  constructor(code: VfioUserClientErrorCode, message: string) {
    super(code, message);
    this.name = 'VfioUserClientError';
  }
  declare readonly code: VfioUserClientErrorCode;
}
