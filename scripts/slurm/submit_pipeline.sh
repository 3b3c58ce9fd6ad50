#!/bin/bash
# Submit the pipeline as Slurm jobs chained with --dependency:
#
#   ingest (init_download_db.sh) -> download array (image_install_db.sh) -> finalize -> report
#
# usage: scripts/slurm/submit_pipeline.sh [--from STAGE] [--tasks N] [--rerun-tasks K[,K...]]
#                                         [--after JOB_ID]... [--dry-run]
#
#   --from STAGE          start at ingest (default), download, finalize or report
#   --tasks N             download array of N tasks (default: the --array line of image_install_db.sh)
#   --rerun-tasks K,...   instead of the whole array, only these tasks of the N (needs --tasks;
#                         only before a merge: after one, submit the whole array again)
#   --after JOB_ID        the first stage waits until this job has ended, however it ended
#                         (repeatable; e.g. the report job of an earlier pipeline)
#   --dry-run             print the sbatch commands, submit nothing
#
# Run it on the login node. It prints the job ids and the pipeline's directory.
#
# Failure propagation. Each stage depends on the one before with afterok, and is submitted
# with --kill-on-invalid-dep=yes: when a job fails (non-zero exit, time limit, scancel, node
# failure; for an array, any task), Slurm cancels the stages after it instead of leaving
# them pending forever. The report depends on all of them with afterany, so it always runs:
# it prints each unit's outcome from the markers the jobs leave in
# $LOG_DIR/pipeline_<time>_<pid>/ (UNIT.ok / UNIT.failed / UNIT.skipped, nothing if a unit
# never ran or was killed), then status_report.py (whose PIPELINE section shows the failed
# run from the runs table), and exits 1 if a stage did not end ok. The jobs also check the
# markers before they start their command (the same gate as on SGE), so a dependency
# given by hand cannot start a stage after a failed one either. A download task stopped
# by scancel exits 0 after releasing its claims, but Slurm counts it CANCELLED, so finalize
# does not run: rerun the task (--rerun-tasks K --tasks N), then finalize merges everything.
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

pipeline_args "$(sed -n 's/^#SBATCH --array=1-\([0-9][0-9]*\)$/\1/p' "$here/image_install_db.sh")" "$@"

PIPELINE_DIR=$LOG_DIR/pipeline_$(date +%Y%m%d-%H%M%S)_$$
if [ "$dry" = 0 ]; then mkdir -p "$LOG_DIR" "$PIPELINE_DIR"; : >"$PIPELINE_DIR/units"; fi
common=(--parsable --kill-on-invalid-dep=yes
        "--export=ALL,DOWNLOAD_DB_ENV=$ENV_SH,PIPELINE_DIR=$PIPELINE_DIR"
        ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"})
sub() { # NAME DEPENDENCY SBATCH-ARGS... -> the job id (NAME stands in for it with --dry-run)
  local name=$1 dep=$2 out; shift 2
  local opt=(); if [ -n "$dep" ]; then opt=("--dependency=$dep"); fi
  if [ "$dry" = 1 ]; then
    echo "sbatch ${common[*]} ${opt[*]} $*" >&2; echo "$name"
  else
    out=$(sbatch "${common[@]}" ${opt[@]+"${opt[@]}"} "$@") \
      || { echo "$0: sbatch failed: sbatch ${opt[*]} $*" >&2; exit 1; }
    echo "${out%%;*}"   # --parsable prints JOB or JOB;CLUSTER
  fi
}
unit() { # UNIT JOB: listed before the next stage is submitted, because that one's gate reads it
  if [ "$dry" = 0 ]; then echo "$1 $2" >>"$PIPELINE_DIR/units"; fi
}
join() { local IFS=:; echo "$*"; }
dep=''; if [ ${#after[@]} -gt 0 ]; then dep=afterany:$(join "${after[@]}"); fi
all=("${after[@]+"${after[@]}"}")   # what the report waits for: every job before it
log1=$LOG_DIR/%x_%j.log

if [ "$rank" -le 0 ]; then
  jid=$(sub INGEST "$dep" -o "$log1" "$here/init_download_db.sh")
  unit ingest "$jid"; dep=afterok:$jid; all+=("$jid")
  echo "ingest    job $jid"
fi
if [ "$rank" -le 1 ]; then
  ids=()
  if [ -n "$rerun" ]; then
    # one job per task: a task submitted alone must be told which of the N it is
    for k in "${task_list[@]}"; do
      jid=$(sub "DOWNLOAD_$k" "$dep" -o "$LOG_DIR/%x_%A_%a.log" --array="$k" \
              "$here/image_install_db.sh" --shard "$k/$tasks")
      unit "download.$k" "${jid}_$k"; ids+=("$jid")
      echo "download  job $jid (task $k of $tasks)"
    done
  else
    jid=$(sub DOWNLOAD "$dep" -o "$LOG_DIR/%x_%A_%a.log" --array="1-$tasks" \
            "$here/image_install_db.sh")
    for k in $(seq 1 "$tasks"); do unit "download.$k" "${jid}_$k"; done
    ids+=("$jid")
    echo "download  job $jid (tasks 1-$tasks)"
  fi
  dep=afterok:$(join "${ids[@]}"); all+=("${ids[@]}")
fi
if [ "$rank" -le 2 ]; then
  jid=$(sub FINALIZE "$dep" -o "$log1" "$here/finalize.sh")
  unit finalize "$jid"; all+=("$jid")
  echo "finalize  job $jid"
fi
# afterany on every job before it: the report runs however they ended (cancelled included)
rdep=''; if [ ${#all[@]} -gt 0 ]; then rdep=afterany:$(join "${all[@]}"); fi
jid=$(sub REPORT "$rdep" -o "$log1" "$here/status_report.sh")
unit report "$jid"
echo "report    job $jid"
echo "pipeline  $PIPELINE_DIR"
if [ "$dry" = 0 ]; then
  event submitted pipeline "$(basename "$PIPELINE_DIR") from $from: $(tr '\n' ' ' <"$PIPELINE_DIR/units" | sed 's/ $//')"
fi
echo "logs      $LOG_DIR (the report job's log has the verdict; follow with squeue and tail -f)"
