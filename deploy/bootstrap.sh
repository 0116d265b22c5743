#!/usr/bin/env bash
# Set everything up on a fresh machine, then run the demo or the tests.
#
#   bash deploy/bootstrap.sh demo     # set up, then build the demo models and run the demo
#   bash deploy/bootstrap.sh test     # set up, then run the linters and the whole test suite
#   bash deploy/bootstrap.sh setup    # set up only
#
# Idempotent: a second run reuses the virtual environment and installs only what is missing.
# torch is pinned to the CPU build *before* the project is installed, so that no multi-GB
# CUDA build is pulled on a CPU machine. Set MONITOR_VENV to use another environment folder.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV=${MONITOR_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
TORCH_PIN=${MONITOR_TORCH_PIN:-torch==2.13.0}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { printf '[bootstrap] %s\n' "$*" >&2; }

apt_packages() {
    # Services the tests use for real: PostgreSQL (storage tests), Prometheus and promtool (metrics tests),
    # and Chromium (the HTML report's charts are drawn in a headless browser).
    local missing=()
    command -v pg_ctlcluster >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "cannot install ${missing[*]} (needs root and apt-get); the tests that need them will be skipped"
        return 0
    fi
    log "installing ${missing[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The Debian package starts services of its own; the tests start private servers instead.
    service postgresql stop >/dev/null 2>&1 || true
    service prometheus stop >/dev/null 2>&1 || true
    service prometheus-alertmanager stop >/dev/null 2>&1 || true
}

python_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtual environment $VENV"
        "$PY" -m venv "$VENV"
    fi
    local pip=("$VENV/bin/python" -m pip install -q)
    if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${TORCH_PIN#torch==}' else 1)" 2>/dev/null; then
        log "installing $TORCH_PIN (CPU build) first"
        "${pip[@]}" "$TORCH_PIN" 2>&1 | grep -v "^WARNING: Location" || true
    fi
    log "installing the project and its development tools"
    "${pip[@]}" -e "$ROOT[dev]" 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import monitor, torch, transformers, peft, lm_eval" \
        || { log "the Python environment is incomplete"; exit 1; }
}

run_tests() {
    if [ "${CI:-}" = "true" ]; then
        # In CI a missing server is a broken image, not a reason to skip.
        export MONITOR_TEST_POSTGRES_REQUIRED=1 MONITOR_TEST_PROMETHEUS_REQUIRED=1
    fi
    log "ruff"
    "$VENV/bin/ruff" check monitor tests benchmarks
    "$VENV/bin/ruff" format --check monitor tests benchmarks
    log "mypy"
    "$VENV/bin/mypy" monitor
    # torch on one thread: the test models are tiny, and two OpenMP threads fight on a loaded 2-core box.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    log "pytest (the full demo build is marked slow: bash deploy/bootstrap.sh test -m slow runs it)"
    if [ $# -eq 0 ]; then set -- -m "not slow"; fi
    "$VENV/bin/python" -m pytest "$@"
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) apt_packages; python_env ;;
    test) apt_packages; python_env; run_tests "$@" ;;
    demo) python_env; exec "$VENV/bin/monitor" demo "$@" ;;
    *) echo "usage: bash deploy/bootstrap.sh [demo|test|setup]" >&2; exit 2 ;;
esac
