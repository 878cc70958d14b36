#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tests and for contributors trying the cluster path.
#   scripts/slurm-local.sh up      # start munged, slurmctld, slurmd; prints the SLURM_CONF to export
#   scripts/slurm-local.sh down    # cancel jobs, stop the daemons
#   scripts/slurm-local.sh status
# Needs root and Debian's packages: apt-get install slurmctld slurmd slurm-client munge (SLURM 22.05 tested).
# State, spool, logs and pid files live in $SLURM_LOCAL_DIR (default /tmp/bitfit-slurm); no cgroups, no accounting.
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/bitfit-slurm}
export SLURM_CONF=$DIR/slurm.conf

need() { command -v "$1" >/dev/null || { echo "slurm-local: $1 not found; apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }; }

up() {
  need slurmctld; need slurmd; need sbatch; need munged
  if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
    echo "export SLURM_CONF=$SLURM_CONF"; return 0
  fi
  mkdir -p "$DIR"/{state,spool,log,run}
  local host cpus mem
  host=$(hostname -s); cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  cat > "$SLURM_CONF" <<CONF
ClusterName=bitfit-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
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
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
  fi
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "export SLURM_CONF=$SLURM_CONF"; return 0
    fi
    sleep 0.5
  done
  echo "slurm-local: the node did not come up; see $DIR/log/" >&2; exit 1
}

down() {
  [ -f "$SLURM_CONF" ] || return 0
  scancel --user="$(id -un)" 2>/dev/null || true
  for d in slurmd slurmctld; do
    [ -f "$DIR/run/$d.pid" ] && kill "$(cat "$DIR/run/$d.pid")" 2>/dev/null || true
  done
  for _ in $(seq 20); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.5; done
  rm -rf "$DIR/state" "$DIR/spool"
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
