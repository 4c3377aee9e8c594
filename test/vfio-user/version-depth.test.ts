/** Deeply nested VERSION JSON: a protocol error (EINVAL, naming the depth), never a stack overflow or EIO. */

import assert from 'node:assert/strict';
import { decodeHeader, encodeCommand } from '../../lib/vfio-user/codec';
import { VfioUserConnection } from '../../lib/vfio-user/connection';
import { ERRNO } from '../../lib/errno';
import { HEADER_FLAGS, MESSAGE_TYPES, PROTOCOL_VERSION } from '../../lib/vfio-user/protocol';
import { MAX_VERSION_JSON_DEPTH, parseVersionCapabilities } from '../../lib/vfio-user/version';
import { InMemoryTransport } from '../../lib/vfio-user/transport';
import { serveVersion } from '../../lib/vfio-user/negotiation';
import { expectProtocolError } from './helpers';

/** Far past any stack: JSON.stringify of it (or a recursive parser) overflows. */
const VERY_DEEP = 200_000;

function nested(depth: number, inner = '1'): string {
  return '['.repeat(depth) + inner + ']'.repeat(depth);
}

function versionCommand(msgId: number, json: string): Uint8Array {
  return encodeCommand(msgId, { command: 'VERSION', major: PROTOCOL_VERSION.major, minor: PROTOCOL_VERSION.minor, json, capabilities: {} });
}

describe('VERSION JSON nesting depth', () => {
  it('refuses nesting past the limit with ERR_VFIO_USER_BAD_VERSION_DATA and EINVAL, naming the depth', () => {
    for (const json of [
      nested(VERY_DEEP),
      `{"capabilities":${nested(VERY_DEEP)}}`,
      `{"capabilities":{"future":${nested(VERY_DEEP)}}}`,
      `{"x":${'{"x":'.repeat(VERY_DEEP)}1${'}'.repeat(VERY_DEEP)}}`,
    ]) {
      const error = expectProtocolError(() => parseVersionCapabilities(json), 'ERR_VFIO_USER_BAD_VERSION_DATA', ERRNO.EINVAL);
      assert.match(error.message, new RegExp(`nest.*deeper than ${MAX_VERSION_JSON_DEPTH}`));
    }
  });

  it('accepts nesting up to the limit, and does not count brackets inside strings', () => {
    const atLimit = `{"capabilities":{"max_msg_fds":4,"future":${nested(MAX_VERSION_JSON_DEPTH - 2)}}}`;
    assert.deepEqual(parseVersionCapabilities(atLimit), { maxMsgFds: 4 });
    expectProtocolError(
      () => parseVersionCapabilities(`{"capabilities":{"future":${nested(MAX_VERSION_JSON_DEPTH - 1)}}}`),
      'ERR_VFIO_USER_BAD_VERSION_DATA',
      ERRNO.EINVAL,
    );
    const bracketsInStrings = `{"capabilities":{"max_msg_fds":2,"note":"${'[{'.repeat(VERY_DEEP)}\\"[["}}`;
    assert.deepEqual(parseVersionCapabilities(bracketsInStrings), { maxMsgFds: 2 });
  });

  it('keeps error messages short when the wrong value is a large one', () => {
    const error = expectProtocolError(
      () => parseVersionCapabilities(`{"capabilities":{"max_msg_fds":"${'x'.repeat(100_000)}"}}`),
      'ERR_VFIO_USER_BAD_VERSION_DATA',
      ERRNO.EINVAL,
    );
    assert.ok(error.message.length < 300, `a ${error.message.length}-character message`);
  });

  it('answers a deeply nested VERSION with EINVAL and then negotiates normally', async () => {
    const [clientSide, serverSide] = InMemoryTransport.pair();
    const server = new VfioUserConnection(serverSide, { role: 'server' });
    serveVersion(server);
    const handlerErrors: unknown[] = [];
    server.on('handlerError', (error) => handlerErrors.push(error));
    const answers: { msgId: number; flags: number; error: number }[] = [];
    clientSide.on('message', (bytes) => {
      const header = decodeHeader(bytes);
      answers.push({ msgId: header.msgId, flags: header.flags, error: header.error });
    });
    try {
      const reply = MESSAGE_TYPES.values.REPLY;
      clientSide.send(versionCommand(1, `{"capabilities":{"future":${nested(VERY_DEEP)}}}`));
      clientSide.send(versionCommand(2, nested(VERY_DEEP)));
      clientSide.send(versionCommand(3, '{"capabilities":{"max_msg_fds":4}}'));
      const deadline = Date.now() + 5000;
      while (answers.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1));
      assert.deepEqual(answers, [
        { msgId: 1, flags: reply | HEADER_FLAGS.bits.ERROR, error: ERRNO.EINVAL },
        { msgId: 2, flags: reply | HEADER_FLAGS.bits.ERROR, error: ERRNO.EINVAL },
        { msgId: 3, flags: reply, error: 0 },
      ]);
      assert.deepEqual(handlerErrors, [], 'no untyped error reached the connection');
      assert.equal(server.peerCapabilities.maxMsgFds, 4);
    } finally {
      server.close();
      clientSide.close();
    }
  });
});
