#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and for trying the cluster paths
# (`qsmflow run --plugin SLURM`, workflows/slurm-array.sbatch, workflows/train-isdu.sbatch).
#
#   sudo scripts/local-slurm.sh start    # install (Debian packages) if needed, configure, start
#   scripts/local-slurm.sh status        # sinfo
#   sudo scripts/local-slurm.sh stop     # stop slurmd, slurmctld and munged
#
# Needs root and Debian's slurmctld, slurmd, slurm-client and munge (installed with apt-get when
# missing). Works without systemd: the daemons are started directly. The node has all of this
# machine's CPUs and its memory less 1 GB; one partition, "debug" (default). Jobs run as the
# submitting user in the submitting directory, so paths are shared with the caller.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "local-slurm.sh $1: needs root (it installs packages and starts daemons)" >&2
        exit 2
    fi
}

install_packages() {
    local missing=()
    for exe in slurmctld slurmd sbatch munged; do
        command -v "$exe" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$exe" >/dev/null 2>&1 \
            || missing+=("$exe")
    done
    if ((${#missing[@]})); then
        echo "installing SLURM and munge (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
            || { apt-get update >/dev/null && apt-get install -y --no-install-recommends \
                slurmctld slurmd slurm-client munge >/dev/null; }
    fi
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge: /run/munge /var/log/munge /var/lib/munge
    if ! pgrep -x munged >/dev/null; then
        su -s /bin/sh munge -c /usr/sbin/munged
    fi
}

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))
    mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
    chown slurm: "$STATE_DIR" "$LOG_DIR"
    cat >"$CONF_DIR/slurm.conf" <<EOF
# written by qsmflow scripts/local-slurm.sh: a one-node cluster for tests
ClusterName=qsmflow-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# a requeued job waits for its old credential to expire (default 120 s): keep that short here
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_idle() {
    local i
    for i in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            return 0
        fi
        if ((i == 10)); then
            scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    echo "local-slurm.sh: the node did not become idle in 60 s; see $LOG_DIR" >&2
    sinfo >&2 || true
    return 1
}

start() {
    need_root start
    install_packages
    export PATH=$PATH:/usr/sbin
    if pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null \
        && sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "local SLURM already running: $(sinfo -h -o '%P %D %T %c CPUs')"
        return 0
    fi
    start_munge
    write_conf
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    wait_idle
    echo "local SLURM running: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
}

stop() {
    need_root stop
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
    echo "local SLURM stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) sinfo ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
