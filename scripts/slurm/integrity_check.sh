#!/bin/bash
# Slurm job: the integrity check (status_report.py --check, read-only): SQLite's own check,
# counters against rows, and files under the image root against the success rows.
# Exit 0 when everything agrees, 1 on any problem, 3 when the database cannot be read.
#
#   sbatch --dependency=afterok:<finalize job id> scripts/slurm/integrity_check.sh
#   sbatch scripts/slurm/integrity_check.sh --no-files         # skip the file checks
#
# Flags after the script name go to status_report.py after the ones from env.sh.
#
# Job name: squeue and the log name.
#SBATCH --job-name=gbif_check
# The log: logs/gbif_check_<job id>.log. The directory must exist, or the job fails
# without a log.
#SBATCH --output=logs/%x_%j.log
# One process, one thread.
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
# At 50M images the SQLite check and the counter scan take minutes; the file checks stat
# every saved image, which on a busy shared filesystem can take hours (or use --no-files).
# No --signal: the check is read-only and may be killed at any moment.
#SBATCH --time=08:00:00
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

# Not a pipeline stage: the check is submitted on its own, never gated.
unset PIPELINE_DIR
run_stage check status_report.py --check --db "$DB" --install-path "$INSTALL_PATH" \
  ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"} "$@"
