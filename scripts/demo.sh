#!/usr/bin/env bash
# The demo: set up (first run only), then train MiniLM-L6 + HyperPELT on five GLUE tasks from local data.
# Extra arguments are key=value overrides, e.g. ./scripts/demo.sh train.steps=100
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/hyperpelt train configs/demo.yaml "$@"
