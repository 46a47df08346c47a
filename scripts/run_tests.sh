#!/usr/bin/env bash
# Run pglab's tests with a real one-node SLURM cluster (what `make test` and CI run).
#
#   bash scripts/run_tests.sh [pytest args]
#
# 1. installs slurm-wlm + munge if missing and starts a private cluster (scripts/slurm/*.sh);
# 2. runs .venv/bin/pytest "$@" with SLURM_CONF exported, wandb offline and confined to a
#    temporary directory, on one pytest-xdist worker per core (tests/conftest.py groups the
#    tests that must share a worker);
# 3. always stops the cluster's daemons (trap EXIT) and exits with pytest's exit code.
#
# If the cluster cannot be started (e.g. not root on a laptop) the tests still run with
# PGLAB_SLURM=unavailable, so SLURM tests skip with a reason; with CI=true that is an error.
#
# Environment:
#   PGLAB_SLURM=unavailable   do not start SLURM; SLURM tests skip
#   PGLAB_SLURM=external      use the SLURM already configured in this shell (SLURM_CONF,
#                             PGLAB_SLURM_PARTITION); start/stop nothing
#   PGLAB_SLURM_KEEP=1        leave the test cluster running afterwards (faster reruns)
#   PGLAB_SLURM_DIR           state dir of the test cluster [/tmp/pglab-slurm]
#   PGLAB_TEST_WORKERS        pytest-xdist workers [auto: one per core]; 0 runs the tests in
#                             this process, one after another (a "-n K" in the args wins too)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PYTEST="$ROOT/.venv/bin/pytest"
SLURM_DIR="${PGLAB_SLURM_DIR:-/tmp/pglab-slurm}"
export PGLAB_SLURM_DIR="$SLURM_DIR"
is_ci() { [[ ${CI:-} == true || ${CI:-} == 1 ]]; }
log() { echo "[run_tests] $*"; }

if [[ ! -x $PYTEST ]]; then
    echo "[run_tests] ERROR: $PYTEST not found; build the venv first (make venv)." >&2
    exit 2
fi

# ---- wandb: offline, silent, and writing only under a temp dir removed at exit ---------------
TEST_TMP="$(mktemp -d "${TMPDIR:-/tmp}/pglab-tests.XXXXXX")"
export WANDB_MODE=offline
export WANDB_SILENT=true
export WANDB_DISABLE_GIT=true
export WANDB_DIR="$TEST_TMP/wandb"                 # run dirs (default ./wandb)
export WANDB_CONFIG_DIR="$TEST_TMP/wandb-config"   # settings (default ~/.config/wandb)
export WANDB_CACHE_DIR="$TEST_TMP/wandb-cache"     # artifact cache (default ~/.cache/wandb)
export WANDB_DATA_DIR="$TEST_TMP/wandb-data"       # staging (default ~/.local/share/wandb)
export WANDB_ARTIFACT_DIR="$TEST_TMP/wandb-artifacts"
mkdir -p "$WANDB_DIR" "$WANDB_CONFIG_DIR" "$WANDB_CACHE_DIR" "$WANDB_DATA_DIR" "$WANDB_ARTIFACT_DIR"
unset WANDB_API_KEY WANDB_BASE_URL

STARTED_SLURM=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((STARTED_SLURM)); then
        if [[ ${PGLAB_SLURM_KEEP:-0} == 1 ]]; then
            log "PGLAB_SLURM_KEEP=1: test cluster left running (stop: bash scripts/slurm/stop.sh)"
        else
            bash "$ROOT/scripts/slurm/stop.sh" 9>&- || log "WARNING: scripts/slurm/stop.sh failed"
        fi
    fi
    rm -rf "$TEST_TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- SLURM -----------------------------------------------------------------------------------
case "${PGLAB_SLURM:-}" in
unavailable)
    log "PGLAB_SLURM=unavailable: not starting SLURM; SLURM tests will skip"
    is_ci && { echo "[run_tests] ERROR: CI=true requires the SLURM test cluster" >&2; exit 1; }
    unset SLURM_CONF
    ;;
external)
    log "PGLAB_SLURM=external: using SLURM_CONF=${SLURM_CONF:-<unset>}"
    ;;
*)
    # One test cluster per machine: serialize concurrent runs (another checkout, another
    # `make test`) so that one run's stop.sh cannot pull the cluster from under another.
    # (fd 9 is closed for every child: daemons must not inherit, and so keep, the lock.)
    if { exec 9>>"$SLURM_DIR.lock"; } 2>/dev/null && ! flock -n 9; then
        log "another run_tests.sh is using the SLURM test cluster ($SLURM_DIR); waiting ..."
        flock 9
    fi
    t0=$SECONDS
    if bash "$ROOT/scripts/slurm/install.sh" 9>&- && { STARTED_SLURM=1; bash "$ROOT/scripts/slurm/start.sh" 9>&-; }; then
        # shellcheck disable=SC1091
        source "$SLURM_DIR/env.sh"
        export PGLAB_SLURM=local
        log "SLURM test cluster ready in $((SECONDS - t0)) s (SLURM_CONF=$SLURM_CONF)"
    else
        if is_ci; then
            echo "[run_tests] ERROR: could not start the SLURM test cluster, and CI=true requires it." >&2
            exit 1
        fi
        echo "[run_tests] WARNING: could not start the SLURM test cluster (needs root + apt);" >&2
        echo "[run_tests]          running the tests anyway, SLURM tests will be skipped." >&2
        export PGLAB_SLURM=unavailable
        unset SLURM_CONF
    fi
    ;;
esac

# One worker per core: the suite is CPU-bound and mostly single-threaded (measured on the
# 2-core reference machine: 17 min one after another, 11-13 min so; README, Quick start).
"$PYTEST" -n "${PGLAB_TEST_WORKERS:-auto}" --dist loadgroup "$@" 9>&-
