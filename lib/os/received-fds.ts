/** ReceivedFds: the fds that arrived with one message; whatever nobody claims is closed after dispatch. */
import type { FileDescriptor } from '../native';
import { ViommuError } from '../errors';

export class ReceivedFds {
  private readonly slots: (FileDescriptor | undefined)[];

  constructor(fds: FileDescriptor[]) {
    this.slots = [...fds];
  }

  get count(): number {
    return this.slots.length;
  }

  /** Takes ownership of fd `index`: the caller must close it (or hand it on). */
  take(index: number): FileDescriptor {
    const fd = this.slots[index];
    if (fd === undefined) {
      throw new ViommuError('ERR_FD_UNAVAILABLE', `fd ${index} of ${this.slots.length} received was already taken or does not exist`);
    }
    this.slots[index] = undefined;
    return fd;
  }

  takeAll(): FileDescriptor[] {
    return this.slots.map((_, index) => this.take(index));
  }

  /** What each unclaimed fd is, for logs and probes. */
  describe(): string[] {
    return this.slots.map((fd) => (fd === undefined ? 'taken' : fd.describe()));
  }

  /** Closes every fd nobody took; returns how many. */
  closeUnclaimed(): number {
    let closed = 0;
    for (let index = 0; index < this.slots.length; index++) {
      const fd = this.slots[index];
      if (fd !== undefined) {
        fd.close();
        this.slots[index] = undefined;
        closed++;
      }
    }
    return closed;
  }
}
