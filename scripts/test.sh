#!/usr/bin/env bash
# Set up (first run only), lint with ruff, then run the test suite; extra arguments go to pytest
# (e.g. ./scripts/test.sh tests/test_cli.py -x). Without arguments it runs all of tests/.
# A lint error stops the script before pytest runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests bench
# every extra is installed above: an import that fails is an error, not a skip (tests/conftest.py)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HYPERPELT_ALL_EXTRAS=1
if [ "$#" -eq 0 ]; then
    set -- tests
fi
exec .venv/bin/python -m pytest -q -rs "$@"
