#!/usr/bin/env bash
# Stop what slurm-up.sh started in DIR (by the PIDs in DIR/run, never by name). munged is stopped
# only when slurm-up started it and no other Slurm daemon still needs it. Pass --purge to also delete DIR.
set -uo pipefail

PURGE=0
args=()
for a in "$@"; do
    if [ "$a" = --purge ]; then PURGE=1; else args+=("$a"); fi
done
DIR=${args[0]:-${QSCHED_SLURM_DIR:-/tmp/qsched-slurm}}

stop() {  # stop PIDFILE: SIGTERM, wait up to 5 s, then SIGKILL
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$f"
}

# slurmstepd processes of still-running jobs die with their steps once slurmd is gone; kill those
# under this cluster's spool dir so the next run starts clean
if [ -d "$DIR/spool" ]; then
    for p in $(pgrep -x slurmstepd 2>/dev/null); do
        if grep -qs "$DIR" "/proc/$p/environ" "/proc/$p/cmdline" 2>/dev/null ||
           [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$DIR/spool/slurmd-localhost" ]; then
            kill -KILL "$p" 2>/dev/null
        fi
    done
fi
stop "$DIR/run/slurmd.pid"
stop "$DIR/run/slurmctld.pid"
# slurmctld first: it sends its last job records to slurmdbd, which writes them to MariaDB
stop "$DIR/run/slurmdbd.pid"
stop "$DIR/run/mariadb.pid"
# munged is shared by every Slurm on the machine (other slurm-up dirs reuse the one we started):
# stop it only when we started it and no slurmctld/slurmd/slurmdbd is left
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || pgrep -x slurmdbd >/dev/null; then
    rm -f "$DIR/run/munged.pid"
else
    stop "$DIR/run/munged.pid"
fi
[ "$PURGE" = 1 ] && rm -rf "$DIR"
echo "slurm-down: stopped $DIR" >&2
exit 0
