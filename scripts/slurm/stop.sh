#!/usr/bin/env bash
# Stop the pglab test cluster started by start.sh: slurmd, slurmctld, munged, by the PIDs
# recorded in $PGLAB_SLURM_DIR/pid (default /tmp/pglab-slurm/pid).  Never kills by name, so a
# system munged/slurmd is left alone.  Idempotent: exits 0 when nothing is running.
# Waits for each daemon to exit (SIGTERM, then SIGKILL after PGLAB_SLURM_STOP_TIMEOUT s [15]).
# Jobs still running under slurmd are cancelled first (scancel) so no job processes linger.
set -uo pipefail

S="${PGLAB_SLURM_DIR:-/tmp/pglab-slurm}"
TIMEOUT="${PGLAB_SLURM_STOP_TIMEOUT:-15}"
export PATH="$PATH:/usr/sbin:/sbin"
log() { echo "[slurm/stop] $*"; }

# alive PID NAME: true if PID is a live (non-zombie) process whose command name is NAME.
alive() {
    local pid=$1 name=$2 state
    [[ -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [[ -n $state && $state != Z && $state != X ]]
}

recorded_pid() {
    local f="$S/pid/$1.pid"
    [[ -s $f ]] && tr -dc '0-9' <"$f"
}

if [[ ! -d $S/pid ]]; then
    log "nothing to stop (no $S/pid)"
    exit 0
fi

# Cancel leftover jobs while slurmctld still answers, so their processes do not outlive slurmd.
ctld=$(recorded_pid slurmctld)
if [[ -n $ctld && -f $S/slurm.conf ]] && alive "$ctld" slurmctld; then
    SLURM_CONF="$S/slurm.conf" timeout 10 scancel --full --quiet --state=RUNNING 2>/dev/null || true
    SLURM_CONF="$S/slurm.conf" timeout 10 scancel --quiet --state=PENDING 2>/dev/null || true
fi

rc=0
stopped=()
for name in slurmd slurmctld munged; do
    pid=$(recorded_pid "$name")
    if [[ -z $pid ]] || ! alive "$pid" "$name"; then
        rm -f "$S/pid/$name.pid"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null
    t_end=$((SECONDS + TIMEOUT))
    while alive "$pid" "$name" && ((SECONDS < t_end)); do sleep 0.1; done
    if alive "$pid" "$name"; then
        log "$name ($pid) ignored SIGTERM for ${TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        sleep 0.5
    fi
    if alive "$pid" "$name"; then
        log "ERROR: could not stop $name ($pid)"
        rc=1
    else
        rm -f "$S/pid/$name.pid"
        stopped+=("$name=$pid")
    fi
done

# slurmstepd processes of jobs that survived scancel belong to our slurmd's spool; kill them by
# PID too (their cmdline names our spool dir), so no job keeps running after stop.
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    alive "$pid" slurmstepd || continue
    if tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qx "SLURM_CONF=$S/slurm.conf"; then
        kill -KILL "$pid" 2>/dev/null && stopped+=("slurmstepd=$pid")
    fi
done

if ((${#stopped[@]})); then
    log "stopped ${stopped[*]}"
else
    log "nothing was running"
fi
exit $rc
