/**
 * The legacy-mode DMA scenario's guest steps, shared by the QEMU differential test and the `--device-socket` test.
 * Offsets are spelled out as a guest driver would, independent of our register tables, on purpose: the scenario
 * checks the model, so it must not borrow the model's numbers.
 */
import type { QtestPeer } from '../../lib/vmm/qtest/client';

export const DMAR = 0xfed90000;
export const EDU = 0xfe000000;
const ROOT = 0x100000;
const CONTEXT = 0x101000;
const LEVEL3 = 0x102000;
const LEVEL2 = 0x103000;
const LEVEL1 = 0x104000;
const READ = 1n;
const WRITE = 2n;

/** Places edu's BAR0 at EDU and turns on memory decoding and bus mastering. */
export async function enableEdu(peer: QtestPeer): Promise<void> {
  await peer.outl(0xcf8, 0x80002010);
  await peer.outl(0xcfc, EDU);
  await peer.outl(0xcf8, 0x80002004);
  await peer.outw(0xcfc, 0x6);
}

/** A guest driver's legacy-mode bring-up: one 3-level domain for 00:04.0 with a read-write and a read-only page. */
export async function programUnit(peer: QtestPeer): Promise<void> {
  await peer.writeq(ROOT, BigInt(CONTEXT) | 1n);
  await peer.writeq(CONTEXT + 0x20 * 16, BigInt(LEVEL3) | 1n);
  await peer.writeq(CONTEXT + 0x20 * 16 + 8, 1n | (5n << 8n)); // AW 1 (3 levels), DID 5
  await peer.writeq(LEVEL3, BigInt(LEVEL2) | READ | WRITE);
  await peer.writeq(LEVEL2 + 8, BigInt(LEVEL1) | READ | WRITE); // IOVA 0x200000..0x3fffff
  await peer.writeq(LEVEL1, 0x300000n | READ | WRITE); // IOVA 0x200000 -> GPA 0x300000
  await peer.writeq(LEVEL1 + 8, 0x301000n | READ); // IOVA 0x201000 -> GPA 0x301000, read-only
  await peer.writeq(DMAR + 0x20, BigInt(ROOT));
  await peer.writel(DMAR + 0x18, 0x40000000); // SRTP
  await peer.writeq(DMAR + 0x28, 0xa000000000000000n); // global context invalidation
  await peer.writeq(DMAR + 0xf8, 0x9000000000000000n); // global IOTLB invalidation
  await peer.writel(DMAR + 0x18, 0x80000000); // TE
}

/** Starts an edu transfer and polls its run bit, as guests do (QEMU runs it from a timer). */
export async function eduDma(peer: QtestPeer, source: bigint, destination: bigint, count: bigint, toRam: boolean): Promise<void> {
  await peer.writeq(EDU + 0x80, source);
  await peer.writeq(EDU + 0x88, destination);
  await peer.writeq(EDU + 0x90, count);
  // A device whose BAR is not decoded reads 0 everywhere, its run bit included: the poll below would see "done".
  const countBack = await peer.readq(EDU + 0x90);
  if (countBack !== count)
    throw new Error(`${peer.name}: the edu device does not answer (DMA count reads back 0x${countBack.toString(16)}): is its BAR enabled?`);
  await peer.writeq(EDU + 0x98, toRam ? 3n : 1n);
  for (let attempt = 0; attempt < 500; attempt++) {
    if (((await peer.readq(EDU + 0x98)) & 1n) === 0n) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`${peer.name}: edu DMA did not finish`);
}

export const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');
