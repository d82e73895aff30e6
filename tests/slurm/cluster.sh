#!/usr/bin/env bash
# Start, stop or inspect a real single-node Slurm (slurmctld + slurmd + munge) for primer's
# tests and for trying the Slurm backend on one machine.
#
#   tests/slurm/cluster.sh start  DIR   install (if missing), configure and start; waits for idle
#   tests/slurm/cluster.sh stop   DIR   scancel every job, then kill the daemons this script started
#   tests/slurm/cluster.sh status DIR   print daemon pids and `sinfo`; exit 0 only if the node is up
#
# Everything (slurm.conf, state, spool, logs, pid files) lives under DIR. Clients reach the
# cluster with `export SLURM_CONF=DIR/slurm.conf` (printed by `start`).
#
# Exit codes: 0 ok, 1 error, 3 Slurm cannot be made available here (not installable, not root):
# tests skip on 3 and fail on anything else.
#
# Environment: PRIMER_SLURM_MAX_ARRAY_SIZE (default 1001) sets MaxArraySize so that tests can
# exercise array chunking with a handful of tasks.
#
# Facts behind the choices below: /work/shared/notes/slurm.md (Debian 12, Slurm 22.05, no systemd).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 1; }
[[ $# -eq 2 ]] || usage
cmd=$1
dir=$2
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/slurm.conf
export SLURM_CONF=$conf
host=$(hostname -s 2>/dev/null || uname -n)
host=${host%%.*}

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
unavailable() { log "Slurm unavailable: $*"; exit 3; }

# pid_alive FILE NAME: true when FILE holds the pid of a live process whose command is NAME
# (guards against killing an unrelated process that reused a stale pid).
pid_alive() {
    local file=$1 name=$2 pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    [[ $(</proc/"$pid"/comm) == "$name" ]]
}

# proc_running FILE: the recorded process exists and is not a zombie (right after `setsid X &`
# its command may still read "setsid", so this check does not look at the name).
proc_running() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ -r /proc/$pid/stat ]] || return 1
    [[ $(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null) != Z ]]
}

# kill_pidfile FILE NAME: TERM the recorded process, KILL it after 10 s, remove the pid file.
kill_pidfile() {
    local file=$1 name=$2 pid i
    if pid_alive "$file" "$name"; then
        pid=$(<"$file")
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            proc_running "$file" || break
            sleep 0.1
        done
        if proc_running "$file"; then
            log "$name (pid $pid) ignored TERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

install_slurm() {
    local need=()
    command -v slurmctld >/dev/null || need+=(slurmctld)
    command -v slurmd >/dev/null || need+=(slurmd)
    command -v sbatch >/dev/null || need+=(slurm-client)
    command -v munged >/dev/null || need+=(munge)
    [[ ${#need[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || unavailable "missing ${need[*]} and not root (cannot apt-get install)"
    command -v apt-get >/dev/null || unavailable "missing ${need[*]} and no apt-get"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has empty package lists; an old list may point at vanished versions.
    apt-get update -qq >"$dir/apt.log" 2>&1 || unavailable "apt-get update failed (see $dir/apt.log)"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$dir/apt.log" 2>&1 \
        || unavailable "apt-get install ${need[*]} failed (see $dir/apt.log)"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0 # already running (ours from an earlier start, or the machine's)
    fi
    local key=/etc/munge/munge.key
    mkdir -p /etc/munge
    if [[ ! -s $key ]]; then
        log "creating munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
    fi
    # munged refuses a key readable by group/other or not owned by its user.
    chown munge:munge /etc/munge "$key"
    chmod 0700 /etc/munge
    chmod 0400 "$key"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
        || die "munged failed to start (see /var/log/munge/munged.log)"
    local i
    for ((i = 0; i < 50; i++)); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            # Only a munged this script started is stopped by `stop`.
            cp /run/munge/munged.pid "$dir/munged.pid"
            return 0
        fi
        sleep 0.1
    done
    die "munged started but 'munge -n | unmunge' fails"
}

write_conf() {
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    # The node line as slurmd sees this machine (CPUs, sockets, cores, memory).
    local node
    node=$(slurmd -C | head -n1)
    [[ $node == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node"
    cat >"$conf" <<CONF
# Generated by tests/slurm/cluster.sh: a one-node cluster with root daemons and no cgroups.
ClusterName=primer
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=300
MaxArraySize=${PRIMER_SLURM_MAX_ARRAY_SIZE:-1001}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.daemon.pid
SlurmdPidFile=$dir/slurmd.daemon.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -n1; }

wait_idle() {
    local i st
    for ((i = 0; i < 300; i++)); do
        if scontrol ping 2>/dev/null | grep -q 'is UP'; then
            st=$(node_state)
            case $st in
            idle | mixed | allocated) return 0 ;;
            esac
        fi
        proc_running "$dir/slurmctld.pid" || die "slurmctld exited (see $dir/log/slurmctld.log)"
        proc_running "$dir/slurmd.pid" || die "slurmd exited (see $dir/log/slurmd.log)"
        sleep 0.2
    done
    die "node not idle after 60 s (state '${st:-?}'; see $dir/log/)"
}

warm_up() {
    # The scheduler's first pass comes a few seconds after start; one trivial job gets it done
    # so that later tests see stable timings.
    local id i st
    id=$(sbatch --parsable -J primer-warmup -o /dev/null -e /dev/null --wrap true) || die "warm-up sbatch failed"
    id=${id%%;*}
    for ((i = 0; i < 300; i++)); do
        st=$(squeue -h -t all -j "$id" -o %T 2>/dev/null | head -n1)
        case $st in
        COMPLETED) return 0 ;;
        FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL) die "warm-up job $id ended $st" ;;
        esac
        sleep 0.2
    done
    die "warm-up job $id did not finish in 60 s (state '${st:-?}')"
}

start() {
    if pid_alive "$dir/slurmctld.pid" slurmctld && pid_alive "$dir/slurmd.pid" slurmd; then
        log "already running (slurmctld $(<"$dir/slurmctld.pid"), slurmd $(<"$dir/slurmd.pid"))"
        wait_idle
        echo "export SLURM_CONF=$conf"
        return 0
    fi
    # Half a cluster (one daemon died): restart both cleanly.
    kill_pidfile "$dir/slurmd.pid" slurmd
    kill_pidfile "$dir/slurmctld.pid" slurmctld
    install_slurm
    [[ $(id -u) -eq 0 ]] || unavailable "the daemons run as root here; run as root"
    start_munge
    # Ports 6817/6818 are fixed: another cluster (another DIR) would make ours fail obscurely.
    if (echo >/dev/tcp/127.0.0.1/6817) 2>/dev/null; then
        die "port 6817 is taken: another slurmctld runs (stop it with '$0 stop ITS_DIR')"
    fi
    write_conf
    log "starting slurmctld and slurmd (config $conf)"
    # -i: ignore state from an earlier run in DIR (we want a clean queue); setsid so that the
    # daemons do not get the caller's terminal signals.
    setsid slurmctld -D -i -f "$conf" >>"$dir/log/slurmctld.out" 2>&1 </dev/null &
    echo $! >"$dir/slurmctld.pid"
    setsid slurmd -D -f "$conf" -N "$host" >>"$dir/log/slurmd.out" 2>&1 </dev/null &
    echo $! >"$dir/slurmd.pid"
    wait_idle
    warm_up
    log "up: node $host $(node_state)"
    echo "export SLURM_CONF=$conf"
}

stop() {
    if [[ -f $conf ]] && pid_alive "$dir/slurmctld.pid" slurmctld; then
        # Stopping slurmd does not kill running jobs: cancel them first.
        local ids i
        ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${ids// /} ]]; then
            log "cancelling jobs $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z $(squeue -h -t PD,R,CG,S -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    kill_pidfile "$dir/slurmd.pid" slurmd
    kill_pidfile "$dir/slurmctld.pid" slurmctld
    kill_pidfile "$dir/munged.pid" munged
    log "stopped"
}

status() {
    local up=0
    if pid_alive "$dir/slurmctld.pid" slurmctld; then echo "slurmctld: pid $(<"$dir/slurmctld.pid")"; else echo "slurmctld: not running"; up=1; fi
    if pid_alive "$dir/slurmd.pid" slurmd; then echo "slurmd: pid $(<"$dir/slurmd.pid")"; else echo "slurmd: not running"; up=1; fi
    if [[ $up -eq 0 ]]; then
        echo "node: $(node_state)"
        sinfo 2>/dev/null || true
        echo "export SLURM_CONF=$conf"
    fi
    return $up
}

case $cmd in
start) start ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
