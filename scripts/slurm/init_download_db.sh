#!/bin/bash
# Slurm job: build the tracking database from the GBIF download (init_download_db.py).
#
#   sbatch scripts/slurm/init_download_db.sh                   # the ingest of $MULTIMEDIA
#   sbatch scripts/slurm/init_download_db.sh --legacy-only --processed-file /x/processed_ids.txt
#
# Submit from the repository root (or see DOWNLOAD_DB_ENV below). Flags after the script name
# go to init_download_db.py after the ones from env.sh, so they win. Resubmitting after a kill
# continues the build from its last commit. The build ends with the database frozen, ready for
# the download array.
#
# Job name: squeue, the log name, and --dependency=singleton if you queue copies.
#SBATCH --job-name=gbif_ingest
# The log: logs/gbif_ingest_<job id>.log under the submit directory. The directory must exist,
# or the job fails without a log; submit_pipeline.sh uses -o $LOG_DIR/... (and creates it).
#SBATCH --output=logs/%x_%j.log
# Append instead of truncating when Slurm requeues the job (node failure): keep both runs.
#SBATCH --open-mode=append
# One process on one node.
#SBATCH --nodes=1
#SBATCH --ntasks=1
# Two CPUs for the two parser threads (--workers 2) beside the writer.
#SBATCH --cpus-per-task=2
# Wall-clock limit. Nothing committed is lost when it is hit: resubmit.
#SBATCH --time=04:00:00
# USR1 to the batch shell (B:) 300 s before the time limit. The wrapper forwards it to the
# build, which stops after its next commit (exit 75, resumable) instead of being killed
# mid-chunk. Without B:, Slurm signals only job steps (srun), and the build is not one.
#SBATCH --signal=B:USR1@300
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

args=(--db "$DB" --install-path "$INSTALL_PATH" --progress-every "$PROGRESS_EVERY")
# the input only for a build: the other modes do not read it
case " $* " in
  *" --legacy-only "* | *" --finalize-only "* | *" --merge-only "*) ;;
  *) if [ -n "${MULTIMEDIA:-}" ]; then args+=(--multimedia "$MULTIMEDIA"); fi ;;
esac
run_stage ingest init_download_db.py "${args[@]}" ${INGEST_ARGS[@]+"${INGEST_ARGS[@]}"} "$@"
