#!/usr/bin/env bash
# Install SLURM (slurm-wlm) and munge from the distribution's packages.
# Idempotent: does nothing when sbatch, slurmctld, slurmd and munged are already on PATH.
# Needs root (or passwordless sudo) and apt-get.  Exit status: 0 ok, 1 failure.
set -euo pipefail

have_all() {
    local b
    for b in sbatch slurmctld slurmd munged; do
        command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || return 1
    done
}

if have_all; then
    echo "[slurm/install] slurm and munge already installed (slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo "version unknown"))"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "[slurm/install] ERROR: SLURM is not installed and installing it needs root" >&2
        echo "[slurm/install]        (run as root, or: sudo apt-get install -y slurm-wlm munge)." >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[slurm/install] ERROR: apt-get not found; install slurm-wlm and munge with your package manager." >&2
    exit 1
fi

t0=$SECONDS
export DEBIAN_FRONTEND=noninteractive
echo "[slurm/install] installing slurm-wlm + munge via apt ..."
if ! $SUDO apt-get update -qq >/tmp/pglab-slurm-apt.log 2>&1; then
    echo "[slurm/install] ERROR: apt-get update failed; last lines of /tmp/pglab-slurm-apt.log:" >&2
    tail -n 20 /tmp/pglab-slurm-apt.log >&2
    exit 1
fi
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        slurm-wlm munge >>/tmp/pglab-slurm-apt.log 2>&1; then
    echo "[slurm/install] ERROR: apt-get install slurm-wlm munge failed; last lines of /tmp/pglab-slurm-apt.log:" >&2
    tail -n 20 /tmp/pglab-slurm-apt.log >&2
    exit 1
fi
if ! have_all; then
    echo "[slurm/install] ERROR: apt reported success but sbatch/slurmctld/slurmd/munged are still missing." >&2
    exit 1
fi
echo "[slurm/install] installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null) in $((SECONDS - t0)) s"
