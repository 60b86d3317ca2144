#!/usr/bin/env bash
# What the slow integration tests need from the machine itself, installed once, outside any test body.
#   scripts/setup-test-host.sh        # idempotent; run by scripts/test before the suite when CI=true or --setup-host
# It changes the host, so it says what it does, and does it only as root with apt-get:
#   - apt-get install chromium                              (tests/test_mlflow_ui.py: the MLflow UI in a browser)
#   - apt-get install openssh-server rsync netcat-openbsd   (tests/test_ray_up.py: `ray up` over SSH to 127.0.0.1)
#   - an account dposweep-sshtest with uid 0, key login only, home /var/lib/dposweep-sshtest
#     (`ray submit` runs a bare `python` in a login shell: the test's own ~/.bashrc there puts the venv first,
#     without touching root's dotfiles). Remove it with: userdel dposweep-sshtest
# Elsewhere it installs nothing and names what is missing; the tests that need it skip with the same words.
set -euo pipefail
user=dposweep-sshtest
home=/var/lib/$user

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || missing+=(openssh-server)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v nc >/dev/null 2>&1 || missing+=(netcat-openbsd)
have_user=1
id "$user" >/dev/null 2>&1 || have_user=0

if [ ${#missing[@]} -eq 0 ] && [ $have_user -eq 1 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[host] not root with apt-get: not installing ${missing[*]:-}$([ $have_user -eq 0 ] && echo " (nor the $user account)");" \
       "the browser and ray-up tests will skip" >&2
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "[host] apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
fi
if [ $have_user -eq 0 ]; then
  echo "[host] adding account $user (uid 0, key login only, home $home)" >&2
  mkdir -p "$home"
  useradd -o -u 0 -g 0 -M -d "$home" -s /bin/bash "$user"
  usermod -p '*' "$user"  # no password, not locked: key login only
fi
