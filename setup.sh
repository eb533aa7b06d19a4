#!/usr/bin/env bash
# One script for every machine the appliance meets.
#
#   ./setup.sh demo [ARGS…]   set up (system packages, .venv) and run `appliance demo ARGS…`
#   ./setup.sh test [ARGS…]   set up with the test extras, lint, run the whole test suite
#   ./setup.sh dev            set up only (the .venv with test extras), print how to use it
#
# Idempotent: the second run only checks that nothing changed (a stamp keyed by the
# hash of pyproject.toml and this script) and is quick.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

VENV="${APPLIANCE_VENV:-$here/.venv}"
PYTHON="${PYTHON:-python3}"
# System libraries the Python packages cannot bring themselves: PortAudio for sounddevice,
# espeak-ng for the speech fallback and the simulated callers, ALSA tools for diagnostics.
APT_PACKAGES=(libportaudio2 espeak-ng alsa-utils python3-venv)

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31msetup: %s\033[0m\n' "$*" >&2; exit 1; }

missing_apt_packages() {
    local pkg missing=()
    command -v dpkg-query >/dev/null 2>&1 || return 0   # not Debian: nothing we can check
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    echo "${missing[@]:-}"
}

ensure_system_packages() {
    local missing
    missing="$(missing_apt_packages)"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        say "installing system packages: $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        die "missing system packages: $missing
       run:  sudo apt-get update && sudo apt-get install -y $missing
       then run this command again."
    fi
}

ensure_venv() {
    local extras="$1" stamp want
    stamp="$VENV/.setup-stamp"
    want="$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)-$extras"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    say "installing the appliance into $VENV (extras: ${extras:-none}) — first time takes a minute"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    if [ -n "$extras" ]; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
    else
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
    fi
    echo "$want" >"$stamp"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        ensure_system_packages
        ensure_venv ""
        exec "$VENV/bin/appliance" demo "$@"
        ;;
    test)
        ensure_system_packages
        ensure_venv "test"
        say "ruff check"
        "$VENV/bin/ruff" check appliance tests
        say "pytest"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    dev)
        ensure_system_packages
        ensure_venv "test"
        say "ready: . $VENV/bin/activate  (then: appliance --help, pytest)"
        ;;
    ""|-h|--help|help)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$cmd' (try: ./setup.sh --help)"
        ;;
esac
