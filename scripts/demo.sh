#!/usr/bin/env bash
# Set up (first run) and run the built-in demo. Extra arguments go to `adaptinf-fast demo`.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
adaptinf-fast info
adaptinf-fast demo "$@"
