#!/usr/bin/env node
'use strict';
// A reader that stops early (`viommu demo | head`) is not an error: leave quietly, as other command-line tools do.
process.stdout.on('error', (error) => {
  if (error && error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw error;
});
require('../dist/lib/cli/main.js')
  .main(process.argv)
  .then(
    (code) => {
      process.exitCode = code;
    },
    (error) => {
      console.error(`viommu: ${error && error.message ? error.message : error}`);
      process.exitCode = 1;
    },
  );
