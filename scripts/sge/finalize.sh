#!/bin/bash
# SGE job: fold the finished array tasks' results into the database and roll the image
# statuses up into gbifIDs (init_download_db.py --finalize-only). It leaves the database
# frozen, ready for the next array, whose number of tasks may then change.
#
#   qsub -hold_jid gbif_download scripts/sge/finalize.sh      # after the array has ended
#   qsub scripts/sge/finalize.sh --merge-only                 # merge only, no roll-up
#
# It refuses (exit 3) while array tasks may still be running; --force overrides that, and
# the running tasks' unmerged results then stay for a later merge. Flags after the script
# name go to init_download_db.py after the ones from env.sh, so they win.
#
# Job name: qstat, the log name, and -hold_jid gbif_finalize for a follow-up job.
#$ -N gbif_finalize
# bash, whatever the queue's shell and shell_start_mode say: this script is bash.
#$ -S /bin/bash
# Start in the submit directory (SGE's default is $HOME): the log path below and the
# scripts/env.sh lookup are relative to it.
#$ -cwd
# stderr into the same file as stdout: errors appear next to the progress lines.
#$ -j y
# The log: logs/gbif_finalize.o<job id>. The directory must exist before the job starts, or
# the job goes to Eqw; submit_pipeline.sh uses -o $LOG_DIR/ (and creates it).
#$ -o logs/
# Hard wall-clock limit. Merge and roll-up work in bounded chunks and can be killed and
# resubmitted at any time; at 50M images they take well under an hour on local disk.
#$ -l h_rt=04:00:00
# On qdel (and before a suspension) send SIGUSR2/SIGUSR1 first, then kill after the queue's
# notify time: it stops after its next commit (exit 75) instead of dying mid-chunk.
#$ -notify
# No -pe: merge and roll-up are one thread, one slot is enough.
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

mode=(--finalize-only)
case " $* " in *" --merge-only "*) mode=() ;; esac
run_stage finalize init_download_db.py --db "$DB" --install-path "$INSTALL_PATH" \
  --progress-every "$PROGRESS_EVERY" ${mode[@]+"${mode[@]}"} \
  ${FINALIZE_ARGS[@]+"${FINALIZE_ARGS[@]}"} "$@"
