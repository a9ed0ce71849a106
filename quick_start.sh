#!/usr/bin/env bash
# The whole platform on this machine: a Prefect server (UI + API, SQLite under .comfybatch/), the served
# deployments and, when no ComfyUI is configured, a local CPU demo fleet with a tiny model; then a demo batch.
set -euo pipefail
cd "$(dirname "$0")"

case "${1:-}" in
  stop|status|logs|restart)
    scripts/bootstrap.sh
    exec .venv/bin/comfybatch "$@" ;;
  help|-h|--help)
    cat <<'USAGE'
./quick_start.sh [--port N] [--demo-servers N]   set up, bring the platform up, run a demo batch
./quick_start.sh status                          each component, each ComfyUI server's health and queue
./quick_start.sh logs                            the last lines of every log
./quick_start.sh restart | stop                  restart or stop what quick_start started (by pid)
Configure real servers with COMFYUI_URLS=http://gpu-a:8188,... or comfybatch.toml (see README.md).
USAGE
    exit 0 ;;
esac

scripts/bootstrap.sh
.venv/bin/comfybatch up --demo "$@"
.venv/bin/comfybatch demo
