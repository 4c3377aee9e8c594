/** EventFd: a kernel event counter that another process can signal (vfio-user IRQs) and the event loop can watch. */
import { native, type FileDescriptor, type NativeFdWatch } from '../native';

export class EventFd {
  private watcher: NativeFdWatch | undefined;

  /** Wraps an eventfd (e.g. one received with SET_IRQS); takes ownership of `fd`. */
  constructor(readonly fd: FileDescriptor) {}

  static create(initial = 0, options: { semaphore?: boolean } = {}): EventFd {
    return new EventFd(native.eventfdCreate(initial, options.semaphore ?? false));
  }

  /** Adds `count` to the counter; false when the counter is saturated (the event is pending anyway). */
  signal(count = 1): boolean {
    return native.eventfdWrite(this.fd, count);
  }

  /** Takes the pending count (0 when none). */
  read(): number {
    return native.eventfdRead(this.fd);
  }

  /** Calls `onSignal(count)` each time the counter becomes non-zero; the count is consumed. */
  watch(onSignal: (count: number) => void): void {
    this.unwatch();
    this.watcher = new native.FdWatch(this.fd, () => {
      const count = this.read();
      if (count > 0) onSignal(count);
    });
  }

  unwatch(): void {
    this.watcher?.stop();
    this.watcher = undefined;
  }

  get closed(): boolean {
    return this.fd.closed;
  }

  close(): void {
    this.unwatch();
    this.fd.close();
  }
}
