#!/usr/bin/env bash
# start-sge.sh — install (if needed) and start a single-node Son of Grid Engine
# cluster from Debian 12's packages (gridengine 8.1.9), as root, with no
# systemd and no network beyond the Debian mirror.
#
#   bash start-sge.sh          # install + configure + start; returns when all.q accepts jobs
#   bash start-sge.sh stop     # stop execd and qmaster (by the PIDs in their pid files)
#   bash start-sge.sh status   # show daemons, hosts and the queue
#
# Idempotent: re-running it with everything up only re-checks the config.
# Knobs (env): SGE_SLOTS (default: nproc), SGE_QUEUE (default: all.q), SGE_PE (default: smp),
#              SGE_SMOKE=1 to finish with a real 2-task array job (-sync y).
# Afterwards qsub/qstat/qconf work from any shell (Debian's /usr/bin wrappers
# set SGE_ROOT/SGE_CELL themselves); sourcing settings.sh is optional.
#
# Copied from the team's single-node scheduler notes, /work/shared/cluster/start-sge.sh
# (scheduler.md there explains every step and pitfall); keep it in step with that file.
# Local change: step 4b adds the parallel environment `smp` that
# scripts/sge/*.sh request (-pe smp N).
# Checked with shellcheck; the style findings of the original (unquoted constants, loop
# counters only used for their count) are left as they are, to keep the diff small:
# shellcheck disable=SC2086,SC2034,SC2155,SC2016,SC2015,SC2231
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
QSPOOL=/var/spool/gridengine/qmaster
ESPOOL=/var/spool/gridengine/execd
SLOTS=${SGE_SLOTS:-$(nproc)}
QUEUE=${SGE_QUEUE:-all.q}
H=$(hostname)
log() { echo "[start-sge] $*" >&2; }

# PID from a pid file if that process is alive and is the expected daemon.
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
qmaster_pid() { live_pid $QSPOOL/qmaster.pid sge_qmaster; }
execd_pid() { local f; for f in $ESPOOL/*/execd.pid; do live_pid "$f" sge_execd && return 0; done; return 1; }

stop_pid() { # $1 pid  $2 name
  local p=$1 i
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 1 100); do alive "$p" || { log "stopped $2 ($p)"; return 0; }; sleep 0.1; done
  log "$2 ($p) still alive after 10s, sending KILL"; kill -9 "$p" 2>/dev/null || true
}

case "${1:-start}" in
  stop)
    if p=$(execd_pid); then stop_pid "$p" sge_execd; fi
    if p=$(qmaster_pid); then stop_pid "$p" sge_qmaster; fi
    exit 0 ;;
  status)
    echo "qmaster: $(qmaster_pid || echo down)  execd: $(execd_pid || echo down)"
    qhost 2>&1 || true; qstat -f 2>&1 || true
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "start-sge.sh must run as root" >&2; exit 1; }

# ---------------------------------------------------------------- 1. packages
if [ "$(dpkg-query -W -f='${Status}\n' gridengine-master gridengine-exec gridengine-client 2>/dev/null \
       | grep -c 'install ok installed')" = 3 ]; then
  log "packages already installed"
else
  log "installing gridengine packages"
  debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-common shared/gridenginemaster string $H
EOF
  # The packages' postinst runs 'invoke-rc.d gridengine-{master,exec} start'
  # and fails the install if that fails. Deny service starts for the duration
  # (the Docker-style policy-rc.d may already do so); we start daemons ourselves.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends gridengine-master gridengine-exec gridengine-client
  }
  apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -q && apt_install; }
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# ---------------------------------------------------- 2. cell + name resolution
# Call the binaries directly: Debian's /usr/bin wrappers re-run the 'arch'
# script on every call (~0.2 s each).
export SGE_ARCH=$(/usr/share/gridengine/util/arch)
for c in qconf qstat qsub qmod; do eval "$c() { /usr/lib/gridengine/$c \"\$@\"; }"; done

# Create the cell if the postinst didn't (no-op when spooldb/sge exists).
mkdir -p $COMMON $QSPOOL/job_scripts /var/spool/gridengine/spooldb $ESPOOL /var/run/gridengine
chown sgeadmin:sgeadmin $SGE_ROOT $SGE_ROOT/$SGE_CELL $COMMON $QSPOOL $QSPOOL/job_scripts \
  /var/spool/gridengine/spooldb $ESPOOL /var/run/gridengine
[ -e $COMMON/bootstrap ] || install -m0644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap $COMMON/bootstrap
su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL /var/spool/gridengine/spooldb sgeadmin" sgeadmin >/dev/null

# Make sure the hostname resolves at all.
getent hosts "$H" >/dev/null || { log "adding $H to /etc/hosts"; echo "127.0.0.1 $H" >>/etc/hosts; }
# Pitfall: here /etc/hosts has '127.0.0.1 localhost runsc vm', so the host's IP
# reverse-resolves to "localhost" and every client is refused with
#   "access denied (client IP resolved to host name "localhost". This is not
#    identical to clients host name "vm")".
# SGE's host_aliases file folds all those names into one. It is read at daemon
# start, so it must exist before sge_qmaster starts.
ip=$(getent hosts "$H" | awk '{print $1; exit}')
aliases=$( { getent hosts "$ip" | tr -s ' \t' '\n' | tail -n +2
             awk -v ip="$ip" '$1==ip {for (i=2;i<=NF;i++) print $i}' /etc/hosts
             hostname -f 2>/dev/null || true; } | grep -vx "$H" | sort -u | tr '\n' ' ')
[ "$H" = localhost ] && aliases=
printf '%s %s\n' "$H" "$aliases" | sed 's/ *$//' >$COMMON/host_aliases.new
if ! cmp -s $COMMON/host_aliases.new $COMMON/host_aliases 2>/dev/null; then
  mv $COMMON/host_aliases.new $COMMON/host_aliases
  aliases_changed=1
else
  rm -f $COMMON/host_aliases.new; aliases_changed=
fi
chown sgeadmin:sgeadmin $COMMON/host_aliases

# ------------------------------------------------------------------ 3. qmaster
if [ -n "$aliases_changed" ]; then
  # daemons started before host_aliases changed must be restarted
  if p=$(execd_pid); then stop_pid "$p" sge_execd; fi
  if p=$(qmaster_pid); then stop_pid "$p" sge_qmaster; fi
fi
if ! qmaster_pid >/dev/null; then
  echo "$H" >$COMMON/act_qmaster; chown sgeadmin:sgeadmin $COMMON/act_qmaster
  log "starting sge_qmaster"
  /usr/sbin/sge_qmaster         # daemonizes, drops to sgeadmin
fi
for i in $(seq 1 300); do qconf -sh >/dev/null 2>&1 && break; sleep 0.1; done
qconf -sh >/dev/null || { tail -20 $QSPOOL/messages >&2; echo "sge_qmaster did not come up" >&2; exit 1; }

# ------------------------------------------------------------- 4. configuration
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
# - min_uid/min_gid 0: root may run jobs (the default 1000 rejects root's jobs).
# - login_shells none: otherwise bash jobs start as login shells, /etc/profile
#   resets PATH, and even 'qsub -V' loses the submitter's PATH (venvs etc.).
# - administrator_mail none: never try to send mail.
# sge_execd reads this at start only, so a change restarts a running execd.
conf_changed=
qconf -sconf global >$T/global
if ! grep -qE '^min_uid +0$' $T/global || ! grep -qE '^min_gid +0$' $T/global \
   || ! grep -qE '^login_shells +none$' $T/global || ! grep -qE '^administrator_mail +none$' $T/global; then
  sed -i -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
         -e 's/^login_shells .*/login_shells none/' \
         -e 's/^administrator_mail .*/administrator_mail none/' $T/global
  qconf -Mconf $T/global >/dev/null 2>&1    # the file's name ("global") picks the config
  conf_changed=1
fi
# scheduler: run every second instead of every 15 s (faster turnaround)
qconf -ssconf >$T/sched
if ! grep -qE '^schedule_interval +0:0:1$' $T/sched; then
  sed -i -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
         -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
         -e 's/^flush_finish_sec .*/flush_finish_sec 1/' $T/sched
  qconf -Msconf $T/sched >/dev/null
fi
qconf -sh | grep -x "$H" >/dev/null || qconf -ah "$H" >/dev/null
qconf -ss 2>/dev/null | grep -x "$H" >/dev/null || qconf -as "$H" >/dev/null
if ! qconf -se "$H" >/dev/null 2>&1; then
  printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$H" >$T/exec
  qconf -Ae $T/exec >/dev/null
fi
if ! qconf -shgrp @allhosts >/dev/null 2>&1; then
  printf 'group_name @allhosts\nhostlist %s\n' "$H" >$T/hg; qconf -Ahgrp $T/hg >/dev/null
elif ! qconf -shgrp_resolved @allhosts | tr ' ' '\n' | grep -x "$H" >/dev/null; then
  qconf -aattr hostgroup hostlist "$H" @allhosts >/dev/null   # hostname changed since the cell was made
fi
if ! qconf -sq "$QUEUE" >/dev/null 2>&1; then
  # load_thresholds NONE: the default np_load_avg=1.75 puts the queue in alarm
  # (no scheduling) whenever a busy 2-core CI box is loaded.
  qconf -sq | sed -e "s/^qname .*/qname $QUEUE/" -e 's/^hostlist .*/hostlist @allhosts/' \
    -e "s/^slots .*/slots $SLOTS/" -e 's/^load_thresholds .*/load_thresholds NONE/' \
    -e 's/^pe_list .*/pe_list NONE/' -e 's#^shell .*#shell /bin/bash#' >$T/q
  qconf -Aq $T/q >/dev/null
else
  qconf -sq "$QUEUE" | grep -E "^slots +$SLOTS\$" >/dev/null || qconf -mattr queue slots "$SLOTS" "$QUEUE" >/dev/null
fi

# ---------------------------------------- 4b. parallel environment (gbif-download-db)
# Added for this project: its SGE job scripts request `-pe smp N` (processes and threads
# on one node), and the cell Debian creates has no parallel environment at all.
PE=${SGE_PE:-smp}
if ! qconf -sp "$PE" >/dev/null 2>&1; then
  printf 'pe_name %s\nslots 9999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves FALSE\njob_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' "$PE" >$T/pe
  qconf -Ap $T/pe >/dev/null
fi
qconf -sq "$QUEUE" | grep -E "^pe_list .*\b$PE\b" >/dev/null || qconf -mattr queue pe_list "$PE" "$QUEUE" >/dev/null

# -------------------------------------------------------------------- 5. execd
if [ -n "$conf_changed" ] && p=$(execd_pid); then stop_pid "$p" sge_execd; fi
if ! execd_pid >/dev/null; then
  log "starting sge_execd"
  /usr/sbin/sge_execd           # daemonizes, drops to sgeadmin
fi
for i in $(seq 1 50); do execd_pid >/dev/null && break; sleep 0.1; done   # pid file is written after the fork
execd_pid >/dev/null || { tail -20 $ESPOOL/*/messages >&2 || true; echo "sge_execd died" >&2; exit 1; }
# ready = the queue instance has a load report (execd registered) and no state
# flag: u(nknown), E(rror), d(isabled), a(larm), s(uspended)...
qline() { qstat -f -q "$QUEUE@$H" 2>/dev/null | awk -v q="$QUEUE@$H" '$1==q'; }
qready() { local l; l=$(qline); [ -n "$l" ] && [ "$(awk '{print $4}' <<<"$l")" != -NA- ] && [ "$(awk '{print NF}' <<<"$l")" -le 5 ]; }
cleared=
for i in $(seq 1 300); do
  qready && break
  l=$(qline)
  if [ -z "$cleared" ] && [ -n "$l" ] && [ "$(awk '{print $4}' <<<"$l")" != -NA- ]; then
    # execd reports but a flag is left from an earlier run (e.g. E, d): clear it once
    qmod -cq "$QUEUE" >/dev/null 2>&1 || true; qmod -e "$QUEUE" >/dev/null 2>&1 || true; cleared=1
  fi
  sleep 0.2
done
qready || { qstat -f >&2 || true; tail -20 $ESPOOL/*/messages >&2 || true; echo "queue $QUEUE@$H is not ready" >&2; exit 1; }

if [ "${SGE_SMOKE:-0}" = 1 ]; then
  d=$(mktemp -d)
  (cd "$d" && qsub -sync y -t 1-2 -cwd -j y -b y -N smoke 'echo ok $SGE_TASK_ID' >/dev/null) \
    && [ "$(cat "$d"/smoke.o*.1 "$d"/smoke.o*.2 2>/dev/null | grep -c '^ok')" = 2 ] \
    || { echo "smoke job failed (files in $d)" >&2; exit 1; }
  rm -rf "$d"; log "smoke array job ok"
fi
log "ready: qmaster $(qmaster_pid), execd $(execd_pid), queue $QUEUE@$H with $SLOTS slots"
