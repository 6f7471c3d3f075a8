#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, one after another, on one core,
# then minimises each corpus. Crashes land in fuzz/artifacts/<target>/. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
targets=(workflow condition template segment_payload csv_import)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    cargo fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
        || echo "== $target: stopped with a finding (see artifacts/$target)"
    cargo fuzz cmin -O "$target" >/dev/null 2>&1 || true
done
