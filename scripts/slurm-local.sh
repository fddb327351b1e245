#!/usr/bin/env bash
# A single-node SLURM on this machine, for trying `vfnb sweep --executor slurm` and for
# `make slurm-test`: munged, slurmctld and slurmd run as root with a slurm.conf written for
# this one node (its CPUs and memory as `slurmd -C` detects them).
#
#   scripts/slurm-local.sh start    write the config, start the daemons, wait until the node is idle
#   scripts/slurm-local.sh stop     cancel its jobs, stop the daemons
#   scripts/slurm-local.sh status   say whether it runs (exit 0) or not (exit 3)
#
# Everything it writes (config, munge key and socket, state, logs, pid files) lives under
# VFNB_SLURM_DIR (default /tmp/vfnb-slurm); nothing under /etc is read or changed, and the
# daemons listen on their own ports (VFNB_SLURM_PORT, default 6917, and the next one), so a
# real cluster's configuration on the same machine is never touched. Clients find this
# cluster through SLURM_CONF: `export SLURM_CONF=$VFNB_SLURM_DIR/slurm.conf` (start prints it).
#
# VFNB_SLURM_NICE (default 0): the niceness slurmd, and so every job, runs at.
# No cgroups and no systemd (containers rarely have either): proctrack/linuxproc, task/none,
# no accounting (sacct does not answer; squeue does).

set -euo pipefail

DIR=${VFNB_SLURM_DIR:-/tmp/vfnb-slurm}
PORT=${VFNB_SLURM_PORT:-6917}
NODE=vfnb-node
PARTITION=debug
CONF=$DIR/slurm.conf
WAIT_S=${VFNB_SLURM_WAIT_S:-60}
NICE=${VFNB_SLURM_NICE:-0}  # the jobs inherit slurmd's niceness: 10 keeps them behind interactive work

die() { echo "slurm-local: $*" >&2; exit 2; }
say() { echo "slurm-local: $*" >&2; }

require() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (munged, slurmctld and slurmd run as root here); try: sudo $0 $*"
    local missing=()
    for cmd in munged slurmctld slurmd sinfo scontrol squeue scancel sbatch; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        die "missing ${missing[*]}; install them with: apt-get update && apt-get install -y slurmctld slurmd munge"
    fi
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

running() { pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid"; }

write_config() {
    # the node as slurmd detects it (CPUs, sockets, cores, threads, memory), under our own node name
    local detected
    detected=$(slurmd -C | head -n 1) || die "slurmd -C could not detect this machine's CPUs and memory"
    detected=${detected#NodeName=* }
    [[ $detected == *CPUs=* && $detected == *RealMemory=* ]] || die "slurmd -C printed no CPUs/RealMemory: $detected"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
    chmod 700 "$DIR/munge"
    cat > "$CONF.tmp" <<EOF
# written by scripts/slurm-local.sh: a single-node cluster on $(hostname), state under $DIR
ClusterName=vfnb-local
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName=$NODE NodeHostname=$(hostname) NodeAddr=127.0.0.1 $detected State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi
}

node_state() { SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }

start() {
    require start
    if running; then
        say "already running ($CONF)"
        status
        return 0
    fi
    write_config
    if ! pid_alive "$DIR/munge/munged.pid"; then
        munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
            --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
            --seed-file="$DIR/munge/munged.seed" || die "munged did not start; see $DIR/log/munged.log"
    fi
    export SLURM_CONF=$CONF
    slurmctld -f "$CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    nice -n "$NICE" slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start; see $DIR/log/slurmd.log"
    local waited=0 state=""
    while (( waited < WAIT_S )); do
        state=$(node_state)
        case $state in
            idle*|mix*|alloc*) break ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
        waited=$((waited + 1))
    done
    case $state in
        idle*|mix*|alloc*) ;;
        *) die "node $NODE is '${state:-not answering}' after ${WAIT_S} s; see $DIR/log/slurmctld.log and $DIR/log/slurmd.log" ;;
    esac
    say "running: node $NODE idle in partition $PARTITION ($(SLURM_CONF=$CONF sinfo -h -n "$NODE" -o '%c CPUs, %m MB'))"
    say "clients need: export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid NAME PIDFILE: TERM, wait up to 20 s, then KILL
    local name=$1 file=$2 pid i
    pid_alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
        sleep 0.5
    done
    say "$name (pid $pid) did not stop in 20 s: killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
}

stop() {
    require stop
    if running; then
        SLURM_CONF=$CONF scancel --full --quiet --partition="$PARTITION" 2>/dev/null || true
    fi
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$DIR/munge/munged.pid"
    say "stopped (state kept in $DIR)"
}

status() {
    if running; then
        echo "running: SLURM_CONF=$CONF"
        SLURM_CONF=$CONF sinfo -N -n "$NODE" -o '%N %P %t %c %m' || true
        SLURM_CONF=$CONF squeue || true
        return 0
    fi
    echo "not running ($DIR)"
    return 3
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
