#!/usr/bin/env bash
# The V&L demo: set up (first run only), extract the easy-VQA images' EfficientNet-Lite0 grid features into
# features/ (first run only: later runs find every image cached), then train MiniLM-L6 + VL-HyperPELT on
# easy-VQA. Extra arguments are key=value overrides of configs/vl_easyvqa.yaml, e.g. train.steps=100
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
.venv/bin/hyperpelt features easy-vqa --out features/easy_vqa.efficientnet-lite0.safetensors
exec .venv/bin/hyperpelt train configs/vl_easyvqa.yaml "$@"
