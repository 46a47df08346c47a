#!/usr/bin/env bash
# Start a private one-node SLURM cluster (munged + slurmctld + slurmd) for pglab's tests.
#
#   bash scripts/slurm/start.sh          # then: source /tmp/pglab-slurm/env.sh
#
# Everything lives in a state dir (default /tmp/pglab-slurm, override with PGLAB_SLURM_DIR):
#   slurm.conf, env.sh (exports SLURM_CONF), munge/ (private key + socket), state/, spool/,
#   log/ (daemon logs), pid/ (munged.pid, slurmctld.pid, slurmd.pid: what stop.sh kills).
# It never touches /etc/slurm, /etc/munge or a system munged: munged runs on a private socket
# with a private key, and slurm.conf points at it (AuthInfo=socket=...).
#
# Idempotent: if the daemons recorded in the state dir are alive and the node answers, it only
# rewrites env.sh and exits 0.  Needs root (slurmd launches jobs as the submitting user).
#
# Environment:
#   PGLAB_SLURM_DIR            state dir                      [/tmp/pglab-slurm]
#   PGLAB_SLURM_CLUSTER        ClusterName                    [pglab]
#   PGLAB_SLURMCTLD_PORT       SlurmctldPort                  [16817]
#   PGLAB_SLURMD_PORT          SlurmdPort                     [16818]
#   PGLAB_SLURM_START_TIMEOUT  seconds to wait for node idle  [60]
set -euo pipefail

t0=$(date +%s.%N)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
S="${PGLAB_SLURM_DIR:-/tmp/pglab-slurm}"
CLUSTER="${PGLAB_SLURM_CLUSTER:-pglab}"
CTLD_PORT="${PGLAB_SLURMCTLD_PORT:-16817}"
SLURMD_PORT="${PGLAB_SLURMD_PORT:-16818}"
TIMEOUT="${PGLAB_SLURM_START_TIMEOUT:-60}"
PARTITION=debug
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "[slurm/start] $*"; }
SHOW_LOGS=0   # set once daemons are being started: from then on, errors show the log tails
die() {
    echo "[slurm/start] ERROR: $*" >&2
    ((SHOW_LOGS)) || exit 1
    local f
    for f in "$S/log/slurmctld.log" "$S/log/slurmd.log" "$S/munge/munged.log"; do
        if [[ -s $f ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 15 "$f" >&2
        fi
    done
    exit 1
}

# pid_alive NAME: true if pid/NAME.pid holds the PID of a live (non-zombie) process called NAME.
pid_alive() {
    local name=$1 f="$S/pid/$1.pid" pid state
    [[ -s $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [[ $state != Z && $state != X ]]
}

node_state() {
    SLURM_CONF="$S/slurm.conf" timeout 10 sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n1 || true
}

write_env() {
    cat >"$S/env.sh" <<EOF
# Written by scripts/slurm/start.sh; source it to talk to the pglab test cluster.
export SLURM_CONF="$S/slurm.conf"
export PGLAB_SLURM_DIR="$S"
case ":\$PATH:" in *":$S/bin:"*) ;; *) export PATH="$S/bin:\$PATH" ;; esac  # sacct shim
export PGLAB_SLURM_PARTITION="$PARTITION"
EOF
}

# ---- preconditions ---------------------------------------------------------------------------
[[ $S == /?* && $S != *..* ]] || die "PGLAB_SLURM_DIR must be an absolute path below / (got '$S')"
[[ $(id -u) -eq 0 ]] || die "must run as root (slurmd and munged need it); try: sudo bash $0"
for b in munged slurmctld slurmd sinfo sbatch; do
    command -v "$b" >/dev/null 2>&1 || die "'$b' not found; run: bash $HERE/install.sh"
done
id munge >/dev/null 2>&1 || die "user 'munge' does not exist (is the munge package installed?)"
NODE="$(hostname -s)"
[[ -n $NODE ]] || die "hostname -s is empty"

# ---- already running? ------------------------------------------------------------------------
if pid_alive munged && pid_alive slurmctld && pid_alive slurmd; then
    st=$(node_state)
    if [[ $st == idle* || $st == mix* || $st == alloc* ]]; then
        write_env
        log "already running (node $NODE: $st); env: source $S/env.sh"
        exit 0
    fi
    log "daemons alive but node state is '${st:-unknown}'; restarting"
fi
# Partial or stale cluster from an earlier run: stop whatever we recorded, start clean.
if [[ -d $S/pid ]] && compgen -G "$S/pid/*.pid" >/dev/null; then
    log "found pid files of an earlier (partial or stale) cluster in $S/pid; restarting clean"
fi
bash "$HERE/stop.sh" >/dev/null 2>&1 || true

# ---- layout ----------------------------------------------------------------------------------
mkdir -p "$S"
chmod 0755 "$S"
rm -rf "$S/state" "$S/spool" "$S/log" "$S/pid"
mkdir -p "$S/state" "$S/spool" "$S/log" "$S/pid" "$S/munge"
chmod 0755 "$S/pid" "$S/log"

# ---- node hardware (what slurmd sees, so the node is not drained for a mismatch) --------------
HW="$(slurmd -C 2>/dev/null | head -n1)" || true
hw() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS="$(hw CPUs)"
BOARDS="$(hw Boards)"
SOCKETS="$(hw SocketsPerBoard)"
CORES="$(hw CoresPerSocket)"
THREADS="$(hw ThreadsPerCore)"
MEM="$(hw RealMemory)"
if [[ -z $CPUS || -z $MEM ]]; then
    log "slurmd -C gave nothing usable ('$HW'); falling back to nproc / /proc/meminfo"
    CPUS=$(nproc)
    MEM=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024))
    BOARDS=1 SOCKETS=1 CORES=$CPUS THREADS=1
fi
# Keep a little headroom so rounding differences never drain the node for "Low RealMemory".
MEM=$((MEM > 1024 ? MEM - 64 : MEM))

# ---- munge: private key + private socket ------------------------------------------------------
SHOW_LOGS=1
MS="$S/munge"
chown munge:munge "$MS"
chmod 0755 "$MS"
if [[ ! -s $MS/munge.key ]]; then
    if [[ -s /etc/munge/munge.key ]]; then
        cp /etc/munge/munge.key "$MS/munge.key"
    elif command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MS/munge.key" >/dev/null 2>&1 ||
            dd if=/dev/urandom of="$MS/munge.key" bs=1024 count=1 status=none
    else
        dd if=/dev/urandom of="$MS/munge.key" bs=1024 count=1 status=none
    fi
fi
chown munge:munge "$MS/munge.key"
chmod 0400 "$MS/munge.key"
rm -f "$MS/munge.socket" "$MS/munge.socket.lock"
runuser -u munge -- munged \
    --socket="$MS/munge.socket" --key-file="$MS/munge.key" \
    --pid-file="$MS/munged.pid" --log-file="$MS/munged.log" \
    --seed-file="$MS/munged.seed" ||
    die "munged failed to start"
for _ in $(seq 50); do
    munge -S "$MS/munge.socket" -n 2>/dev/null | unmunge -S "$MS/munge.socket" >/dev/null 2>&1 && break
    sleep 0.1
done
munge -S "$MS/munge.socket" -n 2>/dev/null | unmunge -S "$MS/munge.socket" >/dev/null 2>&1 ||
    die "munged is not answering on $MS/munge.socket"
cp "$MS/munged.pid" "$S/pid/munged.pid"   # munged (user munge) cannot write into pid/

# ---- slurm.conf ------------------------------------------------------------------------------
cat >"$S/slurm.conf" <<EOF
# Generated by scripts/slurm/start.sh for the pglab one-node test cluster. Do not edit.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MS/munge.socket
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/pid/slurmctld.pid
SlurmdPidFile=$S/pid/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$S/log/jobcomp.txt
MailProg=/bin/true
SchedulerType=sched/backfill
# Schedule batch jobs as soon as they are submitted (default batch_sched_delay=3 s).
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
# Reject at submission what can never run here (e.g. more CPUs than the node has) instead of
# leaving it PENDING forever (reason PartitionConfig), which would hang a Hydra sweep.
EnforcePartLimits=ALL
MpiDefault=none
SwitchType=switch/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$S/slurm.conf"

# ---- sacct shim ------------------------------------------------------------------------------
# Without slurmdbd the real sacct only says "accounting storage is disabled".  submitit polls
# `sacct -o JobID,State,NodeList --parsable2 -j ID...` for job states; with no answer it logs a
# warning on every poll and, worse, waits FOREVER for a job that died without writing its result
# (failed setup, SIGKILL, node failure).  This shim answers exactly that query from slurmctld
# (scontrol, live jobs) and the jobcomp file (finished jobs); anything else goes to the real sacct.
mkdir -p "$S/bin"
cat >"$S/bin/sacct" <<'SHIM'
#!/usr/bin/env bash
# sacct shim of the pglab test cluster (written by scripts/slurm/start.sh); see docs/slurm.md.
REAL=/usr/bin/sacct
orig=("$@")
conf=${SLURM_CONF:?}
jobcomp=$(sed -n 's/^JobCompLoc=//p' "$conf")
fields="" parsable=0 ids=()
while (($#)); do
    case $1 in
    -o | --format) fields=$2; shift ;;
    --format=*) fields=${1#*=} ;;
    -P | --parsable2) parsable=1 ;;
    -j | --jobs) IFS=, read -ra more <<<"$2"; ids+=("${more[@]}"); shift ;;
    --jobs=*) IFS=, read -ra more <<<"${1#*=}"; ids+=("${more[@]}") ;;
    -X | --allocations | -n | --noheader) ;;
    *) exec "$REAL" "${orig[@]}" ;;
    esac
    shift
done
if [[ $parsable != 1 || ${fields,,} != "jobid,state,nodelist" || ${#ids[@]} -eq 0 ]]; then
    exec "$REAL" "${orig[@]}"
fi
echo "JobID|State|NodeList"
for id in "${ids[@]}"; do
    main=${id%%_*}
    [[ $main =~ ^[0-9]+$ ]] || continue
    # Live (and recently finished) jobs, from slurmctld; an array prints one line per task,
    # still-pending tasks folded into one line like ArrayTaskId=2-5%2.
    scontrol -o show job "$main" 2>/dev/null | awk '{
        id = ""; aj = ""; at = ""; st = ""; nl = "";
        for (i = 1; i <= NF; i++) {
            split($i, kv, "=");
            if (kv[1] == "JobId") id = kv[2];
            else if (kv[1] == "ArrayJobId") aj = kv[2];
            else if (kv[1] == "ArrayTaskId") at = substr($i, 13);
            else if (kv[1] == "JobState") st = kv[2];
            else if (kv[1] == "NodeList") nl = kv[2];
        }
        if (id == "") next;
        if (nl == "" || nl == "(null)") nl = "None assigned";
        if (aj != "") id = (at ~ /[-,%]/) ? aj "_[" at "]" : aj "_" at;
        print id "|" st "|" nl;
    }'
    # Finished jobs, from the jobcomp file (kept after slurmctld purges them); printed last so
    # that final states win.
    [[ -n $jobcomp && -r $jobcomp ]] && awk -v want="$main" '{
        id = ""; aj = ""; at = ""; st = ""; nl = "";
        for (i = 1; i <= NF; i++) {
            split($i, kv, "=");
            if (kv[1] == "JobId") id = kv[2];
            else if (kv[1] == "ArrayJobId") aj = kv[2];
            else if (kv[1] == "ArrayTaskId") at = kv[2];
            else if (kv[1] == "JobState") st = kv[2];
            else if (kv[1] == "NodeList") nl = kv[2];
        }
        if (aj != "" && aj == want) print aj "_" at "|" st "|" nl;
        else if (aj == "" && id == want) print id "|" st "|" nl;
    }' "$jobcomp"
done
exit 0
SHIM
chmod 0755 "$S/bin/sacct"
write_env

# ---- slurmctld + slurmd ----------------------------------------------------------------------
# -c: start from a clean state (no jobs from an earlier run); both daemonize and write pid files.
slurmctld -c -f "$SLURM_CONF" >>"$S/log/slurmctld.stdout" 2>&1 || die "slurmctld failed to start"
slurmd -f "$SLURM_CONF" -N "$NODE" >>"$S/log/slurmd.stdout" 2>&1 || die "slurmd failed to start"

deadline=$(($(date +%s) + TIMEOUT))
st=""
while (($(date +%s) < deadline)); do
    st=$(node_state)
    [[ $st == idle* ]] && break
    pid_alive slurmctld || { sleep 0.5; pid_alive slurmctld || die "slurmctld exited"; }
    pid_alive slurmd || { sleep 0.5; pid_alive slurmd || die "slurmd exited"; }
    sleep 0.5
done
if [[ $st != idle* ]]; then
    SLURM_CONF="$S/slurm.conf" timeout 10 sinfo -R 2>&1 | sed 's/^/[slurm\/start] sinfo -R: /' >&2 || true
    die "node $NODE not idle after ${TIMEOUT}s (state: '${st:-no answer}')"
fi

# ---- smoke job -------------------------------------------------------------------------------
# Proves jobs really run, and absorbs the ~3 s before slurmctld's first scheduling pass (without
# it the first test job pays that, and `sbatch --wait` then sleeps 2+8 s before it notices).
jid=$(sbatch --parsable --partition="$PARTITION" --job-name=pglab-warmup --time=1 \
    --chdir="$S" --output="$S/log/warmup-%j.out" --wrap 'echo ok' 2>&1) ||
    die "sbatch of the smoke job failed: $jid"
jid=${jid%%;*}
js=""
while (($(date +%s) < deadline + 30)); do
    js=$(scontrol -o show job "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2) || true
    case "$js" in
    COMPLETED) break ;;
    FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
        die "smoke job $jid ended $js; output: $(cat "$S/log/warmup-$jid.out" 2>/dev/null)" ;;
    esac
    sleep 0.2
done
[[ $js == COMPLETED ]] || die "smoke job $jid did not complete (state: '${js:-unknown}')"

dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
log "cluster '$CLUSTER' up in ${dt}s: node $NODE (${CPUS} CPUs, ${MEM} MB), partition '$PARTITION'," \
    "ports $CTLD_PORT/$SLURMD_PORT"
log "pids: munged=$(cat "$S/pid/munged.pid") slurmctld=$(cat "$S/pid/slurmctld.pid") slurmd=$(cat "$S/pid/slurmd.pid")"
log "use it with: source $S/env.sh"
