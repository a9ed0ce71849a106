#!/usr/bin/env bash
# Idempotent set-up: the project venv (.venv) and the real test ComfyUI (cached per machine).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${COMFYBATCH_PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "comfybatch needs Python >= 3.11 (found $("$PYTHON" --version)); set COMFYBATCH_PYTHON" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.comfybatch-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing comfybatch and its dependencies into .venv" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi

# System packages the tests use: PostgreSQL (the production-database test) and Chromium (the dashboard
# page, driven by Playwright; never a browser download). Root installs them; others get a hint, and
# those tests skip (under CI=true they fail instead).
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing ${missing[*]} (Debian packages) for the tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[bootstrap] not installed: ${missing[*]} (sudo apt-get install ${missing[*]}): their tests will skip" >&2
  fi
fi

# ComfyUI 0.3.75 + CPU torch in their own venv under ~/.cache/comfybatch (once per machine).
.venv/bin/python -m comfybatch.local.install >/dev/null
