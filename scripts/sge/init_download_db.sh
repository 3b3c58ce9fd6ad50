#!/bin/bash
# SGE job: build the tracking database from the GBIF download (init_download_db.py).
#
#   qsub scripts/sge/init_download_db.sh                       # the ingest of $MULTIMEDIA
#   qsub scripts/sge/init_download_db.sh --legacy-only --processed-file /x/processed_ids.txt
#
# Submit from the repository root (or see DOWNLOAD_DB_ENV below). Flags after the script name
# go to init_download_db.py after the ones from env.sh, so they win. Resubmitting after a kill
# continues the build from its last commit. The build ends with the database frozen, ready for
# the download array.
#
# Job name: shows in qstat, names the log, and lets follow-up jobs use -hold_jid gbif_ingest.
#$ -N gbif_ingest
# bash, whatever the queue's shell and shell_start_mode say: this script is bash.
#$ -S /bin/bash
# Start in the submit directory (SGE's default is $HOME): the log path below and the
# scripts/env.sh lookup are relative to it.
#$ -cwd
# stderr into the same file as stdout: errors appear next to the progress lines.
#$ -j y
# The log: logs/gbif_ingest.o<job id>. The directory must exist before the job starts, or the
# job goes to Eqw; submit_pipeline.sh replaces it with -o $LOG_DIR/ (and creates that).
#$ -o logs/
# Hard wall-clock limit; at it SGE sends SIGKILL. Nothing committed is lost: resubmit.
#$ -l h_rt=04:00:00
# Two slots for the two parser threads (--workers 2) beside the writer. Needs a parallel
# environment named smp (ask your admins for its name: smp, omp, shm, threads ...).
#$ -pe smp 2
# On qdel (and before a suspension) send SIGUSR2/SIGUSR1 first, then kill after the queue's
# notify time: the build stops after its next commit (exit 75) instead of dying mid-chunk.
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

args=(--db "$DB" --install-path "$INSTALL_PATH" --progress-every "$PROGRESS_EVERY")
# the input only for a build: the other modes do not read it
case " $* " in
  *" --legacy-only "* | *" --finalize-only "* | *" --merge-only "*) ;;
  *) if [ -n "${MULTIMEDIA:-}" ]; then args+=(--multimedia "$MULTIMEDIA"); fi ;;
esac
run_stage ingest init_download_db.py "${args[@]}" ${INGEST_ARGS[@]+"${INGEST_ARGS[@]}"} "$@"
