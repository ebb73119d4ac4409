#!/usr/bin/env bash
# The test command: set up (idempotent), lint, check the architecture contracts, run the default
# test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
venv="${AVINDEX_VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/lint-imports"  # the import contracts in pyproject.toml (docs/architecture.md)
set +e
"$venv/bin/python" -m pytest -m "not slow" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here, not a pass" >&2
  exit 1
fi
exit "$rc"
