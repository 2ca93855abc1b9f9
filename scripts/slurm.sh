#!/usr/bin/env bash
# A real one-node Slurm on this machine, for trying the Slurm launcher and for the tests
# (tests/test_slurm_real.py). Debian's slurm-wlm (22.05), munge, slurmdbd and MariaDB (submitit
# polls sacct, so accounting must work); the daemons are started directly, no systemd.
#
#   scripts/slurm.sh up       install what is missing, configure, start, wait until usable
#   scripts/slurm.sh status   what runs; exit status 0 only when Slurm is usable
#   scripts/slurm.sh down     stop the daemons (and cancel the jobs); `down --purge` also deletes the state
#
# One node named after `hostname -s` with the box's CPUs and memory, one partition `debug` (default).
# All state (configuration, munge key, database, spool, logs, pid files) lives in $KEISEI_SLURM_DIR
# (default /var/lib/keisei-slurm); /etc/slurm/slurm.conf is a symlink to its slurm.conf so that
# sbatch, squeue, sacct... find it. Needs root (re-runs itself with sudo when not root).
set -euo pipefail

STATE=${KEISEI_SLURM_DIR:-/var/lib/keisei-slurm}
CLUSTER=keisei
PARTITION=debug
DB_PORT=${KEISEI_SLURM_DB_PORT:-13306}   # MariaDB on 127.0.0.1 only, off the usual 3306
WAIT_S=${KEISEI_SLURM_WAIT_S:-90}         # bounded wait for each daemon / for the node
PACKAGES=(slurm-wlm slurm-client slurmdbd munge mariadb-server mariadb-client)
ETC_CONF=/etc/slurm/slurm.conf

CONF=$STATE/etc/slurm.conf
DBD_CONF=$STATE/etc/slurmdbd.conf
MUNGE_SOCKET=$STATE/munge/munge.socket
DB_SOCKET=$STATE/run/mariadb.sock
export SLURM_CONF=$CONF

log() { echo "slurm.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "needs root (or sudo)"
    exec sudo -E KEISEI_SLURM_DIR="$STATE" bash "$0" "$@"
fi

alive() {  # alive PIDFILE: the process of the pid file runs, and is the daemon named by the file
    local pid name
    name=$(basename "$1" .pid)
    [[ $name == mariadb ]] && name=mariadbd
    [[ -s $1 ]] && pid=$(<"$1") && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

wait_for() {  # wait_for WHAT LOGFILE COMMAND...: run COMMAND until it succeeds, at most WAIT_S seconds
    local what=$1 logfile=$2 deadline=$((SECONDS + WAIT_S))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "$what not ready after ${WAIT_S}s; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 2>/dev/null || true
            die "$what did not come up"
        fi
        sleep 0.5
    done
}

start_daemon() {  # start_daemon FILE COMMAND...: detached (own session), stdin /dev/null, stdout+stderr to FILE
    local logfile=$1
    shift
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, then SIGKILL after 20 s
    local name=$1 pidfile=$2 pid i
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name"
}

# --- packages ------------------------------------------------------------------------------------

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    # the packages' scripts may try to start their services; without systemd that fails harmlessly
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# --- configuration -------------------------------------------------------------------------------

write_if_changed() {  # write_if_changed FILE MODE < content; returns 0 when the file changed
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

configure() {  # sets CONF_CHANGED=1 when slurm.conf or slurmdbd.conf changed
    local node cpus mem_mb
    node=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    mkdir -p "$STATE"/{etc,munge,run,log,ctld,slurmd,mariadb}
    chmod 755 "$STATE" "$STATE/etc" "$STATE/run" "$STATE/log"
    chmod 700 "$STATE/ctld" "$STATE/slurmd" "$STATE/mariadb"
    chmod 755 "$STATE/munge"  # the socket's dir: readable by users (sbatch talks to munged), not writable

    if [[ ! -s $STATE/munge/munge.key ]]; then
        log "writing a munge key"
        (umask 077 && dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none)
    fi
    chmod 400 "$STATE/munge/munge.key"
    if [[ ! -s $STATE/etc/db.pass ]]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$STATE/etc/db.pass")
    fi

    CONF_CHANGED=0
    # cred_expire: a requeued job is held PENDING (BeginTime) for this long before it may start
    # again; Slurm's default is 120 s (plus up to sched_interval). 20 s keeps the requeue test short
    # and is plenty for a step launch on one local node.
    write_if_changed "$CONF" 644 <<EOF && CONF_CHANGED=1
# written by scripts/slurm.sh (Keisei) for Slurm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null)
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=20
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoragePass=$MUNGE_SOCKET
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem_mb / cpus))
# jobs may be requeued (submitit's requeue is 'scontrol requeue'); on preemption send the job's
# --signal (USR2 for submitit) instead of SIGTERM
JobRequeue=1
SlurmctldParameters=preempt_send_user_signal
MinJobAge=60
KillWait=5
InactiveLimit=0
ReturnToService=2
SlurmdTimeout=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    write_if_changed "$DBD_CONF" 600 <<EOF && CONF_CHANGED=1
# written by scripts/slurm.sh (Keisei)
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$STATE/etc/db.pass")
StorageLoc=slurm_acct_db
EOF
    # the client commands (sbatch, sacct, ... also inside jobs) read /etc/slurm/slurm.conf
    mkdir -p /etc/slurm
    if [[ -L $ETC_CONF || ! -e $ETC_CONF ]]; then
        [[ $(readlink "$ETC_CONF" 2>/dev/null) == "$CONF" ]] || ln -sfn "$CONF" "$ETC_CONF"
    else
        die "$ETC_CONF exists and is not ours; move it away (or use SLURM_CONF=$CONF by hand)"
    fi
}

# --- daemons -------------------------------------------------------------------------------------

db() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot "$@"; }

start_munge() {
    alive "$STATE/run/munged.pid" && return 0
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "starting munged"
    munged --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed" </dev/null >>"$STATE/log/munged.log" 2>&1 \
        || { tail -n 20 "$STATE/log/munged.log" >&2; die "munged did not start"; }
    wait_for munged "$STATE/log/munged.log" bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
}

start_mariadb() {
    local pass
    pass=$(<"$STATE/etc/db.pass")
    if ! alive "$STATE/run/mariadb.pid"; then
        if [[ ! -d $STATE/mariadb/mysql ]]; then
            log "initialising the MariaDB data dir"
            mariadb-install-db --no-defaults --user=root --datadir="$STATE/mariadb" --skip-test-db \
                --auth-root-authentication-method=socket >>"$STATE/log/mariadb.log" 2>&1 \
                || { tail -n 20 "$STATE/log/mariadb.log" >&2; die "mariadb-install-db failed"; }
        fi
        log "starting mariadbd"
        # slurmdbd logs that a 256M buffer pool is below its recommendation: harmless for a test cluster
        rm -f "$DB_SOCKET"
        start_daemon "$STATE/log/mariadb.log" mariadbd --no-defaults --user=root --datadir="$STATE/mariadb" \
            --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
            --pid-file="$STATE/run/mariadb.pid" --log-error="$STATE/log/mariadb.log" \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 --innodb-log-file-size=64M
        wait_for mariadbd "$STATE/log/mariadb.log" db -e "SELECT 1"
    fi
    db <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    alive "$STATE/run/slurmdbd.pid" && return 0
    log "starting slurmdbd"
    start_daemon "$STATE/log/slurmdbd.out" slurmdbd -D
    # slurmdbd -D does not write its pid file before it is ready; record the pid ourselves
    echo $! >"$STATE/run/slurmdbd.pid"
    wait_for slurmdbd "$STATE/log/slurmdbd.log" sacctmgr -n list cluster
}

ensure_accounts() {
    local user
    user=${SUDO_USER:-root}
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -n -P list account format=account | grep -qx keisei \
        || sacctmgr -i add account keisei Cluster="$CLUSTER" Description=keisei Organization=keisei >/dev/null
    local u
    for u in root "$user"; do
        sacctmgr -n -P list user "$u" format=user | grep -qx "$u" \
            || sacctmgr -i add user "$u" Account=keisei Cluster="$CLUSTER" >/dev/null
    done
}

start_slurmctld() {
    alive "$STATE/run/slurmctld.pid" && return 0
    log "starting slurmctld"
    start_daemon "$STATE/log/slurmctld.out" slurmctld -D
    echo $! >"$STATE/run/slurmctld.pid"
    wait_for slurmctld "$STATE/log/slurmctld.log" scontrol ping
    # scontrol ping prints DOWN and exits 0 while it cannot reach slurmctld
    wait_for slurmctld "$STATE/log/slurmctld.log" bash -c "scontrol ping | grep -q UP"
}

start_slurmd() {
    alive "$STATE/run/slurmd.pid" && return 0
    log "starting slurmd"
    start_daemon "$STATE/log/slurmd.out" slurmd -D
    echo $! >"$STATE/run/slurmd.pid"
}

node_ready() {
    local state
    state=$(sinfo -h -n "$(hostname -s)" -p "$PARTITION" -o %t 2>/dev/null) || return 1
    [[ $state =~ ^(idle|mix|alloc|comp)$ ]]
}

wait_ready() {
    local node deadline=$((SECONDS + WAIT_S))
    node=$(hostname -s)
    until node_ready; do
        if [[ $(sinfo -h -n "$node" -o %t 2>/dev/null) =~ drain|drng|down ]]; then
            # a node left down or drained by an earlier run: bring it back
            scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
        fi
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            scontrol show node "$node" >&2 || true
            tail -n 20 "$STATE/log/slurmd.log" >&2 || true
            die "node $node not idle after ${WAIT_S}s"
        fi
        sleep 0.5
    done
    wait_for sacct "$STATE/log/slurmdbd.log" sacct -n -X --starttime=now-1minute
}

usable() {
    local d
    for d in munged mariadb slurmdbd slurmctld slurmd; do
        alive "$STATE/run/$d.pid" || return 1
    done
    node_ready && sacct -n -X --starttime=now-1minute >/dev/null 2>&1
}

cmd_up() {
    install_packages
    configure
    if ((CONF_CHANGED)) && alive "$STATE/run/slurmctld.pid"; then
        log "configuration changed: restarting"
        cmd_down
    fi
    if usable; then
        log "up (already running): $(sinfo -h -o '%P %D %t %c CPUs %m MB')"
        return 0
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    ensure_accounts
    start_slurmctld
    start_slurmd
    wait_ready
    log "up: $(sinfo -h -o '%P %D %t %c CPUs %m MB'), Slurm $(sinfo -V | awk '{print $2}'), state in $STATE"
}

cmd_down() {
    local jobs
    if alive "$STATE/run/slurmctld.pid"; then
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            timeout 20 scancel --full $jobs 2>/dev/null || true
            for ((i = 0; i < 40; i++)); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_pidfile slurmd "$STATE/run/slurmd.pid"
    stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
    stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
    stop_pidfile mariadbd "$STATE/run/mariadb.pid"
    stop_pidfile munged "$STATE/run/munged.pid"
}

cmd_status() {
    local d rc=0
    for d in munged mariadb slurmdbd slurmctld slurmd; do
        if alive "$STATE/run/$d.pid"; then
            echo "$d: running (pid $(<"$STATE/run/$d.pid"))"
        else
            echo "$d: stopped"
            rc=1
        fi
    done
    if ((rc == 0)); then
        sinfo || rc=1
        sacct -n -X --starttime=now-1minute >/dev/null 2>&1 && echo "sacct: answers" || { echo "sacct: fails"; rc=1; }
    fi
    return $rc
}

case ${1:-} in
    up) cmd_up ;;
    down)
        cmd_down
        if [[ ${2:-} == --purge ]]; then
            rm -rf "$STATE"
            [[ -L $ETC_CONF ]] && rm -f "$ETC_CONF"
            log "removed $STATE"
        fi
        ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down [--purge]|status" >&2; exit 2 ;;
esac
