/** The exit code a command chose for itself (smoke follows its guest's status), for main() to return instead of 0. */
let chosen: number | undefined;

export function setCommandExitCode(code: number): void {
  chosen = code;
}

/** The chosen code, once: the next command run in this process starts without one. */
export function takeCommandExitCode(): number | undefined {
  const code = chosen;
  chosen = undefined;
  return code;
}
