#!/bin/bash
# Submit the pipeline as SGE jobs chained with -hold_jid:
#
#   ingest (init_download_db.sh) -> download array (image_install_db.sh) -> finalize -> report
#
# usage: scripts/sge/submit_pipeline.sh [--from STAGE] [--tasks N] [--rerun-tasks K[,K...]]
#                                       [--after JOB_ID]... [--dry-run]
#
#   --from STAGE          start at ingest (default), download, finalize or report
#   --tasks N             download array of N tasks (default: the -t line of image_install_db.sh)
#   --rerun-tasks K,...   instead of the whole array, only these tasks of the N (needs --tasks;
#                         only before a merge: after one, submit the whole array again)
#   --after JOB_ID        the first stage waits until this job has ended, however it ended
#                         (repeatable; e.g. the report job of an earlier pipeline)
#   --dry-run             print the qsub commands, submit nothing
#
# Run it on the login node. It prints the job ids and the pipeline's directory.
#
# Failure propagation. SGE's -hold_jid waits for the end of a job, not for its success, and
# the one exit code that stops a chain (100) leaves the failed job in Eqw and everything
# after it held forever, with no report. So instead each job records how it ended in
# $LOG_DIR/pipeline_<time>_<pid>/ (UNIT.ok, UNIT.failed or UNIT.skipped; no file at all when
# SIGKILL came first) and a stage starts its command only when every unit of every stage
# before it ended ok. Otherwise it records `skipped` and exits 1 at once, without touching
# the database. The report job always runs: it prints each unit's outcome, then
# status_report.py (whose PIPELINE section shows the failed run from the runs table), and
# exits 1 if a stage did not end ok. A download task stopped by qdel (-notify) ends ok: it
# released its claims and committed, so finalize merges what it did, and the next array
# continues with the rest.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ENV_SH=${DOWNLOAD_DB_ENV:-$here/../env.sh}
[ -f "$ENV_SH" ] || { echo "$0: no env.sh at $ENV_SH" >&2; exit 2; }
# absolute, because the jobs start in other directories
ENV_SH=$(cd "$(dirname "$ENV_SH")" && pwd)/$(basename "$ENV_SH")
# shellcheck source=SCRIPTDIR/../env.sh
source "$ENV_SH"
# shellcheck source=SCRIPTDIR/../common.sh
source "$DOWNLOAD_DB_HOME/scripts/common.sh"

pipeline_args "$(sed -n 's/^#\$ -t 1-\([0-9][0-9]*\)$/\1/p' "$here/image_install_db.sh")" "$@"

PIPELINE_DIR=$LOG_DIR/pipeline_$(date +%Y%m%d-%H%M%S)_$$
if [ "$dry" = 0 ]; then mkdir -p "$LOG_DIR" "$PIPELINE_DIR"; : >"$PIPELINE_DIR/units"; fi
common=(-terse -o "$LOG_DIR/" -v "DOWNLOAD_DB_ENV=$ENV_SH,PIPELINE_DIR=$PIPELINE_DIR"
        ${QSUB_ARGS[@]+"${QSUB_ARGS[@]}"})
sub() { # NAME HOLD QSUB-ARGS... -> the job id (NAME stands in for it with --dry-run)
  local name=$1 hold=$2 out; shift 2
  local opt=(); if [ -n "$hold" ]; then opt=(-hold_jid "$hold"); fi
  if [ "$dry" = 1 ]; then
    echo "qsub ${common[*]} ${opt[*]} $*" >&2; echo "$name"
  else
    out=$(qsub "${common[@]}" ${opt[@]+"${opt[@]}"} "$@") \
      || { echo "$0: qsub failed: qsub ${opt[*]} $*" >&2; exit 1; }
    echo "${out%%.*}"   # -terse prints JOB, or JOB.FIRST-LAST:STEP for an array
  fi
}
unit() { # UNIT JOB: listed before the next stage is submitted, because that one's gate reads it
  if [ "$dry" = 0 ]; then echo "$1 $2" >>"$PIPELINE_DIR/units"; fi
}
hold=$(IFS=,; echo "${after[*]}")   # what the next stage waits for
all=$hold                            # what the report waits for: every job before it
add() { all=${all:+$all,}$1; }

if [ "$rank" -le 0 ]; then
  jid=$(sub INGEST "$hold" "$here/init_download_db.sh")
  unit ingest "$jid"; hold=$jid; add "$jid"
  echo "ingest    job $jid"
fi
if [ "$rank" -le 1 ]; then
  ids=()
  if [ -n "$rerun" ]; then
    # one job per task: a task submitted alone must be told which of the N it is
    for k in "${task_list[@]}"; do
      jid=$(sub "DOWNLOAD_$k" "$hold" -t "$k" "$here/image_install_db.sh" --shard "$k/$tasks")
      unit "download.$k" "$jid.$k"; ids+=("$jid")
      echo "download  job $jid (task $k of $tasks)"
    done
  else
    jid=$(sub DOWNLOAD "$hold" -t "1-$tasks" "$here/image_install_db.sh")
    for k in $(seq 1 "$tasks"); do unit "download.$k" "$jid.$k"; done
    ids+=("$jid")
    echo "download  job $jid (tasks 1-$tasks)"
  fi
  hold=$(IFS=,; echo "${ids[*]}"); add "$hold"
fi
if [ "$rank" -le 2 ]; then
  jid=$(sub FINALIZE "$hold" "$here/finalize.sh")
  unit finalize "$jid"; add "$jid"
  echo "finalize  job $jid"
fi
# The report waits for every job before it, not only the last: it must not run while any
# of them still could.
jid=$(sub REPORT "$all" "$here/status_report.sh")
unit report "$jid"
echo "report    job $jid"
echo "pipeline  $PIPELINE_DIR"
if [ "$dry" = 0 ]; then
  event submitted pipeline "$(basename "$PIPELINE_DIR") from $from: $(tr '\n' ' ' <"$PIPELINE_DIR/units" | sed 's/ $//')"
fi
echo "logs      $LOG_DIR (the report job's log has the verdict; follow with qstat and tail -f)"
