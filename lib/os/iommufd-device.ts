/**
 * IommufdDevice: a real /dev/iommu and the VFIO device cdevs bound to it, driven through the generic ioctl addon.
 * It fits lib/host's IommufdChannel by shape (os/ sits below host/ and imports nothing from it).
 */
import * as fs from 'node:fs';
import { readU32 } from '../byte-layout';
import { ERRNO, errnoNumber } from '../errno';
import { ViommuError } from '../errors';
import { native, nativeIoctl, type FileDescriptor, type NativeIoctlAddon } from '../native';

export const IOMMUFD_DEVICE_PATH = '/dev/iommu';
/** An fd out field is a u32. */
const FD_FIELD_BYTES = 4;

/** What one ioctl call may carry besides the struct: see IommufdChannel's IoctlOptions. */
export interface IommufdIoctlOptions {
  readonly device?: number;
  readonly payloads?: readonly { readonly offset: number; readonly buffer: Uint8Array }[];
  readonly outFds?: readonly number[];
}

/** The addon pieces this module uses, injectable so tests can stand in for the kernel. */
export interface IommufdDeviceAddon {
  readonly ioctl: NativeIoctlAddon;
  adoptFd(fd: number): FileDescriptor;
}

function defaultAddon(): IommufdDeviceAddon {
  return { ioctl: nativeIoctl(), adoptFd: (fd) => native.adoptFd(fd) };
}

/** -errno for an error Node's fs threw (its `code` names the errno). */
function negativeErrno(error: unknown): number {
  const code = (error as { code?: string }).code;
  const errno = code === undefined ? undefined : errnoNumber(code);
  if (errno === undefined) throw error;
  return -errno;
}

export class IommufdDevice {
  private readonly cdevs = new Map<number, FileDescriptor>();
  private readonly kernelFds = new Map<number, FileDescriptor>();
  private nextCdev = 1;

  private constructor(
    private readonly file: FileDescriptor,
    private readonly addon: IommufdDeviceAddon,
  ) {}

  /** Opens the iommufd (default /dev/iommu); throws the SystemCallError of open (ENOENT without iommufd). */
  static open(path = IOMMUFD_DEVICE_PATH, addon: IommufdDeviceAddon = defaultAddon()): IommufdDevice {
    return new IommufdDevice(addon.adoptFd(addon.ioctl.openDevice(path)), addon);
  }

  /** Whether this machine has an iommufd to open (no probe ioctl: existence only). */
  static available(path = IOMMUFD_DEVICE_PATH): boolean {
    return fs.existsSync(path);
  }

  get iommufd(): number {
    return this.file.fd;
  }

  /** Opens a VFIO device cdev (e.g. /dev/vfio/devices/vfio0) and returns the handle ioctl's `device` takes. */
  openVfioDevice(path: string): number {
    const fd = this.addon.adoptFd(this.addon.ioctl.openDevice(path));
    const handle = this.nextCdev++;
    this.cdevs.set(handle, fd);
    return handle;
  }

  ioctl(request: number, argument: Uint8Array, options: IommufdIoctlOptions = {}): number {
    const target = options.device === undefined ? this.file : this.cdevs.get(options.device);
    if (!target || target.closed) return -ERRNO.EBADF;
    const outFds = options.outFds ?? [];
    // Checked before the kernel makes an fd: a u32 read past the argument's end would read 0 and adopt stdin.
    const misplaced = outFds.find((offset) => !(Number.isInteger(offset) && offset >= 0 && offset + FD_FIELD_BYTES <= argument.length));
    if (misplaced !== undefined) {
      throw new ViommuError(
        'ERR_IOMMUFD_OUT_FD',
        `out fd offset ${misplaced} is not a u32 inside the ${argument.length}-byte argument; pass the offsets of the struct's fd fields`,
      );
    }
    const result = this.addon.ioctl.ioctl(target.fd, request, argument, options.payloads ?? []);
    if (result >= 0) {
      for (const offset of outFds) {
        const fd = this.addon.adoptFd(readU32(argument, offset));
        this.kernelFds.set(fd.fd, fd);
      }
    }
    return result;
  }

  readFaults(faultFd: number, into: Uint8Array): number {
    const fd = this.kernelFds.get(faultFd);
    if (!fd || fd.closed) return -ERRNO.EBADF;
    try {
      return fs.readSync(fd.fd, into, 0, into.length, null);
    } catch (error) {
      return negativeErrno(error);
    }
  }

  writeFaultResponses(faultFd: number, bytes: Uint8Array): number {
    const fd = this.kernelFds.get(faultFd);
    if (!fd || fd.closed) return -ERRNO.EBADF;
    try {
      return fs.writeSync(fd.fd, bytes, 0, bytes.length, null);
    } catch (error) {
      return negativeErrno(error);
    }
  }

  /** Closes the cdevs, the fds the kernel handed over, then the iommufd (which frees every object in it). */
  close(): void {
    for (const fd of [...this.cdevs.values(), ...this.kernelFds.values()]) fd.close();
    this.cdevs.clear();
    this.kernelFds.clear();
    this.file.close();
  }
}
