#!/usr/bin/env bash
# The demo: set up (first run only), then train MiniLM-L6 + HyperPELT on five GLUE tasks (local files where
# they exist, else the Hugging Face hub). Extra arguments are key=value overrides, e.g. train.steps=100
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/hyperpelt train configs/demo.yaml "$@"
