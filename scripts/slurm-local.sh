#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tests and for contributors trying the cluster path.
#   scripts/slurm-local.sh up      # start munged, slurmctld, slurmd; prints the SLURM_CONF to export
#   scripts/slurm-local.sh down    # cancel jobs, stop every process `up` started (daemons, job steps, jobs)
#   scripts/slurm-local.sh status
# Needs root and Debian's packages: apt-get install slurmctld slurmd slurm-client munge (SLURM 22.05 tested).
# State, spool, logs and pid files live in $SLURM_LOCAL_DIR (default /tmp/bitfit-slurm); no cgroups, no accounting.
# Each cluster runs its own munged (its own key and socket, in that folder), so clusters side by side and the
# system's munged never depend on each other. `up` records the session of each daemon it starts ($DIR/run/sessions);
# `down` stops every process of those sessions, of this cluster's slurmstepd sessions (the jobs' processes) and their
# descendants, and no other.
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/bitfit-slurm}
export SLURM_CONF=$DIR/slurm.conf

need() { command -v "$1" >/dev/null || { echo "slurm-local: $1 not found; apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }; }

up() {
  need slurmctld; need slurmd; need sbatch; need munged
  if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
    echo "export SLURM_CONF=$SLURM_CONF"; return 0
  fi
  mkdir -p "$DIR"/{state,spool,log,run,munge}
  chmod 700 "$DIR/munge"
  [ -s "$DIR/munge/munge.key" ] || (umask 077 && head -c 1024 /dev/urandom > "$DIR/munge/munge.key")
  : > "$DIR/run/sessions"
  local host cpus mem
  host=$(hostname -s); cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  cat > "$SLURM_CONF" <<CONF
ClusterName=bitfit-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
SlurmctldPort=${SLURM_LOCAL_PORT:-6817}
SlurmdPort=$(( ${SLURM_LOCAL_PORT:-6817} + 1 ))
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  # --force: munged refuses a socket in a folder that not everyone may enter (pytest's are 0700); here the daemons
  # and every client run as root.
  started munged munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  started slurmctld slurmctld -f "$SLURM_CONF"
  started slurmd slurmd -f "$SLURM_CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "export SLURM_CONF=$SLURM_CONF"; return 0
    fi
    sleep 0.5
  done
  echo "slurm-local: the node did not come up; see $DIR/log/" >&2
  down; exit 1
}

# started NAME COMMAND...: run a daemon that writes $DIR/run/NAME.pid, and record its session (a daemon leads its
# own) with the start time of its leader, so that `down` finds its processes and never a later one of that number.
started() {
  local name=$1 pid sid
  shift
  rm -f "$DIR/run/$name.pid"
  "$@" || { echo "slurm-local: $name did not start; see $DIR/log/" >&2; down; exit 1; }
  for _ in $(seq 40); do [ -s "$DIR/run/$name.pid" ] && break; sleep 0.25; done
  pid=$(cat "$DIR/run/$name.pid" 2>/dev/null) || { echo "slurm-local: $name wrote no pid file" >&2; down; exit 1; }
  sid=$(ps -o sid= -p "$pid" | tr -d ' ')
  if [ -n "$sid" ]; then echo "$sid $(start_time "$sid")" >> "$DIR/run/sessions"; fi
}

# start_time PID: when the process started (clock ticks after boot), or "gone".
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}' | grep . || echo gone; }

# The processes `up` started and theirs: every member of a recorded session whose leader is the one recorded, or gone
# (a session's number is not given to another process while a member lives); every member of the session of a
# slurmstepd of this cluster (slurmd starts each in a session of its own, with this SLURM_CONF: its job's processes);
# and every descendant of those.
ours() {
  [ -s "$DIR/run/sessions" ] || return 0
  local sid when now pid valid=""
  while read -r sid when; do
    now=$(start_time "$sid")
    if [ "$now" = "$when" ] || [ "$now" = gone ]; then valid="$valid $sid"; fi
  done < "$DIR/run/sessions"
  for pid in $(pgrep -x slurmstepd || true); do
    if grep -qzxF "SLURM_CONF=$SLURM_CONF" "/proc/$pid/environ" 2>/dev/null; then
      valid="$valid $(ps -o sid= -p "$pid" || true)"
    fi
  done
  ps -eo pid=,ppid=,sid= | awk -v sessions="$valid" -v self=$$ '
    BEGIN { n = split(sessions, s, " "); for (i = 1; i <= n; i++) want[s[i]] = 1 }
    { ppid[$1] = $2; if ($3 in want) keep[$1] = 1 }
    END {
      do { more = 0; for (p in ppid) if (!(p in keep) && (ppid[p] in keep)) { keep[p] = 1; more = 1 } } while (more)
      for (p in keep) if (p != self) print p
    }'
}

down() {
  [ -f "$SLURM_CONF" ] || return 0
  scancel --user="$(id -un)" 2>/dev/null || true
  local pids
  pids=$(ours)
  # shellcheck disable=SC2086 # one word per pid
  if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; fi
  for _ in $(seq 40); do
    pids=$(ours); [ -z "$pids" ] && break; sleep 0.25
  done
  # shellcheck disable=SC2086
  if [ -n "$pids" ]; then kill -KILL $pids 2>/dev/null || true; fi
  for _ in $(seq 20); do [ -z "$(ours)" ] && break; sleep 0.25; done
  rm -rf "$DIR/state" "$DIR/spool"
  rm -f "$DIR/run/sessions"
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
