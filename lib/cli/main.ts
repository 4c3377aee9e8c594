/** The `viommu` command line: parses arguments (commander) and dispatches to subcommands. */
import { Command, CommanderError } from 'commander';
import { registerDemoCommand } from './demo';
import { registerExplainCommand } from './explain';
import { takeCommandExitCode } from './exit-code';
import { registerProbeCommand } from './probe';
import { registerQtestCommand } from './qtest';
import { registerServeCommand } from './serve';
import { registerSmokeCommand } from './smoke';

// eslint-disable-next-line @typescript-eslint/no-require-imports -- package.json sits outside rootDir, so it cannot be imported
const packageVersion: string = (require('../../../package.json') as { version: string }).version;

/** Builds the command tree; subcommands register themselves here as they are implemented. */
export function buildProgram(): Command {
  const program = new Command('viommu')
    .description('An emulated Intel VT-d IOMMU for JavaScript VMMs, with a vfio-user transport')
    .version(packageVersion)
    .exitOverride()
    .showHelpAfterError();
  registerDemoCommand(program);
  registerQtestCommand(program);
  registerProbeCommand(program);
  registerServeCommand(program);
  registerSmokeCommand(program);
  registerExplainCommand(program);
  return program;
}

/** Runs the CLI; resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    takeCommandExitCode();
    await program.parseAsync(argv);
    return takeCommandExitCode() ?? 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode;
    throw error;
  }
}
