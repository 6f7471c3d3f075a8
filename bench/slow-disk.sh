#!/usr/bin/env bash
# Runs a command as if every synced write took FLOWMARK_SLOW_FSYNC_MS milliseconds longer
# (default 6.5, the disk the runtime's speed targets were written for), by preloading
# bench/slow-fsync.c, built here with the machine's C compiler. Child processes inherit it.
#
#   bench/slow-disk.sh ./target/release/flowmark bench ingest --mode track --connections 64,256
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lib=${TMPDIR:-/tmp}/flowmark-slow-fsync-$(id -u).so
if [[ ! -e "$lib" || "$here/slow-fsync.c" -nt "$lib" ]]; then
    cc -shared -fPIC -O2 -o "$lib.$$" "$here/slow-fsync.c" -ldl -lpthread
    mv "$lib.$$" "$lib"
fi
export FLOWMARK_SLOW_FSYNC_MS=${FLOWMARK_SLOW_FSYNC_MS:-6.5}
LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" exec "$@"
