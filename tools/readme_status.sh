#!/bin/sh
# The scene of the README's ipcsem-status example: two semaphores, holders
# and a queue, made with `ipcsem run`; prints the two views, then cleans up.
set -e
PATH="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin:$PATH"
export PATH

cleanup() {
    kill $(jobs -p) 2>/dev/null || true   # ipcsem run passes SIGTERM on to its command
    wait 2>/dev/null || true
    ipcsem rm gpu licences 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP PIPE

ipcsem create gpu --capacity 4 --slots >/dev/null
ipcsem create licences --capacity 10 >/dev/null
ipcsem run gpu --units 2 -- sleep 60 & sleep 1
ipcsem run gpu -- sleep 60 & sleep 1
ipcsem run licences --units 3 -- sleep 60 & sleep 1
ipcsem run gpu --units 2 --priority 5 -- sleep 60 & sleep 1.5
ipcsem run gpu -- sleep 60 & sleep 3
echo '$ ipcsem-status'
ipcsem-status | grep -E "^NAME|^gpu |^licences "
echo
echo '$ ipcsem-status gpu'
ipcsem-status gpu
