/** HeldRuns: what one device holds, as its domain's table corrected by the few runs that failed or were held back. */
import type { ShadowExtent } from './shadow-mappings';

/**
 * A device is sent its domain's table as batches: a replay when it joins, then each invalidation's changes. Once
 * every request is answered, it holds that table, except where a request failed or was not sent; so only those
 * exceptions are kept here, per device, and the table itself stays once per domain. A copy of the table per device
 * would make each invalidation cost every device lookups in a table as large as the domain (cache misses that, at
 * a few thousand runs, weigh more than the requests themselves).
 *
 * The calls follow the batches in the order the device is sent them: `released` for each run a batch unmaps,
 * `claimed` for each run it maps, `left` for a batch that unmaps everything. Runs in one batch start on distinct
 * pages, so exceptions are kept by IOVA page.
 */
export class HeldRuns {
  /** Runs the device still holds though the batches unmapped them (their unmap failed, or may have). */
  private readonly kept = new Map<number, ShadowExtent>();
  /** Runs the batches mapped that the device does not hold: refused, or not sent. */
  private readonly missing = new Map<number, ShadowExtent>();
  private count = 0;

  /** How many runs the device holds. */
  get size(): number {
    return this.count;
  }

  /** The run the device still holds at `iovaPage` after the batches unmapped it, if any. */
  keptAt(iovaPage: number): ShadowExtent | undefined {
    return this.kept.size === 0 ? undefined : this.kept.get(iovaPage);
  }

  /**
   * A batch unmaps `run`: true when the device holds something at its page, which it no longer does once the
   * DMA_UNMAP is sent; false when nothing is there to unmap.
   */
  released(run: ShadowExtent): boolean {
    if (this.kept.size > 0 && this.kept.delete(run.iovaPage)) {
      this.missing.delete(run.iovaPage);
      this.count--;
      return true;
    }
    if (this.missing.size > 0 && this.missing.delete(run.iovaPage)) return false;
    this.count--;
    return true;
  }

  /** The DMA_UNMAP of `run` failed: the device still holds it (or may), so a later unmap of everything names it. */
  unmapFailed(run: ShadowExtent): void {
    if (!this.kept.has(run.iovaPage)) this.count++;
    this.kept.set(run.iovaPage, run);
  }

  /** A batch maps a run and its DMA_MAP is sent. */
  claimed(): void {
    // Nothing is missing at its page: the run there before it was released first (or the table was left).
    this.count++;
  }

  /** A batch maps `run` and it is not sent (over the device's limit, or a kept run is in the way). */
  withheld(run: ShadowExtent): void {
    this.missing.set(run.iovaPage, run);
  }

  /** The DMA_MAP of `run` failed: the device does not hold it, unless a kept run at its page stands there. */
  mapFailed(run: ShadowExtent): void {
    if (this.kept.has(run.iovaPage) || this.missing.has(run.iovaPage)) return;
    this.missing.set(run.iovaPage, run);
    this.count--;
  }

  /**
   * A batch unmaps everything the device holds, after batches that left it with `table`: returns those runs (the
   * table less the missing ones, then the kept ones), each to be `released`. The table's exceptions end here.
   */
  left(table: readonly ShadowExtent[]): readonly ShadowExtent[] {
    if (this.kept.size === 0 && this.missing.size === 0) return table;
    const held: ShadowExtent[] = [];
    for (const run of table) if (!this.missing.has(run.iovaPage) && !this.kept.has(run.iovaPage)) held.push(run);
    for (const run of this.kept.values()) held.push(run);
    this.missing.clear();
    return held;
  }
}
