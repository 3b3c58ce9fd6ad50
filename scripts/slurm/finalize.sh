#!/bin/bash
# Slurm job: fold the finished array tasks' results into the database and roll the image
# statuses up into gbifIDs (init_download_db.py --finalize-only). It leaves the database
# frozen, ready for the next array, whose number of tasks may then change.
#
#   sbatch --dependency=afterok:<array job id> scripts/slurm/finalize.sh
#   sbatch scripts/slurm/finalize.sh --merge-only              # merge only, no roll-up
#
# It refuses (exit 3) while array tasks may still be running; --force overrides that, and
# the running tasks' unmerged results then stay for a later merge. Flags after the script
# name go to init_download_db.py after the ones from env.sh, so they win.
#
# Job name: squeue and the log name.
#SBATCH --job-name=gbif_finalize
# The log: logs/gbif_finalize_<job id>.log. The directory must exist, or the job fails
# without a log; submit_pipeline.sh uses -o $LOG_DIR/... (and creates it).
#SBATCH --output=logs/%x_%j.log
# Append instead of truncating when Slurm requeues the job (node failure): keep both runs.
#SBATCH --open-mode=append
# One process, one thread: merge and roll-up are sequential.
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
# Merge and roll-up work in bounded chunks and can be killed and resubmitted at any time;
# at 50M images they take well under an hour on local disk.
#SBATCH --time=04:00:00
# USR1 to the batch shell (B:) 300 s before the time limit; the wrapper forwards it and the
# command stops after its next commit (exit 75, resumable). Without B:, Slurm signals only
# job steps (srun), and the command is not one.
#SBATCH --signal=B:USR1@300
# When a job this one depends on fails (a download task), cancel this one instead of
# leaving it pending forever with DependencyNeverSatisfied.
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

mode=(--finalize-only)
case " $* " in *" --merge-only "*) mode=() ;; esac
run_stage finalize init_download_db.py --db "$DB" --install-path "$INSTALL_PATH" \
  --progress-every "$PROGRESS_EVERY" ${mode[@]+"${mode[@]}"} \
  ${FINALIZE_ARGS[@]+"${FINALIZE_ARGS[@]}"} "$@"
