#!/usr/bin/env bash
# A real SLURM 22.05 (Debian's slurm-wlm) on this one machine, for the launch tests.
#
#   tests/launch/slurm_local.sh start|stop|status|reset
#
# start   installs the Debian packages when missing, writes /etc/slurm/{slurm,slurmdbd}.conf, starts
#         munged -> mariadbd -> slurmdbd -> slurmctld -> one slurmd per emulated node, and waits until sinfo shows every
#         node up. A no-op when the same cluster is already up; a restart when the settings changed.
# stop    cancels all jobs, then stops the daemons by pid file (zombie-aware: nothing reaps them here).
# status  prints what runs; exit 0 when the cluster is up, 3 when it is down, 1 when only part of it runs.
# reset   stop, then wipe the saved state: controller state, accounting database, slurmd spools and logs.
#
# Settings (environment): NODES (4) emulated nodes n1..nN, all on 127.0.0.1, each its own slurmd and port;
# CPUS_PER_NODE (2, may exceed the real cores); MEM_PER_NODE in MB (80% of RAM / NODES); ACCOUNTING (1: mariadb +
# slurmdbd, so sacct works and submitit sees jobs that die without a result); PARTITION (debug); START_TIMEOUT (90 s).
#
# Everything runs as root. State: /var/lib/slurm-local, logs: /var/log/slurm-local, pid files and sockets:
# /run/slurm-local. Ports on 127.0.0.1: 6817 slurmctld, 6819 slurmdbd, 3307 mariadb, 17001.. slurmd.
# The recipe, its measurements and the pitfalls P1-P13 cited below: /work/shared/reference/slurm.md.
set -euo pipefail

NODES=${NODES:-4}
CPUS_PER_NODE=${CPUS_PER_NODE:-2}
ACCOUNTING=${ACCOUNTING:-1}
PARTITION=${PARTITION:-debug}
START_TIMEOUT=${START_TIMEOUT:-90}
if [[ -z ${MEM_PER_NODE:-} ]]; then
    MEM_PER_NODE=$(awk -v n="$NODES" '/^MemTotal:/ {print int($2 / 1024 * 0.8 / n)}' /proc/meminfo)
fi

CLUSTER=localcluster
CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm-local
LOG_DIR=/var/log/slurm-local
RUN_DIR=/run/slurm-local
DB_DIR=$STATE_DIR/mysql
DB_SOCK=$RUN_DIR/mysql/mysqld.sock
DB_PID=$RUN_DIR/mysql/mysqld.pid
DB_PORT=3307
MUNGE_PID=/run/munge/munged.pid
HOSTS_TAG="# slurm-local"

log() { echo "slurm-local: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------------------------------
# processes
#
# P5: the daemons double-fork, so a killed one is a child of PID 1, which may reap it late (or never, in Docker without
# --init). `kill -0` succeeds on a zombie, so "alive" means: the process exists, is not a zombie, and is the program
# we expect (a stale pid file may name a recycled pid).

alive() {  # alive PID COMM
    local pid=$1 comm=$2 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    [[ $stat != Z* ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}

pid_of() { cat "$1" 2>/dev/null || true; }  # pid_of PIDFILE

running() { alive "$(pid_of "$1")" "$2"; }  # running PIDFILE COMM

# stop_pids TIMEOUT PIDFILE:COMM...: SIGTERM all at once, wait (zombie-aware), SIGKILL what is left after TIMEOUT s.
stop_pids() {
    local timeout=$1 item pidfile comm pid left deadline
    shift
    local -a pids=() comms=() files=()
    for item in "$@"; do
        pidfile=${item%%:*} comm=${item#*:}
        pid=$(pid_of "$pidfile")
        if alive "$pid" "$comm"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid") comms+=("$comm")
        fi
        files+=("$pidfile")
    done
    deadline=$((SECONDS + timeout))
    while :; do
        left=0
        for i in "${!pids[@]}"; do
            alive "${pids[$i]}" "${comms[$i]}" && left=$((left + 1))
        done
        ((left == 0)) && break
        if ((SECONDS >= deadline)); then
            for i in "${!pids[@]}"; do
                if alive "${pids[$i]}" "${comms[$i]}"; then
                    log "${comms[$i]} (pid ${pids[$i]}) ignored SIGTERM for ${timeout}s: SIGKILL"
                    kill -KILL "${pids[$i]}" 2>/dev/null || true
                fi
            done
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    rm -f "${files[@]}"
}

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s until it succeeds; fail with WHAT after SECONDS.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# daemon_died PIDFILE COMM T0: the daemon started at T0 ($SECONDS) is gone: its pid file names a dead process, or it
# wrote none within 5 s. (A daemon that fails at start writes a fatal line to its log and exits; say so at once.)
daemon_died() {
    if [[ -s $1 ]]; then
        ! running "$1" "$2"
    else
        ((SECONDS - $3 >= 5))
    fi
}

# wait_daemon PIDFILE COMM TIMEOUT LOG CMD...: poll CMD until it succeeds; fail with LOG's tail when the daemon died
# or after TIMEOUT s.
wait_daemon() {
    local pidfile=$1 comm=$2 timeout=$3 logf=$4 t0=$SECONDS
    shift 4
    until "$@" >/dev/null 2>&1; do
        if daemon_died "$pidfile" "$comm" "$t0"; then
            log_tail "$logf"
            die "$comm exited at start (log: $logf)"
        fi
        ((SECONDS - t0 < timeout)) || { log_tail "$logf"; die "$comm did not answer within ${timeout}s (log: $logf)"; }
        sleep 0.2
    done
}

log_tail() {  # log_tail FILE...: the end of each log, for error messages
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        echo "----- tail of $f" >&2
        tail -n 25 "$f" >&2
    done
}

# ---------------------------------------------------------------------------------------------------------------------
# what the written configuration says (stop and status follow the running cluster, not this shell's settings)

conf_nodes() { sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$CONF_DIR/slurm.conf" 2>/dev/null || true; }
conf_partition() { sed -n 's/^PartitionName=\([^ ]*\) .*/\1/p' "$CONF_DIR/slurm.conf" 2>/dev/null | head -n 1; }
conf_accounting() { grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$CONF_DIR/slurm.conf" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------------------------------
# packages

POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0
cleanup() {
    if ((POLICY_RC_OURS)); then rm -f "$POLICY_RC"; fi
}
trap cleanup EXIT
trap 'exit 130' INT  # so that the EXIT trap runs when the script is interrupted
trap 'exit 143' TERM

install_packages() {
    local -a want=(slurmctld slurmd slurm-client munge) need=()
    ((ACCOUNTING)) && want+=(mariadb-server slurmdbd)
    local p
    for p in "${want[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || need+=("$p")
    done
    ((${#need[@]})) || return 0
    command -v apt-get >/dev/null || die "packages missing (${need[*]}) and no apt-get to install them"
    log "installing ${need[*]}"
    # P5: without systemd, the postinst scripts would start munge, slurm* and mariadb from init.d with Debian's
    # configuration. A policy-rc.d that answers 101 forbids that; add one only for the install when there is none.
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\n# temporary, from tests/launch/slurm_local.sh: start no service during install\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        POLICY_RC_OURS=1
    fi
    local -a apt=(apt-get -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    local logf=$LOG_DIR/apt.log
    # Try the package lists already there first (saves ~4 s); refresh them when that fails (none yet, or stale).
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need[@]}" >"$logf" 2>&1; then
        log "install from the current package lists failed; apt-get update, then retry"
        "${apt[@]}" update >>"$logf" 2>&1 || { log_tail "$logf"; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need[@]}" >>"$logf" 2>&1 \
            || { log_tail "$logf"; die "apt-get install ${need[*]} failed (log: $logf)"; }
    fi
    if ((POLICY_RC_OURS)); then rm -f "$POLICY_RC"; POLICY_RC_OURS=0; fi
}

# ---------------------------------------------------------------------------------------------------------------------
# configuration

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "n$i"; done; }

write_slurm_conf() {  # to stdout
    local host mem_per_cpu i
    host=$(hostname -s)
    mem_per_cpu=$((MEM_PER_NODE / CPUS_PER_NODE))
    cat <<EOF
# Written by tests/launch/slurm_local.sh (NODES=$NODES CPUS_PER_NODE=$CPUS_PER_NODE MEM_PER_NODE=$MEM_PER_NODE ACCOUNTING=$ACCOUNTING).
# A test cluster on one machine: every node is a slurmd of its own on 127.0.0.1. Do not edit; rerun the script.
ClusterName=$CLUSTER
# P3: the controller's name must be \`hostname -s\`; the address in brackets avoids DNS.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs wait until the job credential has expired (default 120 s) before they may start again.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldPort=6817
# P6: trust CPUs/RealMemory below even when they exceed what this machine has (nodes share the real cores).
SlurmdParameters=config_overrides
# P9: no cgroups; memory and CPU limits are therefore not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
# P10: schedule a batch job at once instead of after the default 3 s; look at pending jobs every 2 s (not 30-60 s):
# a requeued job becomes eligible when its credential expires, and only a periodic pass then starts it.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# P7: without it a job that does not ask for memory takes the whole node, and jobs run one at a time.
DefMemPerCPU=$mem_per_cpu
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
JobCompType=jobcomp/none
MailProg=/bin/true
EOF
    if ((ACCOUNTING)); then
        cat <<EOF
# P1: submitit learns that a job died without a result only from sacct.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
EOF
    else
        cat <<EOF
# P1: without accounting, submitit never learns that a job died without a result (its wait hangs).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
EOF
    fi
    for ((i = 1; i <= NODES; i++)); do
        echo "NodeName=n$i NodeHostname=n$i NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS_PER_NODE RealMemory=$MEM_PER_NODE State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

write_slurmdbd_conf() {
    cat <<EOF
# Written by tests/launch/slurm_local.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
}

# install_if_changed FILE MODE: stdin -> FILE when the content differs. Returns 0 when it wrote.
install_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o root -g root "$tmp" "$file"
    rm -f "$tmp"
}

# P3: every node name and this host's name must resolve (n1 becomes MASTER_ADDR for torch.distributed). Names that do
# not are added to one tagged line. /etc/hosts is rewritten in place, not replaced: in a container it is a bind mount.
fix_hosts() {
    local -a missing=() keep=()
    local name addr host
    host=$(hostname -s)
    for name in $(node_names) "$host"; do
        addr=$(getent ahostsv4 "$name" 2>/dev/null | awk 'NR == 1 {print $1}') || true
        if [[ -z $addr ]]; then
            missing+=("$name")
        elif [[ $addr != 127.* && $name != "$host" ]]; then  # the host name may be the container's own address
            die "node name $name resolves to $addr, not to this machine (127.x): fix /etc/hosts"
        fi
    done
    ((${#missing[@]})) || return 0
    read -r -a keep <<<"$(sed -n "s/^127\.0\.0\.1[[:space:]]\(.*\)[[:space:]]*$HOSTS_TAG\$/\1/p" /etc/hosts | head -n 1)"
    local line="127.0.0.1 ${keep[*]} ${missing[*]}"
    line="${line//  / } $HOSTS_TAG"
    local content
    content=$(grep -v "$HOSTS_TAG\$" /etc/hosts || true)
    printf '%s\n%s\n' "$content" "$line" >/etc/hosts
    log "/etc/hosts: added ${missing[*]}"
}

# ---------------------------------------------------------------------------------------------------------------------
# daemons

start_munge() {  # P4
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 0700 /etc/munge
    chmod 0600 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    if ! running "$MUNGE_PID" munged; then
        rm -f "$MUNGE_PID"
        # --force: take over a socket left behind by a munged that was killed.
        runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOG_DIR/munged.out" 2>&1 \
            || { log_tail "$LOG_DIR/munged.out" /var/log/munge/munged.log; die "munged did not start"; }
        touch "$RUN_DIR/munged.ours"  # started here, so stop stops it (a munged found running is left alone)
    fi
    wait_for 10 "munge" bash -c 'munge -n | unmunge' \
        || { log_tail /var/log/munge/munged.log; die "munge -n | unmunge fails"; }
}

mysql_root() { mariadb --no-defaults -S "$DB_SOCK" -u root "$@"; }

start_mariadb() {
    mkdir -p "$RUN_DIR/mysql"
    chown mysql:mysql "$RUN_DIR/mysql"
    if ! running "$DB_PID" mariadbd; then
        rm -f "$DB_PID" "$DB_SOCK"
        if [[ ! -d $DB_DIR/mysql ]]; then
            rm -rf "$DB_DIR"
            mkdir -p "$DB_DIR"
            chown mysql:mysql "$DB_DIR"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket \
                --skip-test-db >"$LOG_DIR/mariadb-install.log" 2>&1 \
                || { log_tail "$LOG_DIR/mariadb-install.log"; die "mariadb-install-db failed"; }
        fi
        # A separate instance: Debian's own /var/lib/mysql and port 3306 stay untouched. It does not daemonize, so
        # detach it (setsid, all three streams redirected: a caller reading our output must not wait for it).
        local pid
        setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCK" --pid-file="$DB_PID" \
            --port=$DB_PORT --bind-address=127.0.0.1 --skip-log-bin --innodb-buffer-pool-size=1024M \
            --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
        pid=$!
        local deadline=$((SECONDS + 60))
        until mariadb-admin --no-defaults -S "$DB_SOCK" -u root ping >/dev/null 2>&1; do
            # (not `alive`: right after the fork, the child may not be called mariadbd yet)
            [[ $(ps -o stat= -p "$pid" 2>/dev/null) == [^Z]* ]] || { log_tail "$LOG_DIR/mariadb.log"; die "mariadbd exited at start"; }
            ((SECONDS < deadline)) || { log_tail "$LOG_DIR/mariadb.log"; die "mariadbd did not answer within 60 s"; }
            sleep 0.2
        done
    fi
    mysql_root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
        || die "could not create the slurm database user"
}

sacctmgr_up() { timeout 10 sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if ! running "$RUN_DIR/slurmdbd.pid" slurmdbd; then
        rm -f "$RUN_DIR/slurmdbd.pid"
        slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.out" 2>&1 \
            || { log_tail "$LOG_DIR/slurmdbd.log"; die "slurmdbd did not start"; }
    fi
    # The first start creates the tables: allow some time.
    wait_daemon "$RUN_DIR/slurmdbd.pid" slurmdbd 60 "$LOG_DIR/slurmdbd.log" sacctmgr_up
    # The cluster must be known to slurmdbd before slurmctld registers.
    local clusters
    clusters=$(sacctmgr_up) || true
    if ! grep -qx "$CLUSTER" <<<"$clusters"; then
        timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
    fi
}

start_slurm() {
    local node
    if ! running "$RUN_DIR/slurmctld.pid" slurmctld; then
        rm -f "$RUN_DIR/slurmctld.pid"
        # -i: tolerate saved state that no longer matches the node layout (P11).
        slurmctld -i </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 \
            || { log_tail "$LOG_DIR/slurmctld.log"; die "slurmctld did not start"; }
    fi
    wait_daemon "$RUN_DIR/slurmctld.pid" slurmctld 30 "$LOG_DIR/slurmctld.log" timeout 5 scontrol ping
    for node in $(node_names); do
        if ! running "$RUN_DIR/slurmd-$node.pid" slurmd; then
            rm -f "$RUN_DIR/slurmd-$node.pid"
            mkdir -p "$STATE_DIR/slurmd/$node"
            slurmd -N "$node" </dev/null >>"$LOG_DIR/slurmd-$node.out" 2>&1 \
                || { log_tail "$LOG_DIR/slurmd-$node.log"; die "slurmd -N $node did not start"; }
        fi
    done
}

# all_nodes_up: sinfo lists every configured node as usable (idle, or busy with jobs when start was a no-op).
all_nodes_up() {
    local want got
    want=$(conf_nodes | wc -l)
    got=$(timeout 5 sinfo -h -N -p "$(conf_partition)" -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc|comp)$/' | sort -u | wc -l)
    ((want > 0 && got == want))
}

wait_nodes() {
    local deadline=$((SECONDS + START_TIMEOUT)) resumed=0 t0=$SECONDS node
    until all_nodes_up; do
        for node in $(conf_nodes); do
            if daemon_died "$RUN_DIR/slurmd-$node.pid" slurmd "$t0"; then
                log_tail "$LOG_DIR/slurmd-$node.log"
                die "slurmd -N $node exited at start (log: $LOG_DIR/slurmd-$node.log)"
            fi
        done
        if ((SECONDS >= deadline)); then
            log "nodes not up after ${START_TIMEOUT}s:"
            timeout 5 sinfo -N -l >&2 || true
            timeout 5 sinfo -R >&2 || true
            log_tail "$LOG_DIR/slurmctld.log" "$LOG_DIR"/slurmd-n*.log
            die "the cluster did not come up"
        fi
        # A node drained or down from an earlier run (bad config, missed registration) does not come back by itself.
        if ((!resumed)) && ((SECONDS + START_TIMEOUT - deadline >= 5)); then
            local bad
            bad=$(timeout 5 sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(drain|drng|down|inval|fail)/ {print $1}' | paste -sd, -) || true
            if [[ -n $bad ]]; then
                log "resuming nodes $bad"
                timeout 5 scontrol update NodeName="$bad" State=RESUME >/dev/null 2>&1 || true
            fi
            resumed=1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------------------------------
# commands

daemon_list() {  # the pidfile:comm of every daemon of the configured cluster, in start order
    local node
    echo "$MUNGE_PID:munged"
    if conf_accounting; then
        echo "$DB_PID:mariadbd"
        echo "$RUN_DIR/slurmdbd.pid:slurmdbd"
    fi
    echo "$RUN_DIR/slurmctld.pid:slurmctld"
    for node in $(conf_nodes); do echo "$RUN_DIR/slurmd-$node.pid:slurmd"; done
}

count_running() {  # prints "<running> <total>"
    local item up=0 total=0
    while read -r item; do
        total=$((total + 1))
        running "${item%%:*}" "${item#*:}" && up=$((up + 1))
    done < <(daemon_list)
    echo "$up $total"
}

cmd_start() {
    local t0ns
    t0ns=$(date +%s%N)
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/slurmd" "$LOG_DIR" "$RUN_DIR" "$CONF_DIR"
    install_packages
    local conf_changed=0 up total
    write_slurm_conf | install_if_changed "$CONF_DIR/slurm.conf" 0644 && conf_changed=1
    if ((ACCOUNTING)); then
        write_slurmdbd_conf | install_if_changed "$CONF_DIR/slurmdbd.conf" 0600 || true
    fi
    read -r up total < <(count_running)
    if ((conf_changed && up > 1)); then
        # munged alone does not count: it may be someone else's
        log "settings changed: restarting the cluster"
        # the old daemons are the ones in the old config, which is gone: stop by every pid file we may have written
        do_stop_all
    elif ((!conf_changed && up == total)) && all_nodes_up; then
        log "already up ($(conf_nodes | wc -l) nodes, partition $PARTITION)"
        return 0
    fi
    fix_hosts
    start_munge
    if ((ACCOUNTING)); then
        start_mariadb
        start_slurmdbd
    fi
    start_slurm
    wait_nodes
    local ms=$((($(date +%s%N) - t0ns) / 1000000))
    log "up: $(conf_nodes | paste -sd' ' -) in partition $PARTITION, accounting=$ACCOUNTING ($((ms / 1000)).$(printf %03d $((ms % 1000))) s)"
}

cancel_jobs() {
    running "$RUN_DIR/slurmctld.pid" slurmctld || return 0
    local ids
    ids=$(timeout 10 squeue -h -o %A 2>/dev/null | paste -sd' ' -) || true
    [[ -n $ids ]] || return 0
    log "cancelling jobs $ids"
    # shellcheck disable=SC2086
    timeout 10 scancel $ids 2>/dev/null || true
    # P11: wait for the jobs to end, or their slurmstepd and processes outlive slurmd. KillWait is 5 s.
    local deadline=$((SECONDS + 15))
    while [[ -n $(timeout 5 squeue -h -o %A 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.2; done
}

do_stop_all() {
    cancel_jobs
    local -a slurm=("$RUN_DIR/slurmctld.pid:slurmctld") f
    for f in "$RUN_DIR"/slurmd-*.pid; do [[ -e $f ]] && slurm+=("$f:slurmd"); done
    stop_pids 10 "${slurm[@]}"
    stop_pids 10 "$RUN_DIR/slurmdbd.pid:slurmdbd"
    stop_pids 30 "$DB_PID:mariadbd"
    if [[ -e $RUN_DIR/munged.ours ]]; then
        stop_pids 10 "$MUNGE_PID:munged"
        rm -f "$RUN_DIR/munged.ours"
    fi
}

cmd_stop() {
    local t0ns
    t0ns=$(date +%s%N)
    do_stop_all
    rm -f "$RUN_DIR/fixture-owned"
    log "stopped ($((($(date +%s%N) - t0ns) / 1000000)) ms)"
}

cmd_reset() {
    cmd_stop
    rm -rf "$STATE_DIR" "$LOG_DIR"
    log "state wiped ($STATE_DIR, $LOG_DIR); job ids start again at 1 (P2: use a fresh submitit folder)"
}

cmd_status() {
    local item pid rc up total
    if [[ ! -f $CONF_DIR/slurm.conf ]] || ! grep -q 'slurm_local.sh' "$CONF_DIR/slurm.conf"; then
        echo "slurm-local: down (not configured)"
        return 3
    fi
    while read -r item; do
        pid=$(pid_of "${item%%:*}")
        if running "${item%%:*}" "${item#*:}"; then
            printf '  %-10s %-28s running (pid %s)\n' "${item#*:}" "$(basename "${item%%:*}")" "$pid"
        else
            printf '  %-10s %-28s stopped\n' "${item#*:}" "$(basename "${item%%:*}")"
        fi
    done < <(daemon_list)
    read -r up total < <(count_running)
    if ((up == total)) && all_nodes_up; then
        echo "slurm-local: up ($(conf_nodes | wc -l) nodes: $(conf_nodes | paste -sd' ' -))"
        timeout 5 sinfo || true
        rc=0
    elif ((up <= 1)); then
        echo "slurm-local: down"
        rc=3
    else
        echo "slurm-local: partly up ($up of $total daemons); run start to complete it or stop to end it"
        rc=1
    fi
    return $rc
}

main() {
    local cmd=${1:-}
    [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive integer, not '$NODES'"
    [[ $CPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "CPUS_PER_NODE must be a positive integer"
    [[ $MEM_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "MEM_PER_NODE must be a positive integer (MB)"
    [[ $ACCOUNTING == 0 || $ACCOUNTING == 1 ]] || die "ACCOUNTING must be 0 or 1"
    case $cmd in
    start | stop | reset)
        [[ $(id -u) == 0 ]] || die "$cmd needs root"
        if [[ -z ${_SLURM_LOCAL_LOCKED:-} ]]; then
            # One start/stop/reset at a time (two test sessions may share the machine): rerun this script under
            # flock. -o keeps the lock out of the children; a plain `exec 9>lock; flock 9` would pass fd 9 on to
            # every daemon started here, and the lock would be held for as long as they run.
            mkdir -p "$RUN_DIR"
            local rc=0
            _SLURM_LOCAL_LOCKED=1 flock -o -w 600 -E 75 "$RUN_DIR/script.lock" bash "${BASH_SOURCE[0]}" "$@" || rc=$?
            ((rc != 75)) || die "another slurm_local.sh has held $RUN_DIR/script.lock for 600 s"
            exit "$rc"
        fi
        unset _SLURM_LOCAL_LOCKED
        "cmd_$cmd"
        ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {start|stop|status|reset}   (env: NODES CPUS_PER_NODE MEM_PER_NODE ACCOUNTING PARTITION)" >&2
        exit 2
        ;;
    esac
}

main "$@"
