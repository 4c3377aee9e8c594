/** A stand-in for `viommu qtest`: serves qtest on stdin/stdout over a RAM machine dressed with QEMU's smoke values. */
import { QtestServer } from '../../lib/vmm/qtest/server';
import { smokeMachine } from '../vmm/ram-machine';

// Usage: node fake-qtest-child.js [--iommu PROPS]. Only the props that change CAP/ECAP in the smoke test matter.
function main(argv: readonly string[]): void {
  const propsIndex = argv.indexOf('--iommu');
  const props = propsIndex >= 0 ? (argv[propsIndex + 1] ?? '').split(',') : [];
  const cap = props.includes('aw-bits=48') ? 0x00d2008c222f0606n : 0x00d2008c22260206n;
  const ecap = props.includes('x-scalable-mode=on') ? 0x480080f00f4an : 0xf00f4an;
  const server = new QtestServer(smokeMachine(cap, ecap), process.stdin, process.stdout, { endOutputWhenInputEnds: true });
  void server.closed.then(() => process.exit(0));
}

main(process.argv.slice(2));
