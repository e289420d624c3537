#!/usr/bin/env bash
# A real one-node Slurm on this machine (slurmctld + slurmd + munged), to rehearse sweeps and for tests/slurm/.
#
#   bash scripts/local_slurm.sh start     # then: export SLURM_CONF=<printed path>   (or: eval "$(... start)")
#   bash scripts/local_slurm.sh status    # exit 0 while the node answers
#   bash scripts/local_slurm.sh stop      # cancels its jobs, stops the daemons, removes the folder
#
# start installs Debian's slurm-wlm and munge with apt-get when they are missing and this is root, writes a
# slurm.conf for this machine (its hostname, cores and memory from `slurmd -C`; no accounting, like many small
# clusters), starts munged, slurmctld and slurmd as the current user and waits until `sinfo` shows the node idle.
# Everything (config, munge key and socket, state, spool, logs, pid files) lives in one folder,
# LOCAL_SLURM_DIR (default ${TMPDIR:-/tmp}/gevit-local-slurm); nothing in /etc, /run or /var is written, and
# only processes started from that folder are stopped. The daemons need root (slurmd starts jobs as their
# user); without root, or without apt and the packages, start fails with one line saying which.
# On stdout start prints only `export SLURM_CONF=...`: every Slurm command (sbatch, squeue, srun inside jobs)
# reads the cluster from that variable, so it must be set in the shell that submits.
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-${TMPDIR:-/tmp}/gevit-local-slurm}"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket.2"
PARTITION="${LOCAL_SLURM_PARTITION:-debug}"

say() { echo "local_slurm: $*" >&2; }
die() { say "$*"; exit 1; }

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "cannot start: ${missing[*]} not installed and not root (apt-get install ${missing[*]})"
    command -v apt-get >/dev/null || die "cannot start: ${missing[*]} not installed and no apt-get here"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1; then
        apt-get update -qq >>"$DIR/apt.log" 2>&1 || true
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1 \
            || die "cannot start: apt-get install ${missing[*]} failed (see $DIR/apt.log)"
    fi
}

# A TCP port nothing listens on (the standard ones when they are free).
free_port() {
    local port="$1"
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 100)); done
    echo "$port"
}

pid_of() { [[ -s "$DIR/$1.pid" ]] && cat "$DIR/$1.pid"; }
alive() { local pid; pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null; }

write_config() {
    local node host user
    # NodeName=<hostname> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
    node=$(slurmd -C | head -n 1)
    [[ "$node" == NodeName=* ]] || die "cannot start: 'slurmd -C' did not describe this machine: $node"
    host=${node#NodeName=}
    host=${host%% *}
    user=$(id -un)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh: a one-node cluster in $DIR (stop it: bash scripts/local_slurm.sh stop)
ClusterName=gevit-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$(free_port 6817)
SlurmdPort=$(free_port 6818)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=15
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MinJobAge=300
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
$node NodeAddr=127.0.0.1
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    mkdir -p "$DIR/munge"
    chmod 700 "$DIR/munge"
    [[ -s "$DIR/munge/munge.key" ]] || mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null \
        || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$DIR/munge/munge.key"
    munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || die "cannot start: munged failed (see $DIR/log/munged.log)"
}

wait_for_idle() {
    local state=""
    for _ in $(seq 1 60); do
        state=$(SLURM_CONF="$CONF" sinfo -h -N -o %t 2>/dev/null | head -n 1 || true)
        [[ "$state" == idle* ]] && return 0
        if [[ "$state" == drain* || "$state" == down* ]]; then
            SLURM_CONF="$CONF" scontrol update nodename=ALL state=resume >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    say "the node did not become idle within 60 s (state: ${state:-none}); last daemon log lines:"
    tail -n 5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    stop
    exit 1
}

start() {
    if alive slurmctld && alive slurmd; then
        say "already running ($DIR)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    mkdir -p "$DIR"
    install_packages
    [[ $(id -u) -eq 0 ]] || die "cannot start: the Slurm daemons need root (slurmd starts jobs as their user)"
    stop_daemons
    write_config
    start_munge
    SLURM_CONF="$CONF" slurmctld -f "$CONF" || die "cannot start: slurmctld failed (see $DIR/log/slurmctld.log)"
    SLURM_CONF="$CONF" slurmd -f "$CONF" || die "cannot start: slurmd failed (see $DIR/log/slurmd.log)"
    wait_for_idle
    say "one node up ($(SLURM_CONF="$CONF" sinfo -h -N -o '%N, %c CPUs, %m MB, partition %P')); in $DIR"
    echo "export SLURM_CONF=$CONF"
}

stop_daemons() {
    local name pid
    for name in slurmd slurmctld munged; do
        pid=$(pid_of "$name") || continue
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$DIR/$name.pid"
    done
}

stop() {
    [[ -d "$DIR" ]] || { say "not running ($DIR does not exist)"; return 0; }
    if alive slurmctld; then
        local jobs
        jobs=$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            # shellcheck disable=SC2086
            SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true
            # until their processes are gone (slurmd's end would leave them running)
            for _ in $(seq 1 60); do
                [[ -z "$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null)" ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemons
    rm -rf "$DIR"
    say "stopped"
}

status() {
    if alive slurmctld && alive slurmd && SLURM_CONF="$CONF" sinfo >/dev/null 2>&1; then
        SLURM_CONF="$CONF" sinfo -N -l >&2
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    say "not running ($DIR)"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: bash scripts/local_slurm.sh start|stop|status" >&2; exit 2 ;;
esac
