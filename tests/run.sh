#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run the whole suite.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL server binaries: the sink tests start a throwaway cluster of their own.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Lint, format and types first: a finding fails CI like a failing test (settings in pyproject.toml).
.venv/bin/ruff check daemon tests bench
.venv/bin/ruff format --check daemon tests bench
.venv/bin/mypy
# Three workers on two cores: most of the time goes to waiting (daemons, a throwaway PostgreSQL, the
# emulators' rate limits). A file's tests stay on one worker (some follow on from the one before).
exec .venv/bin/python -m pytest -n 3 --dist loadfile "$@"
