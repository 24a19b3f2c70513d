#!/usr/bin/env bash
# The sustained-load test at length: 16 readers over a dataset several times the cache,
# every byte checked, RSS, descriptors and budgets sampled. CI runs it for 15 s.
#   scripts/load-test.sh [SECONDS]     (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
BICACHE_LOAD_SECS=${1:-300} cargo test --release --test reliability \
    sixteen_readers_over_a_dataset_larger_than_the_cache -- --nocapture
