/** The errno table: the kernel's numbers (checked against Node and the installed headers), lookups both ways. */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import fc from 'fast-check';
import { ERRNO, ERRNO_TABLE, errnoName, errnoNumber, isErrnoName } from '../lib/errno';

const HEADERS = ['/usr/include/asm-generic/errno-base.h', '/usr/include/asm-generic/errno.h'];

/** `#define ENAME 22` and `#define EALIAS ENAME` lines of the kernel's uapi headers, resolved to numbers. */
function headerNumbers(texts: readonly string[]): Map<string, number> {
  const numbers = new Map<string, number>();
  for (const [, name, value] of texts.join('\n').matchAll(/^#define\s+(E[A-Z0-9]+)\s+(\w+)/gm)) {
    numbers.set(name!, /^\d+$/.test(value!) ? Number(value) : numbers.get(value!)!);
  }
  return numbers;
}

describe('errno', () => {
  it("matches Node's numbers for every name Node knows (on Linux, where Node's numbers are the kernel's)", function () {
    if (process.platform !== 'linux') this.skip();
    const nodeNumbers = Object.entries(osConstants.errno);
    assert.ok(nodeNumbers.length > 70, 'Node lists its errnos');
    for (const [name, number] of nodeNumbers) assert.equal(errnoNumber(name), number, name);
  });

  it('matches the kernel uapi headers name for name, aliases included, where they are installed', function () {
    if (!HEADERS.every((path) => existsSync(path))) this.skip();
    const fromHeaders = headerNumbers(HEADERS.map((path) => readFileSync(path, 'utf8')));
    const ours = Object.entries(ERRNO).filter(([name]) => name !== 'ENOTSUP');
    assert.deepEqual(new Map(ours), fromHeaders);
  });

  it('names each number once and reads every name back to its number', () => {
    for (const [name, number] of Object.entries(ERRNO_TABLE.values)) {
      assert.equal(errnoName(number), name);
      assert.equal(errnoName(-number), name, 'negative results name the same errno');
      assert.equal(ERRNO[name as keyof typeof ERRNO], number);
    }
  });

  it('gives aliases the number of the name they stand for, and reports that number by its kernel name', () => {
    assert.equal(ERRNO.EWOULDBLOCK, ERRNO.EAGAIN);
    assert.equal(ERRNO.EDEADLOCK, ERRNO.EDEADLK);
    assert.equal(ERRNO.ENOTSUP, ERRNO.EOPNOTSUPP);
    assert.equal(errnoName(ERRNO.ENOTSUP), 'EOPNOTSUPP');
    assert.equal(errnoName(11), 'EAGAIN');
  });

  it('says "errno N" for numbers without a name, and knows only errno names as names', () => {
    assert.equal(errnoName(0), 'errno 0');
    assert.equal(errnoName(41), 'errno 41', '41 has no name: EWOULDBLOCK sits there in the header but is EAGAIN');
    assert.equal(errnoName(-200), 'errno 200');
    for (const notAName of ['toString', 'constructor', '__proto__', 'EADDRINUSE ', 'einval', 'ERR_BYTE_LAYOUT']) {
      assert.equal(isErrnoName(notAName), false, notAName);
      assert.equal(errnoNumber(notAName), undefined, notAName);
    }
    fc.assert(
      fc.property(
        fc.integer({ min: 134, max: 0x7fffffff }),
        (number) => errnoName(number) === `errno ${number}` && errnoName(-number) === `errno ${number}`,
      ),
    );
  });

  it('cannot be changed at run time', () => {
    assert.ok(Object.isFrozen(ERRNO));
    assert.throws(() => {
      (ERRNO as Record<string, number>).EINVAL = 1;
    }, TypeError);
  });
});
