#!/usr/bin/env bash
# Set up (Debian 12, root) and start the embedded default cluster. Arguments go to `sipfleet up`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/sipfleet up "$@"
