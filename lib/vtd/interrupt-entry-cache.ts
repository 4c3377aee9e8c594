/** The interrupt entry cache: present IRTEs by interrupt index, dropped by global and index-selective invalidation. */

/** The four 32-bit words of one 128-bit IRTE, as read from the table. */
export type IrteWords = Uint32Array;

const IRTE_WORDS = 4;

export class InterruptEntryCache {
  private readonly entries = new Map<number, IrteWords>();

  get size(): number {
    return this.entries.size;
  }

  get(index: number): IrteWords | undefined {
    return this.entries.get(index);
  }

  /** Keeps a copy of `words` for `index`. The table bounds the index (2^(S+1) <= 65536 entries), so the size too. */
  set(index: number, words: ArrayLike<number>): void {
    const copy = new Uint32Array(IRTE_WORDS);
    for (let i = 0; i < IRTE_WORDS; i++) copy[i] = words[i]!;
    this.entries.set(index, copy);
  }

  invalidateAll(): void {
    this.entries.clear();
  }

  /** Index-selective: the 2^mask entries from `index` aligned down to that size (spec: IM is an index mask). */
  invalidateIndex(index: number, mask: number): void {
    const span = 2 ** mask;
    const first = index - (index % span);
    if (span >= this.entries.size) {
      for (const key of this.entries.keys()) if (key >= first && key < first + span) this.entries.delete(key);
    } else {
      for (let key = first; key < first + span; key++) this.entries.delete(key);
    }
  }
}
