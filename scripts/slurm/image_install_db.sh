#!/bin/bash
# Slurm array job: download the images, one array task per share of the hosts
# (image_install_db.py; every task reads the frozen database and writes its own results
# under <db>.tasks/, which finalize.sh merges).
#
#   sbatch scripts/slurm/image_install_db.sh                   # 4 tasks (the --array line)
#   sbatch --array=1-8 scripts/slurm/image_install_db.sh       # 8 tasks (after a merge only)
#   sbatch --array=3 scripts/slurm/image_install_db.sh --shard 3/4   # task 3 of 4 again
#
# Submit from the repository root (or see DOWNLOAD_DB_ENV below). Flags after the script name
# go to image_install_db.py after the ones from env.sh, so they win. Each task takes its
# place K of N from SLURM_ARRAY_TASK_ID/MIN/COUNT (use a plain range: --array=1-N, or 0-N-1),
# unless --shard K/N is given: a task submitted alone must say which of the N it is.
#
# Job name: squeue, the log names, and the dependencies of follow-up jobs.
#SBATCH --job-name=gbif_download
# Logs: logs/gbif_download_<array job id>_<task id>.log. The directory must exist, or the
# tasks fail without a log; submit_pipeline.sh uses -o $LOG_DIR/... (and creates it).
#SBATCH --output=logs/%x_%A_%a.log
# Append instead of truncating when Slurm requeues a task (node failure): keep both runs.
#SBATCH --open-mode=append
# The array: 4 tasks by default; --array on the sbatch command line replaces it. Hosts are
# shared out over the tasks, so more tasks only help with many hosts. N may change only
# after finalize.sh has merged the last array's results (the tasks refuse otherwise).
#SBATCH --array=1-4
# One process per task on one node; it starts --processes $SLURM_CPUS_PER_TASK copies.
#SBATCH --nodes=1
#SBATCH --ntasks=1
# CPUs per task: decoding and resizing need about a core per process.
#SBATCH --cpus-per-task=4
# Wall-clock limit; resubmitting the array continues where it stopped.
#SBATCH --time=1-00:00:00
# USR1 to the batch shell (B:) 300 s before the time limit. The wrapper forwards it to the
# downloader, which releases its claims, commits and exits 0 in seconds, instead of being
# killed (SIGKILL) with claims held. Without B:, Slurm signals only job steps (srun), and
# the downloader is not one. (scancel sends SIGTERM to the whole job, with the same effect.)
#SBATCH --signal=B:USR1@300
# When a job this one depends on fails (e.g. the ingest), cancel this one instead of leaving
# it pending forever with DependencyNeverSatisfied.
#SBATCH --kill-on-invalid-dep=yes
# The default --export=ALL hands the submitting shell's environment to the job: that is how
# DOWNLOAD_DB_ENV and PIPELINE_DIR arrive. env.sh then activates the venv and sets the rest,
# so the job does not run with whatever Python the login shell had.
set -euo pipefail

# Load env.sh. A batch job runs a copy of this script from the spool (slurmd), so "$0"
# does not point into scripts/: DOWNLOAD_DB_ENV wins, then env.sh beside this script (run
# by hand), then scripts/env.sh in the submit directory (the job's working directory).
ENV_SH=${DOWNLOAD_DB_ENV:-$(dirname "$0")/../env.sh}
[ -n "${DOWNLOAD_DB_ENV:-}" ] || [ -f "$ENV_SH" ] || ENV_SH=$PWD/scripts/env.sh
[ -f "$ENV_SH" ] || { echo "$0: cannot find env.sh: submit from the repository root, or set DOWNLOAD_DB_ENV=/path/to/env.sh" >&2; exit 2; }
# shellcheck source=SCRIPTDIR/../env.sh
source "$ENV_SH"
# shellcheck source=SCRIPTDIR/../common.sh
source "$DOWNLOAD_DB_HOME/scripts/common.sh"

rc=0
run_stage download image_install_db.py --db "$DB" --install-path "$INSTALL_PATH" \
  --processes "${SLURM_CPUS_PER_TASK:-1}" --progress-every "$PROGRESS_EVERY" \
  ${DOWNLOAD_ARGS[@]+"${DOWNLOAD_ARGS[@]}"} "$@" || rc=$?
# 69: this node had no network for --offline-timeout; nothing was spent on the images. Name
# the node and the command that runs this task again, alone, anywhere but here.
if [ "$rc" = 69 ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  k=$(( SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0} + 1 )) n=${SLURM_ARRAY_TASK_COUNT:-?}
  say "node $(hostname) has no network; to run this task on another node: sbatch --array=$SLURM_ARRAY_TASK_ID --exclude=$(hostname -s) scripts/slurm/image_install_db.sh --shard $k/$n"
fi
exit "$rc"
