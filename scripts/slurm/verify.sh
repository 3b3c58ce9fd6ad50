#!/bin/bash
# Slurm array job: verify the saved files, one array task per share of the images
# (gbif-download-db verify; every task reads the frozen database and writes its verdicts
# under <db>.tasks/, which a merge applies: finalize.sh --merge-only, after this job).
#
#   sbatch scripts/slurm/verify.sh                              # 4 tasks (the --array line)
#   sbatch --array=1-8 scripts/slurm/verify.sh --hash --max-mb-per-s 20
#   sbatch --dependency=afterany:<verify job id> scripts/slurm/finalize.sh --merge-only
#
# Submit from the repository root (or see DOWNLOAD_DB_ENV below), when no download array and
# no stage writes the database (the tasks refuse a database written since its last merge).
# Flags after the script name go to `gbif-download-db verify` after the ones from env.sh
# (VERIFY_ARGS), so they win. Each task takes its place K of N from SLURM_ARRAY_TASK_ID/MIN/
# COUNT (use a plain range: --array=1-N), unless --shard K/N is given.
#
# Job name: squeue, the log names, and the dependency of the merge.
#SBATCH --job-name=gbif_verify
# Logs: logs/gbif_verify_<array job id>_<task id>.log. The directory must exist, or the
# tasks fail without a log.
#SBATCH --output=logs/%x_%A_%a.log
# Append instead of truncating when Slurm requeues a task (node failure): keep both runs.
#SBATCH --open-mode=append
# The array: 4 tasks by default; --array on the sbatch command line replaces it. N may
# change only after a merge has applied the last verify array's verdicts.
#SBATCH --array=1-4
# One process per task; the file checks are threads waiting on the filesystem (--threads).
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
# Wall-clock limit; resubmitting the array continues where each task stopped.
#SBATCH --time=1-00:00:00
# USR1 to the batch shell (B:) 300 s before the time limit. The wrapper forwards it, and the
# task commits its verdicts and exits 0 in moments. (scancel's SIGTERM does the same.)
#SBATCH --signal=B:USR1@300
# The default --export=ALL hands the submitting shell's environment to the job: that is how
# DOWNLOAD_DB_ENV arrives. env.sh then activates the venv and sets the rest, so the job does
# not run with whatever Python the login shell had.
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

# Not a pipeline stage: verify is submitted on its own, never gated.
unset PIPELINE_DIR
run_stage verify -m download_db verify --db "$DB" --install-path "$INSTALL_PATH" \
  --progress-every "$PROGRESS_EVERY" ${VERIFY_ARGS[@]+"${VERIFY_ARGS[@]}"} "$@"
