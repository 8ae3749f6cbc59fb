#!/usr/bin/env bash
# backlog.sh: run the backlog CLI from the repository root, (re)building
# bin/backlog first when it is missing or older than the CLI's sources.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$root/bin/backlog"

stale() {
	[[ -x "$bin" ]] || return 0
	local newer
	newer="$(find "$root/services/cli" "$root/services/kit" \
		\( -name '*.go' -o -name go.mod -o -name go.sum \) \
		-newer "$bin" -print -quit 2>/dev/null)"
	[[ -n "$newer" ]]
}

if stale; then
	mkdir -p "$root/bin"
	# Build to a temp name and rename, so concurrent runs never see half a binary.
	tmp="$root/bin/.backlog.$$"
	trap 'rm -f "$tmp"' EXIT
	# Built from the CLI's module directory: the same as
	# `go build ./services/cli/cmd/backlog` at the root with go.work, and it
	# still works with GOWORK=off (the module's go.mod replaces ../kit).
	(cd "$root/services/cli" && go build -o "$tmp" ./cmd/backlog) >&2
	mv -f "$tmp" "$bin"
	trap - EXIT
fi

exec "$bin" "$@"
