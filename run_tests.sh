#!/usr/bin/env bash
# Set up what is missing, then run the whole suite (unit, real ComfyUI servers, faults).
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
