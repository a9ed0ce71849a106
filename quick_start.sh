#!/usr/bin/env bash
# Set up, then render with comfybatch: on a local CPU ComfyUI with a tiny demo model unless --server is given.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/comfybatch demo "$@"
