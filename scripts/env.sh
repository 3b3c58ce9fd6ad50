# scripts/env.sh: the one file to edit, once, before submitting jobs.
#
# Every wrapper in scripts/sge/ and scripts/slurm/ sources this file on the compute node, so
# it must work there: absolute paths, no interactive commands, nothing that prints. It is
# bash, sourced under `set -euo pipefail`: an error here stops the job before it touches
# the database. To keep your settings outside the repository (so `git pull` never conflicts),
# copy it anywhere and point DOWNLOAD_DB_ENV at the copy when you submit (see DEPLOYMENT.md).
# shellcheck shell=bash disable=SC2034  # the variables are read by the wrappers that source this

# The checkout that holds image_install_db.py and .venv. The default is the directory above
# this file, which is right as long as this file stays in scripts/ of the checkout; in a
# copy kept elsewhere, write the checkout's absolute path here instead.
DOWNLOAD_DB_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Site modules, if the compute nodes need them to find the Python the venv was built with.
# Load the same ones you used to create .venv on the login node.
# module purge
# module load python/3.11
# module load sqlite/3.45

# The project's virtualenv (built on the login node: python3 -m venv .venv && .venv/bin/pip
# install -e .). Activating it puts its python first on PATH, whatever the job inherited.
# shellcheck disable=SC1091  # the venv is created at setup time
source "$DOWNLOAD_DB_HOME/.venv/bin/activate"

# Where the data lives. Use a shared filesystem that every compute node mounts, and keep the
# database next to the images. The defaults (the repository itself) suit a first test run only.
DB=$DOWNLOAD_DB_HOME/download_status.db     # e.g. /project/herb/gbif/download_status.db
INSTALL_PATH=$DOWNLOAD_DB_HOME/images       # e.g. /project/herb/gbif/images
LOG_DIR=$DOWNLOAD_DB_HOME/logs              # e.g. /project/herb/gbif/logs
# The GBIF download for the ingest: multimedia.txt, .txt.gz or the DwC-A .zip itself.
MULTIMEDIA=                                 # e.g. /project/herb/gbif/0012345-250101.zip

# NICE=1 runs every command under `nice -n 10 ionice -c3`: lower CPU priority and idle I/O
# class, to go easy on a node and a shared filesystem that others use too.
NICE=0

# Seconds between progress lines in the job logs.
PROGRESS_EVERY=60

# Extra flags per stage (bash arrays). Flags given on the qsub/sbatch command line after the
# script name come later and win. See docs/commands.md for every flag.
INGEST_ARGS=()                              # e.g. (--chunk-mb 16)
DOWNLOAD_ARGS=()                            # e.g. (--threads 32 --per-host-rate 2)
FINALIZE_ARGS=()                            # e.g. (--max-attempts 6)
REPORT_ARGS=()                              # e.g. (--html "$LOG_DIR/status.html")
CHECK_ARGS=()                               # e.g. (--no-files)
VERIFY_ARGS=()                              # e.g. (--hash --max-mb-per-s 20)

# Site flags that submit_pipeline.sh adds to every submission (project, queue, account,
# partition). Resource requests belong in the job scripts' #$ / #SBATCH lines, or here.
QSUB_ARGS=()                                # e.g. (-P herbarium -q long.q)
SBATCH_ARGS=()                              # e.g. (--account=herb --partition=long)

# Fewer malloc arenas: much less virtual memory per thread, which matters where h_vmem or
# similar limits are enforced (see DEPLOYMENT.md, Resources).
export MALLOC_ARENA_MAX=2
# Temporary sort files of the ingest's index build go here (default: $TMPDIR or /var/tmp).
# export SQLITE_TMPDIR=/project/herb/gbif/tmp
