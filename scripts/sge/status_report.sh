#!/bin/bash
# SGE job: where the download stands (status_report.py, read-only). Also a copy in
# $LOG_DIR/summary_YYYYMMDDHHMM.txt. Inside a pipeline (submit_pipeline.sh) it first says
# which stages ended ok and which did not, and exits 1 if one did not.
#
#   qsub scripts/sge/status_report.sh                 # or run it by hand on the login node:
#   bash scripts/sge/status_report.sh --json          # it reads, never writes, from any host
#
# Flags after the script name go to status_report.py after the ones from env.sh.
#
# Job name: qstat and the log name.
#$ -N gbif_report
# bash, whatever the queue's shell and shell_start_mode say: this script is bash.
#$ -S /bin/bash
# Start in the submit directory (SGE's default is $HOME): the log path below and the
# scripts/env.sh lookup are relative to it.
#$ -cwd
# stderr into the same file as stdout: errors appear next to the report.
#$ -j y
# The log: logs/gbif_report.o<job id>. The directory must exist before the job starts, or
# the job goes to Eqw; submit_pipeline.sh uses -o $LOG_DIR/ (and creates it).
#$ -o logs/
# Short: the report reads small counter tables (about a second at 50M images).
#$ -l h_rt=00:30:00
# No -notify: the report is read-only and may be killed at any moment. No -pe: one thread.
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

mkdir -p "$LOG_DIR"
run_report status_report.py --db "$DB" --output-dir "$LOG_DIR" \
  ${REPORT_ARGS[@]+"${REPORT_ARGS[@]}"} "$@"
