/** The x86 platform's fixed geometry, stated once: the 4 KiB page and the interrupt address window. */

/** Pages are 4 KiB: translation granule, DMA_MAP alignment and guest table size alike. */
export const PAGE_SHIFT = 12;
/**
 * A shift, not `2 **`: V8 keeps `1 << 12` a small integer, where `**` yields a heap number that makes every table
 * index and address computed from it double arithmetic (the nested walk ran ~10% slower that way).
 */
export const PAGE_BYTES = 1 << PAGE_SHIFT;

/**
 * Guest-physical (and, for requests without PASID, IOVA) addresses 0xfee00000-0xfeefffff carry interrupt messages,
 * never memory (VT-d 3.14-3.15; the local APICs' window).
 */
export const INTERRUPT_WINDOW_START = 0xfee00000;
export const INTERRUPT_WINDOW_END = 0xfef00000;
