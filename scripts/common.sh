# scripts/common.sh: what every SGE and Slurm wrapper does around the Python command.
# Sourced by the wrappers after env.sh; not meant to be run or edited.
#
# * Runs the command as a child and forwards stop signals to it. Slurm's `--signal=B:USR1`
#   reaches only the batch shell, so `exec` would be the other way; running it as a child
#   instead lets the wrapper record how the stage ended, which the pipeline needs.
# * Inside a pipeline (submit_pipeline.sh sets PIPELINE_DIR), records each unit's outcome
#   as a marker file and refuses to start a stage whose earlier stages did not all end well.
#   Markers rather than exit codes, because SGE's -hold_jid ignores exit codes (only 100
#   stops a chain, and it leaves the failed job in Eqw and the rest held forever).
# * Tells Slack and the database, through `gbif-download-db event`, what the command cannot
#   say itself: a stage not run (recorded in runs as prerequisite_failed), a command killed,
#   the pipeline's verdict. The commands post their own start, end and failure.
# shellcheck shell=bash

# The stages of a pipeline, in order. A unit is a stage, or stage.TASK for an array task.
PIPELINE_STAGES=(ingest download finalize report)

# Job logs are files: line-buffer Python's output so that `tail -f` shows progress at once
# and lines from this wrapper and the command stay in order.
export PYTHONUNBUFFERED=1

say() { printf '%s %s: %s\n' "$(date '+%F %T')" "${STAGE:-wrapper}" "$*" >&2; }

# The array task id (SGE or Slurm), empty when this job is not an array task.
task_id() {
  if [ -n "${SGE_TASK_ID:-}" ] && [ "$SGE_TASK_ID" != undefined ]; then
    echo "$SGE_TASK_ID"
  elif [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "$SLURM_ARRAY_TASK_ID"
  fi
}

job_label() {
  local t; t=$(task_id)
  if [ -n "${JOB_ID:-}" ] && [ -n "${SGE_ROOT:-}" ]; then
    echo "SGE job ${JOB_ID}${t:+.$t}"
  elif [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "Slurm job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${t:+_$t}"
  else
    echo "no batch job"
  fi
}

# This job's log file, for the markers (best effort).
job_log() {
  if [ -n "${SGE_STDOUT_PATH:-}" ]; then
    echo "$SGE_STDOUT_PATH"
  elif [ -n "${SLURM_JOB_ID:-}" ]; then
    timeout 10 scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'StdOut=[^ ]*' | cut -d= -f2-
  fi
  return 0
}

# event EVENT UNIT MESSAGE: `gbif-download-db event` (see docs/commands.md), from the checkout
# so that it reads the Slack webhook from .env there; the URL never appears in a script or a
# log. Best effort: it never fails the job, and gives up after a minute.
event() {
  ( cd "$DOWNLOAD_DB_HOME" && timeout 60 python -m download_db event --db "$DB" \
      --event "$1" --stage "$2" --message "$3" ) || say "could not tell the $1 event of $2"
  return 0
}

# The units of a pipeline_status report that did not end ok, on one line.
not_ok() { # REPORT
  printf '%s\n' "$1" | grep -v -E '^ +[^ ]+ +ok: ' | sed 's/^ *//; s/  */ /g' | paste -sd ';' - \
    | sed 's/;/; /g'
}

stage_rank() {
  local i
  for i in "${!PIPELINE_STAGES[@]}"; do
    [ "${PIPELINE_STAGES[$i]}" = "$1" ] && { echo "$i"; return 0; }
  done
  echo "unknown stage $1" >&2
  return 1
}

# Record how a unit ended: PIPELINE_DIR/UNIT.{ok,failed,skipped} holding one line. Written
# under a temporary name and renamed, so a reader on another node never sees half a line.
record() { # unit status text
  [ -n "${PIPELINE_DIR:-}" ] || return 0
  local tmp="$PIPELINE_DIR/.$1.$$"
  printf '%s\n' "$3" >"$tmp"
  rm -f "$PIPELINE_DIR/$1.ok" "$PIPELINE_DIR/$1.failed" "$PIPELINE_DIR/$1.skipped"
  mv -f "$tmp" "$PIPELINE_DIR/$1.$2"
}

# Print one line per unit of the pipeline, and return non-zero if any unit of a stage
# before $1 (all units, without $1) did not end ok. Units come from PIPELINE_DIR/units
# (`unit job-id` lines, written by submit_pipeline.sh before it submits the next stage).
pipeline_status() { # [stage]
  local before=99 unit jid bad=0 line st
  [ -n "${1:-}" ] && before=$(stage_rank "$1")
  if [ ! -f "$PIPELINE_DIR/units" ]; then
    echo "  $PIPELINE_DIR/units is missing: PIPELINE_DIR must be a directory made by submit_pipeline.sh"
    return 1
  fi
  while read -r unit jid; do
    [ -n "$unit" ] || continue
    [ "$(stage_rank "${unit%%.*}")" -lt "$before" ] || continue
    if [ -f "$PIPELINE_DIR/$unit.ok" ]; then
      line="ok: $(cat "$PIPELINE_DIR/$unit.ok")"
      # Slurm counts a task stopped by scancel as CANCELLED although it exited 0, and then
      # cancels what depends on it with afterok: say so next to the task.
      if [[ $jid == *_* ]] && [[ $line == *" after SIG"* ]]; then
        st=$(scheduler_state "$jid")
        [ -z "$st" ] || line="$line [$st]"
      fi
    elif [ -f "$PIPELINE_DIR/$unit.failed" ]; then
      line="FAILED: $(cat "$PIPELINE_DIR/$unit.failed")"; bad=1
    elif [ -f "$PIPELINE_DIR/$unit.skipped" ]; then
      line="not run: $(cat "$PIPELINE_DIR/$unit.skipped")"; bad=1
    else
      line="NO RESULT: job $jid left none: it never started (cancelled after an earlier failure), was killed (time limit, qdel/scancel, node failure), or still runs"
      st=$(scheduler_state "$jid")
      [ -z "$st" ] || line="$line [$st]"
      bad=1
    fi
    printf '  %-14s %s\n' "$unit" "$line"
  done <"$PIPELINE_DIR/units"
  return "$bad"
}

# What the scheduler still knows about a job that left no marker: best effort, may print
# nothing (Slurm forgets finished jobs after MinJobAge without accounting; qacct lags).
scheduler_state() { # JOB, JOB.TASK (SGE) or JOB_TASK (Slurm)
  local jid=$1 s=''
  if [[ $jid == *_* ]] || [ -n "${SLURM_JOB_ID:-}" ] || ! command -v qstat >/dev/null 2>&1; then
    s=$(timeout 10 sacct -n -X -P -j "$jid" -o State 2>/dev/null | head -1) || s=''
    [ -n "$s" ] && { echo "Slurm: $s"; return 0; }
    s=$(timeout 10 scontrol show job -o "$jid" 2>/dev/null | grep -o 'JobState=[^ ]* Reason=[^ ]*' | head -1) || s=''
    [ -n "$s" ] && echo "Slurm: $s"
  else
    if timeout 10 qstat -j "${jid%%.*}" >/dev/null 2>&1; then
      echo "SGE: still queued or running"
    else
      local t=(); [[ $jid == *.* ]] && t=(-t "${jid#*.}")
      s=$(timeout 10 qacct -j "${jid%%.*}" ${t[@]+"${t[@]}"} 2>/dev/null \
          | awk '$1 == "failed" || $1 == "exit_status" {printf "%s%s", sep, $0; sep = ", "}' \
          | tr -s ' ') || s=''
      [ -n "$s" ] && echo "SGE: $s"
    fi
  fi
  return 0
}

# Lower priority on request (env.sh NICE=1): nice, and ionice's idle class where the
# kernel lets us set it (some containers and kernels refuse; then nice alone).
niced() {
  if [ "${NICE:-0}" = 1 ]; then
    if command -v ionice >/dev/null 2>&1 && ionice -c3 true 2>/dev/null; then
      echo nice -n 10 ionice -c3
    else
      echo nice -n 10
    fi
  fi
}

# H:M:S or seconds -> seconds.
to_seconds() {
  local IFS=: s=0 p
  for p in $1; do s=$((s * 60 + 10#$p)); done
  echo "$s"
}

# Send signal $1 to the command half a second from now (see run_stage), in the background
# so that this shell goes on waiting for the command.
forward() {
  [ -n "${_child:-}" ] || return 0
  { sleep 0.5; kill -s "$1" "$_child" 2>/dev/null || true; } &
  _forwarders+=("$!")
}

# run_stage STAGE SCRIPT ARGS...: run `python SCRIPT ARGS...` from the checkout as unit
# STAGE[.TASK], with signal forwarding and (in a pipeline) the gate and the marker. SCRIPT
# is a file in the checkout, or `-m download_db` for a `gbif-download-db` subcommand.
# Exits with the command's exit code; a stage not run because an earlier one failed exits 1.
run_stage() {
  STAGE=$1; shift
  local script=$1; shift
  local target=("$DOWNLOAD_DB_HOME/$script")
  if [ "$script" = -m ]; then target=(-m "$1"); shift; fi
  local t unit nice_cmd
  t=$(task_id)
  unit=$STAGE${t:+.$t}
  say "$(job_label) on $(hostname), unit $unit, env ${ENV_SH:-?}"
  if [ -n "${PIPELINE_DIR:-}" ] && [ "$STAGE" != report ]; then
    local report
    if ! report=$(pipeline_status "$STAGE"); then
      printf '%s\n' "$report" >&2
      say "not running $unit: a stage before it did not end ok (above)"
      record "$unit" skipped "$(job_label) on $(hostname) at $(date '+%F %T'): not run because a stage before it did not end ok"
      event skipped "$unit" "$(job_label): $(not_ok "$report")"
      exit 1
    fi
  fi
  # .env (contact, Slack) is looked up from the working directory
  cd "$DOWNLOAD_DB_HOME" || { say "cannot cd to $DOWNLOAD_DB_HOME"; exit 2; }
  read -r -a nice_cmd <<<"$(niced)"
  # ${a[@]+"${a[@]}"}: an empty array under `set -u` is an error in bash before 4.4
  local cmd=(${nice_cmd[@]+"${nice_cmd[@]}"} python "${target[@]}" "$@")
  say "running: ${cmd[*]}"

  _child='' _signal='' _forwarders=()
  # Forward stop signals to the command: Slurm's --signal=B:... reaches only this shell.
  # SGE (the job's process group) and scancel (every process of the job) signal the
  # command directly as well, so it may get a signal twice. The copy goes half a second
  # later: two signals in the same instant can catch a Python handler inside another
  # (threading.Event.set is not reentrant, and the process would hang until SIGKILL);
  # half a second apart they are two harmless "stop" requests.
  for sig in TERM INT USR1 USR2; do
    # shellcheck disable=SC2064  # expand $sig now
    trap "_signal=$sig; forward $sig" "$sig"
  done
  "${cmd[@]}" &
  _child=$!
  # a signal that came before $_child was known
  if [ -n "$_signal" ]; then forward "$_signal"; fi
  local rc
  while :; do
    rc=0
    wait "$_child" || rc=$?
    # a trapped signal cuts `wait` short with 128+n while the command still runs
    kill -0 "$_child" 2>/dev/null || break
  done
  trap - TERM INT USR1 USR2
  # a copy still on its way would hit nothing, or in theory a new process with that pid
  if [ ${#_forwarders[@]} -gt 0 ]; then kill "${_forwarders[@]}" 2>/dev/null || true; fi
  local how="exit $rc${_signal:+ after SIG$_signal}" log
  log=$(job_log)
  # 99 and 100 are SGE's reschedule / error-state codes; the Python commands never use
  # them, and a wrapper must not either (see the top of this file).
  if [ "$rc" = 99 ] || [ "$rc" = 100 ]; then rc=1; fi
  if [ "$rc" = 0 ]; then
    record "$unit" ok "$(job_label) on $(hostname) at $(date '+%F %T'): $how"
  else
    record "$unit" failed "$(job_label) on $(hostname) at $(date '+%F %T'): $how, log ${log:-?}"
  fi
  # Above 128 (130 is the commands' own "interrupted"): a signal the command could not
  # catch (SIGKILL: out of memory, a hard limit) ended it, so it could not say so itself.
  if [ "$rc" -gt 128 ] && [ "$rc" != 130 ]; then
    event killed "$unit" "$(job_label) on $(hostname): exit $rc (SIG$(kill -l $((rc - 128)) 2>/dev/null || echo ?)), log ${log:-?}"
  fi
  say "$unit ended: $how"
  return "$rc"
}

# The report stage: the pipeline's verdict first (when in a pipeline), then status_report.py.
# Exits 1 if any earlier unit did not end ok, else with status_report.py's code.
run_report() {
  local verdict=0 rc=0
  STAGE=report
  if [ -n "${PIPELINE_DIR:-}" ]; then
    echo "PIPELINE $(basename "$PIPELINE_DIR") (markers in $PIPELINE_DIR)"
    local status
    if status=$(pipeline_status report); then
      printf '%s\n' "$status"
      echo "  every stage ended ok"
      event ok pipeline "$(basename "$PIPELINE_DIR"): every stage ended ok"
    else
      printf '%s\n' "$status"
      event failed pipeline "$(basename "$PIPELINE_DIR"): $(not_ok "$status")"
      verdict=1
      echo "  A STAGE DID NOT END OK: its dependants were not run. Read its log in ${LOG_DIR:-the log directory},"
      echo "  fix the cause, and resubmit from that stage (DEPLOYMENT.md, \"Resuming a pipeline\")."
    fi
    echo
  fi
  run_stage report "$@" || rc=$?
  if [ "$verdict" != 0 ]; then
    record report failed "$(job_label) on $(hostname) at $(date '+%F %T'): report printed; a stage before it did not end ok"
    return 1
  fi
  return "$rc"
}

# The job's wall-clock limit in seconds from `qstat -j` (SGE exposes no variable for it),
# or nothing. qstat works from execution hosts on common setups; if not, no limit is known.
sge_h_rt() {
  [ -n "${JOB_ID:-}" ] || return 1
  local v
  v=$(qstat -j "$JOB_ID" 2>/dev/null | sed -n 's/^hard resource_list:.*h_rt=\([0-9:]*\).*/\1/p' | head -1)
  [ -n "$v" ] && to_seconds "$v"
}

# submit_pipeline.sh's usage text (its "# usage:" comment block) and flags, the same on both
# schedulers. pipeline_args sets from, rank, tasks, rerun, dry, after and task_list for the
# caller; DEFAULT_TASKS is the array size in the download script's directive.
usage() { sed -n '/^# usage:/,/--dry-run  /p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "$1"; }
# shellcheck disable=SC2034  # the caller reads these
pipeline_args() {
  local default_tasks=$1; shift
  from=ingest tasks='' rerun='' dry=0 after=()
  while [ $# -gt 0 ]; do
    case $1 in
      --from) from=${2:?}; shift 2 ;;
      --tasks) tasks=${2:?}; shift 2 ;;
      --rerun-tasks) rerun=${2:?}; from=download; shift 2 ;;
      --after) after+=("${2:?}"); shift 2 ;;
      --dry-run) dry=1; shift ;;
      -h|--help) usage 0 ;;
      *) echo "$0: unknown argument: $1" >&2; usage 64 ;;
    esac
  done
  rank=$(stage_rank "$from" 2>/dev/null) || { echo "$0: --from must be one of: ${PIPELINE_STAGES[*]}" >&2; exit 64; }
  if [ -n "$rerun" ] && [ -z "$tasks" ]; then
    echo "$0: --rerun-tasks needs --tasks N, the size of the array whose tasks you rerun" >&2; exit 64
  fi
  tasks=${tasks:-$default_tasks}
  [[ $tasks =~ ^[1-9][0-9]*$ ]] || { echo "$0: --tasks must be a positive number" >&2; exit 64; }
  task_list=()
  IFS=, read -r -a task_list <<<"${rerun:-}"
  for k in ${task_list[@]+"${task_list[@]}"}; do
    if ! [[ $k =~ ^[0-9]+$ ]] || [ "$k" -lt 1 ] || [ "$k" -gt "$tasks" ]; then
      echo "$0: --rerun-tasks: $k is not a task of 1-$tasks" >&2; exit 64
    fi
  done
}
