#!/bin/bash
# SGE job: the integrity check (status_report.py --check, read-only): SQLite's own check,
# counters against rows, and files under the image root against the success rows.
# Exit 0 when everything agrees, 1 on any problem, 3 when the database cannot be read.
#
#   qsub -hold_jid gbif_finalize scripts/sge/integrity_check.sh
#   qsub scripts/sge/integrity_check.sh --no-files            # skip the file checks
#
# Flags after the script name go to status_report.py after the ones from env.sh.
#
# Job name: qstat and the log name.
#$ -N gbif_check
# bash, whatever the queue's shell and shell_start_mode say: this script is bash.
#$ -S /bin/bash
# Start in the submit directory (SGE's default is $HOME): the log path below and the
# scripts/env.sh lookup are relative to it.
#$ -cwd
# stderr into the same file as stdout: PROBLEM lines appear next to the rest.
#$ -j y
# The log: logs/gbif_check.o<job id>. The directory must exist before the job starts, or
# the job goes to Eqw.
#$ -o logs/
# At 50M images the SQLite check and the counter scan take minutes; the file checks stat
# every saved image, which on a busy shared filesystem can take hours (or use --no-files).
#$ -l h_rt=08:00:00
# No -notify: the check is read-only and may be killed at any moment. No -pe: one thread.
# Deliberately no -V: a job must not depend on the shell it was submitted from (login-node
# modules, LD_LIBRARY_PATH, another venv). env.sh sets up everything on the node; pass a
# variable the job needs with -v.
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

# Not a pipeline stage: the check is submitted on its own, never gated.
unset PIPELINE_DIR
run_stage check status_report.py --check --db "$DB" --install-path "$INSTALL_PATH" \
  ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"} "$@"
