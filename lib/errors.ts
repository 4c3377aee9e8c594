/** Typed errors for programmer mistakes: each carries a stable code and a message that says what to do. */

export class ViommuError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ViommuError';
  }
}

/** A guest-physical access that no RAM region backs (or a write to a read-only region). */
export class GuestMemoryError extends ViommuError {
  constructor(
    code: 'ERR_GUEST_MEMORY_UNMAPPED' | 'ERR_GUEST_MEMORY_READ_ONLY' | 'ERR_GUEST_MEMORY_RANGE',
    message: string,
    readonly address: number,
    readonly length: number,
  ) {
    super(code, message);
    this.name = 'GuestMemoryError';
  }
}
