#!/usr/bin/env bash
# Set up (Debian 12, root) and run the whole test suite. Extra arguments go to pytest.
# The suite runs on the compiled build that setup.sh makes; SIPFLEET_PURE=1 runs it from source.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check src tests bench scripts
.venv/bin/mypy
if [[ -z ${SIPFLEET_PURE:-} ]]; then
  export SIPFLEET_EXPECT_COMPILED=1  # tests/test_native.py fails if the build is not used
  if (($# == 0)); then
    # The compiled modules' own tests once more from source: both must behave alike.
    SIPFLEET_PURE=1 .venv/bin/python -m pytest -q tests/sip tests/core/test_stateless.py \
      tests/core/proxy tests/core/lb tests/routing/test_nat.py tests/transport/test_sockets.py \
      tests/core/test_registrar.py tests/core/test_registrar_overload.py \
      tests/core/test_overload.py tests/core/test_overload_control.py tests/core/test_answered.py
  fi
fi
# Two workers (pytest-xdist): most of the suite waits on processes, timers and NATs, so
# two cores run it in about 11 minutes instead of 18. --dist loadfile keeps a module's
# tests, and the cluster its module-scoped fixture starts, in one worker.
exec .venv/bin/python -m pytest -n "${SIPFLEET_TEST_WORKERS:-2}" --dist loadfile "$@"
