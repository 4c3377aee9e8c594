/** Test helpers for the vfio-user codec: raw message building, field patching and protocol-error assertions. */

import assert from 'node:assert/strict';
import { encodeHeader } from '../../lib/vfio-user/codec';
import { VfioUserProtocolError, type VfioUserProtocolErrorCode } from '../../lib/vfio-user/errors';
import { writeField, type FieldOf, type FieldSpec, type IntegerKey, type IntegerValue, type StructShape } from '../../lib/byte-layout';
import { HEADER_LAYOUT, HEADER_SIZE } from '../../lib/vfio-user/protocol';

export interface RawMessage {
  command: number;
  flags?: number;
  payload?: Uint8Array;
  msgId?: number;
  error?: number;
  /** msg_size to write; defaults to the real size. */
  messageSize?: number;
}

/** Builds message bytes by hand, bypassing the encoder, so tests can say things the encoder never would. */
export function rawMessage(message: RawMessage): Uint8Array {
  const payload = message.payload ?? new Uint8Array(0);
  const header = encodeHeader({
    msgId: message.msgId ?? 1,
    command: message.command,
    messageSize: message.messageSize ?? HEADER_SIZE + payload.length,
    flags: message.flags ?? 0,
    error: message.error ?? 0,
  });
  const bytes = new Uint8Array(HEADER_SIZE + payload.length);
  bytes.set(header);
  bytes.set(payload, HEADER_SIZE);
  return bytes;
}

/**
 * A copy of `bytes` with one integer field of a struct (at `structAt`) set to `value`, reserved fields included.
 * The key and the value's type are the layout's own; a value the field cannot hold throws.
 */
export function patchField<F extends readonly FieldSpec[], K extends IntegerKey<F>>(
  bytes: Uint8Array,
  layout: StructShape<F>,
  key: K,
  value: IntegerValue<FieldOf<F, K>>,
  structAt: number,
): Uint8Array {
  const copy = bytes.slice();
  writeField(layout, copy, key, value, structAt);
  return copy;
}

/** Patches a payload field of a whole message (the struct starts `structAt` bytes into the payload). */
export function patchPayload<F extends readonly FieldSpec[], K extends IntegerKey<F>>(
  message: Uint8Array,
  layout: StructShape<F>,
  key: K,
  value: IntegerValue<FieldOf<F, K>>,
  structAt = 0,
): Uint8Array {
  return patchField(message, layout, key, value, HEADER_SIZE + structAt);
}

export function patchHeader<K extends IntegerKey<typeof HEADER_LAYOUT.fields>>(
  message: Uint8Array,
  key: K,
  value: IntegerValue<FieldOf<typeof HEADER_LAYOUT.fields, K>>,
): Uint8Array {
  return patchField(message, HEADER_LAYOUT, key, value, 0);
}

export function expectProtocolError(run: () => unknown, code: VfioUserProtocolErrorCode, errno: number): VfioUserProtocolError {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof VfioUserProtocolError, `expected VfioUserProtocolError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.equal(error.errno, errno);
    assert.ok(error.message.length > 0);
    return error;
  }
  assert.fail(`expected ${code}, but nothing was thrown`);
}

export function fromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

/**
 * A deep copy with ordinary prototypes: fast-check builds records with a null prototype, which deepStrictEqual
 * tells apart from the decoder's plain objects although they mean the same.
 */
export function plain<T>(value: T): T {
  if (Array.isArray(value)) return value.map(plain) as T;
  if (value instanceof Uint8Array || value === null || typeof value !== 'object') return value;
  return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, plain(inner)])) as T;
}
