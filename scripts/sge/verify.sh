#!/bin/bash
# SGE array job: verify the saved files, one array task per share of the images
# (gbif-download-db verify; every task reads the frozen database and writes its verdicts
# under <db>.tasks/, which a merge applies: finalize.sh --merge-only, held on this job).
#
#   qsub scripts/sge/verify.sh                                  # 4 tasks (the -t line below)
#   qsub -t 1-8 scripts/sge/verify.sh --hash --max-mb-per-s 20  # 8 tasks, hashes, gently
#   qsub -hold_jid gbif_verify scripts/sge/finalize.sh --merge-only   # then apply them
#
# Submit from the repository root (or see DOWNLOAD_DB_ENV below), when no download array and
# no stage writes the database (the tasks refuse a database written since its last merge).
# Flags after the script name go to `gbif-download-db verify` after the ones from env.sh
# (VERIFY_ARGS), so they win. Each task takes its place K of N from SGE_TASK_ID/FIRST/LAST/
# STEPSIZE, unless --shard K/N is given: a task submitted alone must say which of the N it is.
#
# Job name: qstat, the log names, and -hold_jid gbif_verify for the merge.
#$ -N gbif_verify
# bash, whatever the queue's shell and shell_start_mode say: this script is bash.
#$ -S /bin/bash
# Start in the submit directory (SGE's default is $HOME): the log path below and the
# scripts/env.sh lookup are relative to it.
#$ -cwd
# stderr into the same file as stdout: errors appear next to the progress lines.
#$ -j y
# Logs: logs/gbif_verify.o<job id>.<task id>. The directory must exist before the job
# starts, or the tasks go to Eqw.
#$ -o logs/
# The array: 4 tasks by default; -t on the qsub command line replaces it. N may change only
# after a merge has applied the last verify array's verdicts (the tasks refuse otherwise).
#$ -t 1-4
# Hard wall-clock limit, at which SGE sends SIGKILL. This wrapper reads it back and passes
# --max-runtime 10 minutes shorter (a tenth for short limits); a task resubmitted after
# its limit continues where it stopped.
#$ -l h_rt=24:00:00
# On qdel (and before a suspension) send SIGUSR2/SIGUSR1 first: the task commits its
# verdicts and exits in moments. (A kill loses at most the last minute's checks.)
#$ -notify
# No -pe: the file checks are threads waiting on the filesystem (--threads), one slot is
# enough. Deliberately no -V: a job must not depend on the shell it was submitted from
# (login-node modules, LD_LIBRARY_PATH, another venv); env.sh sets up everything on the node.
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

# Not a pipeline stage: verify is submitted on its own, never gated.
unset PIPELINE_DIR
args=(verify --db "$DB" --install-path "$INSTALL_PATH" --progress-every "$PROGRESS_EVERY")
# SGE has no variable for h_rt and no signal before it; stop cleanly ahead of it instead.
if h_rt=$(sge_h_rt) && [ "$h_rt" -gt 0 ]; then
  margin=$((h_rt / 10 < 600 ? h_rt / 10 : 600))
  args+=(--max-runtime $((h_rt - margin)))
fi
run_stage verify -m download_db "${args[@]}" ${VERIFY_ARGS[@]+"${VERIFY_ARGS[@]}"} "$@"
