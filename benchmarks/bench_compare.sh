#!/usr/bin/env bash
# Wall time of `make compare` from nothing (a fresh folder: data generated, 12 runs, the report),
# with the load average before and after: the target is under 10 minutes on 2 idle cores.
#
#   benchmarks/bench_compare.sh                  # into /tmp/bench_compare
#   OUT=/tmp/other benchmarks/bench_compare.sh
#   MAKE_ARGS="-o .venv/.installed" benchmarks/bench_compare.sh   # a venv made otherwise
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench_compare}
rm -rf "$OUT"
echo "cores: $(nproc), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
make ${MAKE_ARGS:-} compare COMPARE_DIR="$OUT" > "$OUT.log" 2>&1 || { tail -n 20 "$OUT.log"; exit 1; }
end=$(date +%s)
echo "make compare: $((end - start)) s of wall time; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$OUT/comparison-methods.md"
