/** Test helper: every register of the DMAR window as a peer reads it, for comparing two peers after the same steps. */
import type { QtestPeer } from '../../lib/vmm/qtest/client';
import { DMAR_BASE } from '../../lib/vmm/testbed';

/** 32-bit registers of the window (0x00..0x100) plus the IOTLB pair and the first fault record, read as 64 bits. */
const DWORD_OFFSETS = Array.from({ length: 0x100 / 4 }, (_, i) => i * 4);
const QWORD_OFFSETS = [0x08, 0x10, 0x20, 0x28, 0x80, 0x88, 0x90, 0xb8, 0xf0, 0xf8, 0x220, 0x228];

/** Each register's value, keyed by the qtest read that fetched it. */
export async function readAllRegisters(peer: QtestPeer): Promise<Map<string, bigint>> {
  const values = new Map<string, bigint>();
  for (const offset of DWORD_OFFSETS) values.set(`readl 0x${offset.toString(16)}`, BigInt(await peer.readl(DMAR_BASE + offset)));
  for (const offset of QWORD_OFFSETS) values.set(`readq 0x${offset.toString(16)}`, await peer.readq(DMAR_BASE + offset));
  return values;
}
