#!/usr/bin/env bash
# Run every canonical study and write its report under reports/<name> (resumable: rerun to
# continue). Usage: bash studies/make_reports.sh [extra rnnprobe study options, e.g. --jobs 2]
set -euo pipefail
cd "$(dirname "$0")/.."
for spec in studies/*.toml; do
    name="$(basename "$spec" .toml)"
    [ "$name" = smoke ] && continue
    rm -rf "reports/$name"  # no stale figures of runs that left the study
    rnnprobe study "$spec" --out "runs/$name" --report-dir "reports/$name" "$@"
done
