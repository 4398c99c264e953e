#!/usr/bin/env bash
# Render an HTML page (default: reports/index.html) to a PNG with headless Chromium.
#
#   bash scripts/screenshot.sh [IN.html] [OUT.png] [WIDTH,HEIGHT]
#   make screenshot                                   # reports/index.html -> reports/screenshot.png
#
# Uses Debian's `chromium` (or chromium-browser / google-chrome when that is what is installed); as root with
# apt package lists present it installs `chromium` when none is found. Fully offline: no sandbox, GPU, QUIC,
# sync, component updates or background networking, and a throw-away profile that is removed afterwards.
set -euo pipefail

in="${1:-reports/index.html}"
out="${2:-reports/screenshot.png}"
size="${3:-1400,3000}"

if [[ ! -f "$in" ]]; then
  echo "screenshot: $in not found (run \`make reproduce\` or \`make report\` first)" >&2
  exit 1
fi

source "$(dirname "${BASH_SOURCE[0]}")/chromium.sh"
browser="$(require_chromium screenshot)"

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
url="file://$(cd "$(dirname "$in")" && pwd)/$(basename "$in")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
rm -f "$out_abs"

# Chromium prints harmless D-Bus / GPU warnings on stderr; keep them out of the way unless it fails.
log="$profile/chromium.log"
if ! timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --disable-dev-shm-usage \
    --hide-scrollbars --user-data-dir="$profile" --window-size="$size" --virtual-time-budget=5000 \
    --screenshot="$out_abs" "$url" >"$log" 2>&1 || [[ ! -s "$out_abs" ]]; then
  cat "$log" >&2
  echo "screenshot: chromium did not write $out" >&2
  exit 1
fi
echo "screenshot: $url -> $out ($size)"
