#!/usr/bin/env bash
# start-slurm.sh — install (if needed) and start a single-node Slurm cluster
# (Debian 12: slurm-wlm 22.05.8 + munge 0.5.15) as root, with no systemd and
# no cgroups; daemons talk over 127.0.0.1 only.
#
#   bash start-slurm.sh          # install + configure + start; returns when the node is idle
#   bash start-slurm.sh stop     # stop slurmd, slurmctld, munged (by the PIDs in their pid files)
#   bash start-slurm.sh status
#
# Idempotent: with everything up and the config unchanged it only re-checks.
# Knobs (env): SLURM_SMOKE=1 to finish with a real 2-task array job.
# Partition "debug" (default), one node = this host, CPUs = nproc.
#
# Copied from the team's single-node scheduler notes, /work/shared/cluster/start-slurm.sh
# (scheduler.md there explains every step and pitfall); keep it in step with that file.
# No local changes.
# Checked with shellcheck; the style findings of the original (unquoted constants, loop
# counters only used for their count) are left as they are, to keep the diff small:
# shellcheck disable=SC2086,SC2034,SC2155,SC2016,SC2015,SC2231
set -euo pipefail

H=$(hostname)
CONF=/etc/slurm/slurm.conf
log() { echo "[start-slurm] $*" >&2; }

# Alive = exists and not a zombie. Pitfall: PID 1 here (not systemd) reaps
# orphaned daemons only after a delay, so a killed daemon can linger as a
# zombie whose /proc/PID/comm still reads like the live daemon.
alive() { local st; st=$(sed 's/.*) //' /proc/"$1"/stat 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ]; }
live_pid() { # $1 pidfile  $2 comm
  local f=$1 p
  [ -r "$f" ] || return 1
  p=$(tr -dc 0-9 <"$f")
  [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] && alive "$p" && echo "$p"
}
munged_pid() { live_pid /run/munge/munged.pid munged; }
ctld_pid() { live_pid /run/slurmctld.pid slurmctld; }
slurmd_pid() { live_pid /run/slurmd.pid slurmd; }
stop_pid() { # $1 pid  $2 name
  local p=$1 i
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 1 150); do alive "$p" || { log "stopped $2 ($p)"; return 0; }; sleep 0.1; done
  log "$2 ($p) still alive after 15s, sending KILL"; kill -9 "$p" 2>/dev/null || true
}
stop_slurm() {
  if p=$(slurmd_pid); then stop_pid "$p" slurmd; fi
  if p=$(ctld_pid); then stop_pid "$p" slurmctld; fi   # saves state on SIGTERM
  # slurmctld leaves /run/slurmctld.pid behind; a stale one makes the package's
  # prerm run scancel and so 'apt-get remove slurmctld' fail.
  ctld_pid >/dev/null || rm -f /run/slurmctld.pid
  slurmd_pid >/dev/null || rm -f /run/slurmd.pid
}

case "${1:-start}" in
  stop)
    stop_slurm
    if p=$(munged_pid); then stop_pid "$p" munged; fi
    exit 0 ;;
  status)
    echo "munged: $(munged_pid || echo down)  slurmctld: $(ctld_pid || echo down)  slurmd: $(slurmd_pid || echo down)"
    sinfo 2>&1 || true; squeue 2>&1 || true
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "start-slurm.sh must run as root" >&2; exit 1; }

# ---------------------------------------------------------------- 1. packages
PKGS="munge slurmctld slurmd slurm-client"
if [ "$(dpkg-query -W -f='${Status}\n' $PKGS 2>/dev/null | grep -c 'install ok installed')" = 4 ]; then
  log "packages already installed"
else
  log "installing $PKGS"
  # postinsts run 'invoke-rc.d <daemon> start' and fail the install if that
  # fails (slurmctld cannot start without slurm.conf). Deny service starts
  # for the duration; the daemons are started below.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $PKGS
  }
  apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -q && apt_install; }
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# -------------------------------------------------------------------- 2. munge
# The munge postinst creates /etc/munge/munge.key; make sure anyway.
if [ ! -s /etc/munge/munge.key ]; then
  runuser -u munge -- mungekey -c
fi
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 0755 /run/munge
if ! munged_pid >/dev/null; then
  log "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged       # daemonizes; socket /run/munge/munge.socket.2
fi
for i in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "munged is not working" >&2; exit 1; }

# --------------------------------------------------------------- 3. slurm.conf
# Node topology exactly as slurmd detects it (a mismatch drains the node).
node=$(slurmd -C | head -1)            # NodeName=vm CPUs=2 Boards=1 ... RealMemory=N
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
chown slurm:slurm /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm
cat >$CONF.new <<EOF
# single-node Slurm written by start-slurm.sh
ClusterName=ci
SlurmctldHost=$H(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups: plain process tracking, no task containment, no accounting daemon
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
# slurmd listens on 127.0.0.1 only (slurmctld 22.05 still binds 0.0.0.0:6817)
CommunicationParameters=NoInAddrAny
SchedulerType=sched/backfill
# start batch jobs at once instead of batching submissions for up to 3 s
SchedulerParameters=batch_sched_delay=0
# CR_Core, not CR_Core_Memory: with memory as a consumable each job would by
# default take the whole node's memory and tasks would run one at a time.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if cmp -s $CONF.new $CONF; then
  rm -f $CONF.new
else
  mv $CONF.new $CONF; chmod 0644 $CONF
  log "wrote $CONF"
  stop_slurm                     # running daemons must pick up the new config
fi

# ------------------------------------------------------------------ 4. daemons
if ! ctld_pid >/dev/null; then
  log "starting slurmctld"
  /usr/sbin/slurmctld            # daemonizes, drops to SlurmUser=slurm
fi
for i in $(seq 1 100); do scontrol ping 2>/dev/null | grep 'is UP' >/dev/null && break; sleep 0.1; done
scontrol ping 2>/dev/null | grep 'is UP' >/dev/null || { tail -20 /var/log/slurm/slurmctld.log >&2; echo "slurmctld is not up" >&2; exit 1; }
if ! slurmd_pid >/dev/null; then
  log "starting slurmd"
  /usr/sbin/slurmd               # runs as root (it must, to run jobs as their users)
fi
for i in $(seq 1 50); do slurmd_pid >/dev/null && break; sleep 0.1; done   # pid file is written after the fork
slurmd_pid >/dev/null || { tail -20 /var/log/slurm/slurmd.log >&2; echo "slurmd died" >&2; exit 1; }
# ready = node idle/mixed/allocated (not down/drained/unknown/not responding '*')
state() { sinfo -h -n "$H" -o %t 2>/dev/null | head -1; }
resumed=
for i in $(seq 1 150); do
  st=$(state)
  case "$st" in
    idle|mix|alloc|comp) break ;;
    drain|drng|drain\*|down|fail|failg)   # left drained/down from an earlier run
      if [ -z "$resumed" ]; then
        log "node state '$st': resuming"; scontrol update nodename="$H" state=resume 2>/dev/null || true; resumed=1
      fi ;;
  esac                                    # unk, down* (slurmd not registered yet): wait
  sleep 0.1
done
case "$(state)" in
  idle|mix|alloc|comp) ;;
  *) sinfo -R >&2 || true; tail -20 /var/log/slurm/slurmd.log >&2 || true
     echo "node $H is not usable (state '$(state)')" >&2; exit 1 ;;
esac

if [ "${SLURM_SMOKE:-0}" = 1 ]; then
  d=$(mktemp -d)
  # poll squeue: 'sbatch --wait' polls with growing sleeps (~10 s for a 1 s array)
  jid=$(cd "$d" && sbatch --parsable --array=1-2 -o 'smoke_%a.out' --wrap 'echo ok $SLURM_ARRAY_TASK_ID')
  for i in $(seq 1 600); do [ -z "$(squeue -h -j "$jid" 2>/dev/null)" ] && break; sleep 0.1; done
  [ "$(cat "$d"/smoke_1.out "$d"/smoke_2.out 2>/dev/null | grep -c '^ok')" = 2 ] || { echo "smoke job failed (files in $d)" >&2; exit 1; }
  rm -rf "$d"; log "smoke array job ok"
fi
log "ready: munged $(munged_pid), slurmctld $(ctld_pid), slurmd $(slurmd_pid), node $H $(state), partition debug"
