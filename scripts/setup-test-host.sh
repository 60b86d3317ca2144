#!/usr/bin/env bash
# What the slow integration tests need from the machine itself, installed once, outside any test body.
#   scripts/setup-test-host.sh        # idempotent; run by scripts/test before the suite when CI=true or --setup-host
# It changes the host, so it says what it does, and does it only as root with apt-get:
#   - apt-get install chromium                              (tests/test_mlflow_ui.py: the MLflow UI in a browser)
#   - apt-get install openssh-server rsync netcat-openbsd   (tests/test_ray_up.py: `ray up` over SSH to 127.0.0.1)
# No account is added: the ray-up test runs its own sshd as the user running the tests, logs in as that user,
# and keeps its keys and HOME in a temp folder.
# Elsewhere it installs nothing and names what is missing; the tests that need it skip with the same words.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || missing+=(openssh-server)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v nc >/dev/null 2>&1 || missing+=(netcat-openbsd)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[host] not root with apt-get: not installing ${missing[*]}; the browser and ray-up tests will skip" >&2
  exit 0
fi
echo "[host] apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
