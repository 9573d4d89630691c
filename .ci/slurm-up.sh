#!/usr/bin/env bash
# Start a one-node Slurm cluster on localhost, for the `slurm` tests.
#
# Run as root on Debian (bookworm: slurm-wlm 22.05): installs slurm-wlm and
# munge if missing, writes /etc/slurm/slurm.conf for this machine's CPUs and
# memory, starts munged (as the munge user), slurmctld and slurmd, and waits
# until `sinfo` shows the node up. A second run on a running cluster with the
# same config checks it and returns in about a second; a changed config
# (different CPUs or memory) restarts the daemons this script started.
#
#   sudo bash .ci/slurm-up.sh        # then: sinfo; pytest -m slurm
#
# Environment: SLURM_UP_TIMEOUT (seconds to wait for the node, default 60).
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log, /var/log/munge/munged.log.
set -euo pipefail

NODE=localhost
PARTITION=debug
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
TIMEOUT=${SLURM_UP_TIMEOUT:-60}

say() { echo "slurm-up: $*" >&2; }
die() {
    say "FAILED: $*"
    for log in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        [[ -f $log ]] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
    done
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"

# --- 1. packages ------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    # No init system runs here; keep the packages' maintainer scripts from starting
    # daemons with their default config (ours are started below).
    policy_rc=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy_rc ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod +x "$policy_rc" && own_policy=1
    fi
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
        || { [[ $own_policy == 1 ]] && rm -f "$policy_rc"; die "apt-get install slurm-wlm munge failed"; }
    [[ $own_policy == 1 ]] && rm -f "$policy_rc"
fi

# --- 2. config ----------------------------------------------------------------
cpus=$(nproc --all)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
real_mb=$((mem_mb * 9 / 10)) # below what slurmd measures, or it drains the node
mem_per_cpu=$((real_mb / cpus)) # a job without --mem gets this per CPU, not the whole node

mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Written by qdgap's .ci/slurm-up.sh: a one-node cluster on localhost.
ClusterName=qdgap-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$mem_per_cpu
ReturnToService=2
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

pid_alive() { # pidfile daemon: its pid is alive and is that daemon (a pid left from a past boot may be reused)
    local pid
    [[ -f $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

stop_daemon() { # pidfile daemon: stop only the daemon this script started, by its pid
    local pidfile=$1 pid
    pid_alive "$pidfile" "$2" || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

if ! cmp -s "$new_conf" "$CONF"; then
    if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld || pid_alive "$RUN_DIR/slurmd.pid" slurmd; then
        say "config changed: restarting slurmctld and slurmd"
        stop_daemon "$RUN_DIR/slurmd.pid" slurmd
        stop_daemon "$RUN_DIR/slurmctld.pid" slurmctld
    fi
    install -m 0644 "$new_conf" "$CONF"
    say "wrote $CONF ($NODE: $cpus CPUs, ${real_mb} MB)"
fi

# --- 3. munge -----------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --force --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munge credentials do not round-trip"
fi

# --- 4. slurm daemons ---------------------------------------------------------
if ! pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
    say "starting slurmctld"
    /usr/sbin/slurmctld || die "slurmctld did not start"
fi
if ! pid_alive "$RUN_DIR/slurmd.pid" slurmd; then
    say "starting slurmd"
    /usr/sbin/slurmd -N "$NODE" || die "slurmd did not start"
fi

# --- 5. wait for the node -------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
    state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1 || true)
    case $state in
        idle | mix | alloc | comp) break ;; # up (busy counts: a second run may find jobs running)
        drain* | drng | down* | inval*)
            if [[ $resumed == 0 ]]; then # e.g. a node left down by a previous config
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if ((SECONDS >= deadline)); then
        sinfo -N -l >&2 || true
        sinfo -R >&2 || true
        die "node $NODE not up after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
    fi
    sleep 1
done
say "up: node $NODE is $state in partition $PARTITION ($cpus CPUs, ${real_mb} MB, ${mem_per_cpu} MB per CPU by default)"
