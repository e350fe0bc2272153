#!/usr/bin/env bash
# Set up (first run) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
EXTRAS="[test]" source "$(dirname "$0")/setup.sh"
python -m pytest "$@"
