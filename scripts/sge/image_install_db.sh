#!/bin/bash
# SGE array job: download the images, one array task per share of the hosts
# (image_install_db.py; every task reads the frozen database and writes its own results
# under <db>.tasks/, which finalize.sh merges).
#
#   qsub scripts/sge/image_install_db.sh                      # 4 tasks (the -t line below)
#   qsub -t 1-8 scripts/sge/image_install_db.sh               # 8 tasks (after a merge only)
#   qsub -t 3 scripts/sge/image_install_db.sh --shard 3/4     # task 3 of 4 again, alone
#
# Submit from the repository root (or see DOWNLOAD_DB_ENV below). Flags after the script name
# go to image_install_db.py after the ones from env.sh, so they win. Each task takes its
# place K of N from SGE_TASK_ID/FIRST/LAST/STEPSIZE (so -t 2-10:2 is 5 tasks), unless
# --shard K/N is given: a task submitted alone (-t 3) must say which of the N it is.
#
# Job name: qstat, the log names, and -hold_jid gbif_download for a follow-up job.
#$ -N gbif_download
# bash, whatever the queue's shell and shell_start_mode say: this script is bash.
#$ -S /bin/bash
# Start in the submit directory (SGE's default is $HOME): the log path below and the
# scripts/env.sh lookup are relative to it.
#$ -cwd
# stderr into the same file as stdout: errors appear next to the progress lines.
#$ -j y
# Logs: logs/gbif_download.o<job id>.<task id>. The directory must exist before the job
# starts, or the tasks go to Eqw; submit_pipeline.sh uses -o $LOG_DIR/ (and creates it).
#$ -o logs/
# The array: 4 tasks by default; -t on the qsub command line replaces it. Hosts are shared
# out over the tasks, so more tasks only help with many hosts. N may change only after
# finalize.sh has merged the last array's results (the tasks refuse otherwise).
#$ -t 1-4
# Hard wall-clock limit, at which SGE sends SIGKILL. This wrapper reads it back and passes
# --max-runtime 10 minutes shorter (a tenth for short limits), so tasks end cleanly first.
#$ -l h_rt=24:00:00
# Slots for the processes of a task: the wrapper passes --processes $NSLOTS (decoding and
# resizing need about a core each). Needs a parallel environment named smp (ask your admins
# for its name: smp, omp, shm, threads ...).
#$ -pe smp 4
# On qdel (and before a suspension) send SIGUSR2/SIGUSR1 first and kill only after the
# queue's notify time: the downloader releases its claims, commits and exits 0 in seconds.
#$ -notify
# Deliberately no -V: a job must not depend on the shell it was submitted from (login-node
# modules, LD_LIBRARY_PATH, another venv). env.sh sets up everything on the node; pass a
# variable the job needs with -v (submit_pipeline.sh passes DOWNLOAD_DB_ENV and PIPELINE_DIR).
set -euo pipefail

# Load env.sh. A batch job runs a spooled copy of this script, so "$0" points into the
# scheduler's spool, not into scripts/: DOWNLOAD_DB_ENV wins, then env.sh beside this
# script (run by hand), then scripts/env.sh in the submit directory.
ENV_SH=${DOWNLOAD_DB_ENV:-$(dirname "$0")/../env.sh}
[ -n "${DOWNLOAD_DB_ENV:-}" ] || [ -f "$ENV_SH" ] || ENV_SH=$PWD/scripts/env.sh
[ -f "$ENV_SH" ] || { echo "$0: cannot find env.sh: submit from the repository root, or pass -v DOWNLOAD_DB_ENV=/path/to/env.sh" >&2; exit 2; }
# shellcheck source=SCRIPTDIR/../env.sh
source "$ENV_SH"
# shellcheck source=SCRIPTDIR/../common.sh
source "$DOWNLOAD_DB_HOME/scripts/common.sh"

args=(--db "$DB" --install-path "$INSTALL_PATH" --processes "${NSLOTS:-1}"
      --progress-every "$PROGRESS_EVERY")
# SGE has no variable for h_rt and no signal before it; stop cleanly ahead of it instead.
if h_rt=$(sge_h_rt) && [ "$h_rt" -gt 0 ]; then
  margin=$((h_rt / 10 < 600 ? h_rt / 10 : 600))
  args+=(--max-runtime $((h_rt - margin)))
fi
rc=0
run_stage download image_install_db.py "${args[@]}" \
  ${DOWNLOAD_ARGS[@]+"${DOWNLOAD_ARGS[@]}"} "$@" || rc=$?
# 69: this node had no network for --offline-timeout; nothing was spent on the images. Name
# the node and the command that runs this task again, alone, anywhere but here.
if [ "$rc" = 69 ] && [ -n "${SGE_TASK_ID:-}" ] && [ "$SGE_TASK_ID" != undefined ]; then
  first=${SGE_TASK_FIRST:-1} step=${SGE_TASK_STEPSIZE:-1}
  k=$(( (SGE_TASK_ID - first) / step + 1 )) n=$(( (${SGE_TASK_LAST:-$SGE_TASK_ID} - first) / step + 1 ))
  say "node $(hostname) has no network; to run this task on another node: qsub -t $SGE_TASK_ID -l 'h=!$(hostname -s)' scripts/sge/image_install_db.sh --shard $k/$n"
fi
exit "$rc"
