/** Child entry for the probe CLI tests: the `viommu` program as bin/viommu.js runs it, with `probe` added if main lacks it. */
import { CommanderError } from 'commander';
import { buildProgram } from '../../../lib/cli/main';
import { registerProbeCommand } from '../../../lib/cli/probe';

const program = buildProgram();
if (!program.commands.some((command) => command.name() === 'probe')) registerProbeCommand(program);
program.parseAsync(process.argv).then(
  () => {
    process.exitCode = 0;
  },
  (error: unknown) => {
    if (error instanceof CommanderError) {
      process.exitCode = error.exitCode;
      return;
    }
    console.error(`viommu: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  },
);
