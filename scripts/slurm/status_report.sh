#!/bin/bash
# Slurm job: where the download stands (status_report.py, read-only). Also a copy in
# $LOG_DIR/summary_YYYYMMDDHHMM.txt. Inside a pipeline (submit_pipeline.sh) it first says
# which stages ended ok and which did not, and exits 1 if one did not.
#
#   sbatch scripts/slurm/status_report.sh             # or run it by hand on the login node:
#   bash scripts/slurm/status_report.sh --json        # it reads, never writes, from any host
#
# Flags after the script name go to status_report.py after the ones from env.sh.
#
# Job name: squeue and the log name.
#SBATCH --job-name=gbif_report
# The log: logs/gbif_report_<job id>.log. The directory must exist, or the job fails
# without a log; submit_pipeline.sh uses -o $LOG_DIR/... (and creates it).
#SBATCH --output=logs/%x_%j.log
# One process, one thread.
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
# Short: the report reads small counter tables (about a second at 50M images). No --signal:
# it is read-only and may be killed at any moment.
#SBATCH --time=00:30:00
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

mkdir -p "$LOG_DIR"
run_report status_report.py --db "$DB" --output-dir "$LOG_DIR" \
  ${REPORT_ARGS[@]+"${REPORT_ARGS[@]}"} "$@"
