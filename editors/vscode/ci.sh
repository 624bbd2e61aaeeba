#!/usr/bin/env bash
# Builds the VS Code extension and runs its unit tests, from a clean install of the
# locked dependencies. Called by `scripts/dev test` and CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm ci --no-audit --no-fund
npm run compile
npm test
