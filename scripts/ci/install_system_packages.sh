#!/usr/bin/env bash
# System packages the test suite drives: headless Chromium (HTML report test), and, as
# root with apt, a real single-node SGE and Slurm for tests/cluster. The schedulers are
# started here too: their start scripts install what is missing and return only once jobs
# can run. .ci/run stops them again when it ends. Elsewhere tests/cluster skip, saying why.
# Idempotent and quiet; skips what is already installed. Needs root or sudo.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  here=$(dirname "$0")
  # 4 slots on a 2-core machine: the cluster tests' download tasks mostly wait on the
  # (loopback) network, and all 4 tasks of their array should run side by side.
  SGE_SLOTS=${SGE_SLOTS:-4} bash "$here/start-sge.sh"
  bash "$here/start-slurm.sh"
fi
