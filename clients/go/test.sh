#!/usr/bin/env bash
# The Go client's checks, and the Go backend example's (examples/go_backend): gofmt, go vet,
# and go test against a real gateway process.
# Installs Go from Debian's packages when it is missing. Needs durable-gateway on PATH
# (or its path in $DURABLE_GATEWAY): without it the gateway tests would skip, so this
# script fails instead, and CI never passes on skipped tests.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v go >/dev/null 2>&1; then
    echo "test.sh: installing golang-go (Debian)" >&2
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq golang-go >/dev/null
fi

gateway="${DURABLE_GATEWAY:-$(command -v durable-gateway || true)}"
if [ -z "$gateway" ] || [ ! -x "$gateway" ]; then
    echo "test.sh: durable-gateway not found: install the gateway (pip install -e .) or set DURABLE_GATEWAY" >&2
    exit 1
fi
export DURABLE_GATEWAY="$gateway"

# No module downloads: the client and its tests use the standard library only.
export GOPROXY=off GOTOOLCHAIN=local GO111MODULE=on
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/go-build}"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The race detector needs cgo and a C compiler; where they are, the tests run under it.
race=()
if command -v gcc >/dev/null 2>&1 && [ "$(go env CGO_ENABLED)" = 1 ]; then race=(-race); fi

# check DIR: gofmt, go vet and go test (none skipped) for the module in DIR.
check() {
    local dir="$1"
    local unformatted
    unformatted="$(cd "$dir" && gofmt -l .)"
    if [ -n "$unformatted" ]; then
        echo "test.sh: not gofmt'd in $dir:" >&2
        echo "$unformatted" >&2
        exit 1
    fi
    (cd "$dir" && go vet ./...)
    # -p 1: one package's tests at a time, so two gateways never race for the free ports
    # each was given.
    if ! (cd "$dir" && go test "${race[@]}" -p 1 -count=1 -timeout 120s -v ./...) >"$log" 2>&1; then
        cat "$log" >&2
        echo "test.sh: go test failed in $dir" >&2
        exit 1
    fi
    grep -E '^\s*--- |^ok' "$log"
    if grep -q -- '--- SKIP' "$log"; then
        echo "test.sh: tests were skipped in $dir:" >&2
        grep -A1 -- '--- SKIP' "$log" >&2
        exit 1
    fi
}

check .
# The Go backend example: its own module, using this client through a replace directive;
# its test runs it behind a real gateway with examples/go_backend.yaml.
check ../../examples/go_backend
