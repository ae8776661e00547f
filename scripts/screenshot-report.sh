#!/usr/bin/env bash
# Renders the quickstart's run report with headless Chromium:
# runs `scoregen quickstart`, then screenshots runs/quickstart/report.html
# to docs/img/report-quickstart.png. Installs chromium with apt-get when missing.
#
#   scripts/screenshot-report.sh [RUN_DIR]     (default: runs/quickstart; an existing
#                                                report there is reused with --reuse)
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=runs/quickstart
reuse=0
for arg in "$@"; do
    case "$arg" in
        --reuse) reuse=1 ;;
        *) run_dir="$arg" ;;
    esac
done
out=docs/img/report-quickstart.png

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    echo "chromium not found; installing it with apt-get" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi

if [ "$reuse" -eq 0 ] || [ ! -f "$run_dir/report.html" ]; then
    cargo build --release -p scoregen-cli
    bin="${CARGO_TARGET_DIR:-target}/release/scoregen"
    RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1} "$bin" quickstart --out "$run_dir"
fi

mkdir -p "$(dirname "$out")"
# --no-sandbox: Chromium refuses to start as root (CI containers) otherwise.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="$PWD/$out" --window-size=1200,4000 "file://$PWD/$run_dir/report.html" 2>/dev/null
echo "wrote $out"
