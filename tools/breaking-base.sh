#!/usr/bin/env bash
# Prints the git revision whose protos `buf breaking` compares with: main's
# head when the work differs from main, else the protos before their last
# change on main. Prints nothing when there is no earlier version.
set -euo pipefail
cd "$(dirname "$0")/.."
head=$(git rev-parse HEAD 2>/dev/null) || exit 0
main=$(git rev-parse --verify -q refs/heads/main || git rev-parse --verify -q refs/remotes/origin/main || true)
if [ -n "$main" ] && [ "$main" != "$head" ]; then
  echo "$main"; exit 0
fi
if [ -n "$(git status --porcelain -- proto third_party buf.yaml)" ]; then
  echo "$head"; exit 0
fi
last=$(git log -1 --format=%H -- proto third_party buf.yaml)
[ -n "$last" ] || exit 0
git rev-parse --verify -q "$last^" || true
