/**
 * HostCompletion: holds the unit's architectural completions (a wait descriptor's status write, CCMD.ICC and
 * IOTLB.IVT clearing, GSTS.RTPS and TES) while host backends are still applying what an invalidation told them.
 */

/** Work a host backend has outstanding: a promise of its completion, or undefined when it is idle. */
export type HostPending = () => Promise<void> | undefined;

export class HostCompletion {
  private pending: HostPending | undefined;
  /** Bumped by reset: completions held from before it must not land in the state after it. */
  private generation = 0;

  /** From now on, completions wait for `pending` (a shadow backend's outstanding DMA_MAP/UNMAPs, say). */
  follow(pending: HostPending | undefined): void {
    this.pending = pending;
  }

  /** True when a host backend is still applying earlier work: completions made now would be premature. */
  get busy(): boolean {
    return this.outstanding() !== undefined;
  }

  /**
   * Runs `complete` at once when no host work is outstanding, else once it is done (unless the unit was reset
   * meanwhile). Returns true when it ran at once.
   */
  whenSettled(complete: () => void): boolean {
    const outstanding = this.outstanding();
    if (outstanding === undefined) {
      complete();
      return true;
    }
    const generation = this.generation;
    // A backend whose work fails still settles: its own error reports say what the device lacks.
    const land = (): void => {
      if (generation === this.generation) complete();
    };
    outstanding.then(land, land);
    return false;
  }

  reset(): void {
    this.generation++;
  }

  private outstanding(): Promise<void> | undefined {
    return this.pending?.();
  }
}
