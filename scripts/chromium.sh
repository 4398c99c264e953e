# Sourced by scripts/screenshot.sh and scripts/lab_screenshot.sh: find headless Chromium, installing Debian's
# `chromium` when none is found and this runs as root with apt-get (package lists fetched first if missing).
#
#   source scripts/chromium.sh; browser="$(require_chromium screenshot)"   # prints the path, or fails naming who asked

find_browser() {
  local b
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

require_chromium() {
  local who="$1"
  if find_browser; then return 0; fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "$who: installing Debian's chromium" >&2
    if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then apt-get update -qq >&2; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    find_browser
  else
    echo "$who: no chromium found; install it (Debian: sudo apt-get install chromium)" >&2
    return 1
  fi
}
