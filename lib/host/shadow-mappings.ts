/** ShadowMappings: a device's DMA map table kept as maximal runs, and the exact DMA_MAP/DMA_UNMAP steps to change it. */
import { ViommuError } from '../errors';

/** Access bits of a run, as DMA_MAP's flags carry them. */
export const SHADOW_ACCESS = { READ: 0x1, WRITE: 0x2 } as const;

/** IOVA pages [iovaPage, iovaPage + pages) backed by guest-physical pages [gpaPage, gpaPage + pages). */
export interface ShadowExtent {
  readonly iovaPage: number;
  readonly gpaPage: number;
  readonly pages: number;
  /** SHADOW_ACCESS bits. */
  readonly access: number;
}

/** What to send, in this order: every unmap names exactly a run that is mapped; no map overlaps a mapped run. */
export interface ShadowChanges {
  readonly unmap: ShadowExtent[];
  readonly map: ShadowExtent[];
}

export interface ShadowMappingsOptions {
  /**
   * Whether guest page `nextGpaPage` may share one DMA_MAP with the page before it: false where guest RAM changes
   * backing file (one DMA_MAP carries one fd). Default: always.
   */
  sameBacking?: (previousGpaPage: number, nextGpaPage: number) => boolean;
}

/**
 * Runs are kept maximal (two neighbours that could be one DMA_MAP are one), so a table is a pure function of the
 * page mappings it holds: re-syncing a range that did not change yields no messages at all.
 */
export class ShadowMappings {
  private runs: ShadowExtent[] = [];
  private readonly sameBacking: (previousGpaPage: number, nextGpaPage: number) => boolean;

  constructor(options: ShadowMappingsOptions = {}) {
    this.sameBacking = options.sameBacking ?? (() => true);
  }

  /** The runs in IOVA order. A snapshot: the table is replaced on each change, never edited in place, so it stays valid. */
  get extents(): readonly ShadowExtent[] {
    return this.runs;
  }

  get count(): number {
    return this.runs.length;
  }

  get pageCount(): number {
    let pages = 0;
    for (const run of this.runs) pages += run.pages;
    return pages;
  }

  /** The run holding `iovaPage`, if any. */
  lookup(iovaPage: number): ShadowExtent | undefined {
    const index = this.firstEndingAfter(iovaPage);
    const run = this.runs[index];
    return run !== undefined && run.iovaPage <= iovaPage ? run : undefined;
  }

  /**
   * Makes IOVA pages [firstPage, firstPage + pageCount) hold exactly `current` (runs in increasing IOVA order inside
   * that range; pages they do not cover become unmapped) and returns the messages that take a peer from the old
   * table to the new one.
   */
  update(firstPage: number, pageCount: number, current: Iterable<ShadowExtent>): ShadowChanges {
    const end = firstPage + pageCount;
    if (!Number.isSafeInteger(firstPage) || !Number.isSafeInteger(end) || firstPage < 0 || pageCount < 0) {
      throw new ViommuError(
        'ERR_VIOMMU_SHADOW_RANGE',
        `shadow update of ${pageCount} pages at page ${firstPage}: pages must be whole numbers from 0`,
      );
    }
    // Neighbours that merely touch the range are taken in too, so runs that become joinable are joined.
    const from = this.firstEndingAtOrAfter(firstPage);
    let to = from;
    while (to < this.runs.length && this.runs[to]!.iovaPage <= end) to++;
    const old = this.runs.slice(from, to);

    const wanted: ShadowExtent[] = [];
    const first = old[0];
    if (first !== undefined && first.iovaPage < firstPage)
      wanted.push(slice(first, first.iovaPage, Math.min(firstPage, first.iovaPage + first.pages)));
    let cursor = firstPage;
    for (const run of current) {
      if (run.pages <= 0) continue;
      if (run.iovaPage < cursor || run.iovaPage + run.pages > end) {
        throw new ViommuError(
          'ERR_VIOMMU_SHADOW_RANGE',
          `shadow run at page ${run.iovaPage} (+${run.pages}) is out of order or outside pages ${firstPage}..${end - 1}`,
        );
      }
      this.append(wanted, run);
      cursor = run.iovaPage + run.pages;
    }
    const last = old[old.length - 1];
    if (last !== undefined && last.iovaPage + last.pages > end)
      this.append(wanted, slice(last, Math.max(end, last.iovaPage), last.iovaPage + last.pages));

    // Not splice(from, n, ...wanted): a call takes its arguments on the stack, and a domain can hold a million runs.
    this.runs = this.runs.slice(0, from).concat(wanted, this.runs.slice(to));
    return difference(old, wanted);
  }

  /** Empties the table; the changes unmap every run. */
  clear(): ShadowChanges {
    const unmap = this.runs;
    this.runs = [];
    return { unmap, map: [] };
  }

  private append(runs: ShadowExtent[], run: ShadowExtent): void {
    const previous = runs[runs.length - 1];
    if (
      previous !== undefined &&
      previous.iovaPage + previous.pages === run.iovaPage &&
      previous.gpaPage + previous.pages === run.gpaPage &&
      previous.access === run.access &&
      this.sameBacking(run.gpaPage - 1, run.gpaPage)
    ) {
      runs[runs.length - 1] = { iovaPage: previous.iovaPage, gpaPage: previous.gpaPage, pages: previous.pages + run.pages, access: run.access };
    } else {
      runs.push(run);
    }
  }

  /** Index of the first run whose end is >= page. */
  private firstEndingAtOrAfter(page: number): number {
    let low = 0;
    let high = this.runs.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      const run = this.runs[middle]!;
      if (run.iovaPage + run.pages < page) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  private firstEndingAfter(page: number): number {
    return this.firstEndingAtOrAfter(page + 1);
  }
}

function slice(run: ShadowExtent, fromPage: number, toPage: number): ShadowExtent {
  return { iovaPage: fromPage, gpaPage: run.gpaPage + (fromPage - run.iovaPage), pages: toPage - fromPage, access: run.access };
}

function sameRun(a: ShadowExtent, b: ShadowExtent): boolean {
  return a.iovaPage === b.iovaPage && a.pages === b.pages && a.gpaPage === b.gpaPage && a.access === b.access;
}

/** Both lists are sorted by IOVA; runs present unchanged in both cost nothing. */
function difference(old: readonly ShadowExtent[], wanted: readonly ShadowExtent[]): ShadowChanges {
  const unmap: ShadowExtent[] = [];
  const map: ShadowExtent[] = [];
  let i = 0;
  let j = 0;
  while (i < old.length || j < wanted.length) {
    const a = old[i];
    const b = wanted[j];
    if (a !== undefined && b !== undefined && sameRun(a, b)) {
      i++;
      j++;
    } else if (b === undefined || (a !== undefined && a.iovaPage <= b.iovaPage)) {
      unmap.push(a!);
      i++;
    } else {
      map.push(b);
      j++;
    }
  }
  return { unmap, map };
}
