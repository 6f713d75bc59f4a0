#!/usr/bin/env bash
# Bring up a real single-machine Slurm (munge + slurmctld + slurmd -N localhost) in a scratch
# directory, with qsched's GRES/license/job_submit.lua/SPANK plugin configured. Needs root.
#
#   slurm/testing/slurm-up.sh [DIR]      (default DIR: $QSCHED_SLURM_DIR or /tmp/qsched-slurm)
#   . DIR/env.sh                         (exports SLURM_CONF; then sbatch/squeue work)
#   slurm/testing/slurm-down.sh [DIR]
#
# Environment knobs: QSCHED_ADMIN_SOCKET (plugstack admin_socket=, default DIR/qsched/admin.sock),
# QSCHED_SPANK_ARGS (extra plugstack arguments, e.g. "on_down=continue"), QSCHED_SLURM_PORT (slurmctld
# port; slurmd uses port+1, slurmdbd port+2, MariaDB port+3), QSCHED_SLURM_LICENSES (default qpu:4),
# QSCHED_SLURM_ACCOUNTING (1, the default: a private MariaDB + slurmdbd, accounting on, associations
# enforced; 0: accounting_storage/none), QSCHED_SLURM_ACCOUNTS ("ACCOUNT=USER,USER ..." associations to
# create; a user's first account is its default), QSCHED_SLURM_SITE_CONFIG (a qsched.yaml: `qsched slurm
# sync` writes qsched_site.lua from it beside job_submit.lua, and its per-pool Licenses= line replaces
# QSCHED_SLURM_LICENSES; run with $QSCHED_PYTHON, default python3).
# Facts behind the choices: /work/shared/notes/SLURM.md (copied in docs/admin/slurm.md).
set -euo pipefail
# a caller's lock (`flock FILE slurm-up.sh`) must not live on in the daemons started here
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    case $fd in 0 | 1 | 2 | 255) ;; *) eval "exec $fd>&-" 2>/dev/null || true ;; esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=${1:-${QSCHED_SLURM_DIR:-/tmp/qsched-slurm}}
PORT=${QSCHED_SLURM_PORT:-6817}
LICENSES=${QSCHED_SLURM_LICENSES:-qpu:4}
ADMIN_SOCKET=${QSCHED_ADMIN_SOCKET:-$DIR/qsched/admin.sock}
SPANK_ARGS=${QSCHED_SPANK_ARGS:-}
ACCOUNTING=${QSCHED_SLURM_ACCOUNTING:-1}
ACCOUNTS=${QSCHED_SLURM_ACCOUNTS:-}
DBD_PORT=$((PORT + 2))
DB_PORT=$((PORT + 3))
CLUSTER=qsched-test

log() { echo "slurm-up: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (slurmd, munged and apt need it)"

# --- packages ---------------------------------------------------------------------------------
need=()
pkgs=(slurmctld slurmd slurm-client munge libslurm-dev)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing packages ${need[*]} and no apt-get"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # the postinst tries to start services through systemd and is refused: harmless
    apt-get update -o DPkg::Lock::Timeout=300 -qq >/dev/null
    # other users of the machine may hold the dpkg lock for a while: wait for it
    apt-get install -o DPkg::Lock::Timeout=300 -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# an earlier run in the same dir: stop it first, the state is disposable
if [ -f "$DIR/run/slurmctld.pid" ] || [ -f "$DIR/run/slurmd.pid" ] || [ -f "$DIR/run/slurmdbd.pid" ] ||
   [ -f "$DIR/run/mariadb.pid" ]; then
    "$HERE/slurm-down.sh" "$DIR" || true
fi
mkdir -p "$DIR"/{etc,state,spool,log,run,lib,qsched,db}
# slurmstepd runs job scripts from the spool dir as the job user
chmod 755 "$DIR" "$DIR"/etc "$DIR"/lib "$DIR"/log "$DIR"/spool
# jobs of ordinary users must reach the daemon's sockets
chmod 755 "$DIR"/qsched

# --- munge ------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/run/munged.pid.tmp" 2>"$DIR/log/munged.err" ||
        die "munged did not start: $(cat "$DIR/log/munged.err")"
    # we started it, so slurm-down stops it
    mv "$DIR/run/munged.pid.tmp" "$DIR/run/munged.pid" 2>/dev/null ||
        pgrep -u munge -x munged -n >"$DIR/run/munged.pid"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munge does not work"
fi

# --- plugin and config ------------------------------------------------------------------------
make -s -C "$REPO/slurm/spank" >/dev/null
install -m 0755 "$REPO/slurm/spank/qsched_spank.so" "$DIR/lib/qsched_spank.so"

# the qsched lines from the admin snippet, with this scratch dir's paths
# pools, classes and their licences from the daemon's config (one source for the daemon and the Lua)
rm -f "$DIR/etc/qsched_site.lua"
if [ -n "${QSCHED_SLURM_SITE_CONFIG:-}" ]; then
    sync_out=$(SLURM_CONF=/nonexistent "${QSCHED_PYTHON:-python3}" -m qsched slurm sync \
        --config "$QSCHED_SLURM_SITE_CONFIG" --lua "$DIR/etc/qsched_site.lua") || die "qsched slurm sync failed"
    LICENSES=$(sed -n 's/^slurm.conf: Licenses=//p' <<<"$sync_out")
    [ -n "$LICENSES" ] || die "qsched slurm sync printed no Licenses line: $sync_out"
fi
QSCHED_LINES=$(grep -v '^\s*#' "$REPO/slurm/conf/slurm.conf" | grep -v '^\s*$' |
    sed -e "s|^PlugStackConfig=.*|PlugStackConfig=$DIR/etc/plugstack.conf|" \
        -e "s|^Licenses=.*|Licenses=$LICENSES|")

if [ "$ACCOUNTING" = 1 ]; then
    # slurmdbd keeps jobs (sacct, AdminComment) and associations; multifactor priority makes sshare's
    # fair-share factor real (PriorityCalcPeriod's minimum is one minute: usage decays that often)
    ACCOUNTING_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations
PriorityType=priority/multifactor
PriorityWeightFairshare=10000
PriorityCalcPeriod=1"
else
    ACCOUNTING_LINES="AccountingStorageType=accounting_storage/none"
fi

cat >"$DIR/etc/slurm.conf" <<EOF
# generated by slurm/testing/slurm-up.sh: a throwaway single-node cluster
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCOUNTING_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MinJobAge=3600
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# ~1 s for a trivial job end to end (1.7 s without)
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# CPUs=8 on a small machine: several 1-CPU jobs run at once
SlurmdParameters=config_overrides
$QSCHED_LINES
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 Gres=qpu:4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=localhost Name=qpu Count=4" >"$DIR/etc/gres.conf"
echo "required $DIR/lib/qsched_spank.so admin_socket=$ADMIN_SOCKET pool=aer class=batch on_down=fail $SPANK_ARGS" \
    >"$DIR/etc/plugstack.conf"
# job_submit/lua reads job_submit.lua beside slurm.conf
install -m 0644 "$REPO/slurm/job_submit.lua" "$DIR/etc/job_submit.lua"
chmod 644 "$DIR"/etc/*

cat >"$DIR/env.sh" <<EOF
export SLURM_CONF=$DIR/etc/slurm.conf
export QSCHED_SLURM_DIR=$DIR
EOF
export SLURM_CONF=$DIR/etc/slurm.conf

# --- accounting: a private MariaDB and slurmdbd ----------------------------------------------
wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll every 0.1 s
    local n=$(($1 * 10)) what=$2
    shift 2
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "$what not ready after $((n / 10)) s"
}
if [ "$ACCOUNTING" = 1 ]; then
    DB_SOCK=$DIR/run/mariadb.sock
    sql() { mariadb --no-defaults -S "$DB_SOCK" -uroot -e "$1"; }
    # the data dir survives a rerun on the same DIR (accounts and jobs stay): install it once
    if [ ! -d "$DIR/db/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root --auth-root-authentication-method=socket \
            --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db: $(tail -5 "$DIR/log/mariadb-install.log")"
    fi
    # --no-defaults: none of the system's my.cnf (a system MariaDB may own 3306); small buffers
    /usr/sbin/mariadbd --no-defaults --datadir="$DIR/db" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
        --socket="$DB_SOCK" --pid-file="$DIR/run/mariadb.pid" --log-error="$DIR/log/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=32M --innodb-log-file-size=8M \
        --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    wait_for 30 MariaDB sql "SELECT 1"
    # slurmdbd's database user (a fixed password: this server listens on 127.0.0.1 only)
    sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'qsched-test';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
# generated by slurm/testing/slurm-up.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=qsched-test
StorageLoc=slurm_acct_db
EOF
    # slurmdbd refuses a config that others can read (it holds the password); it reads slurmdbd.conf
    # from SLURM_CONF's directory
    chmod 600 "$DIR/etc/slurmdbd.conf"
    /usr/sbin/slurmdbd 2>"$DIR/log/slurmdbd.err" || die "slurmdbd: $(cat "$DIR/log/slurmdbd.err")"
    wait_for 30 slurmdbd sacctmgr -n list cluster
    # the cluster before slurmctld starts (it registers with it), then the associations asked for
    sacctmgr -n -P list cluster format=Cluster | grep -qx "$CLUSTER" ||
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    for spec in $ACCOUNTS; do
        acct=${spec%%=*}
        sacctmgr -n -P list account "$acct" format=Account | grep -qx "$acct" ||
            sacctmgr -i add account "$acct" cluster="$CLUSTER" >/dev/null
        IFS=, read -ra members <<<"${spec#*=}"
        for u in "${members[@]}"; do
            [ -n "$u" ] || continue
            # slurmctld gives an association its uid when it loads it: a user created later stays refused
            id "$u" >/dev/null 2>&1 || log "warning: no Unix user $u yet: its jobs get 'Invalid account'"
            sacctmgr -n -P list assoc user="$u" account="$acct" format=User | grep -qx "$u" ||
                sacctmgr -i add user "$u" account="$acct" cluster="$CLUSTER" >/dev/null
        done
    done
fi

# --- daemons ----------------------------------------------------------------------------------
/usr/sbin/slurmctld -i 2>"$DIR/log/slurmctld.err" || die "slurmctld: $(cat "$DIR/log/slurmctld.err")"
/usr/sbin/slurmd -N localhost 2>"$DIR/log/slurmd.err" || die "slurmd: $(cat "$DIR/log/slurmd.err")"
for _ in $(seq 600); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in idle*) break ;; esac
    sleep 0.1
done
case "${state:-}" in
    idle*) ;;
    *) tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
       die "node not idle after 60 s (state: '${state:-none}')" ;;
esac
log "up: SLURM_CONF=$SLURM_CONF (source $DIR/env.sh)"
echo "$DIR/env.sh"
