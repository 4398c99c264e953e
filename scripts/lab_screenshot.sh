#!/usr/bin/env bash
# Check that JupyterLab, started as `make lab` starts it, opens a notebook without the "official Jupyter news" prompt.
#
#   bash scripts/lab_screenshot.sh [NOTEBOOK] [OUT.png]
#   make lab-screenshot                 # notebooks/04_main_table.ipynb -> reports/lab_screenshot.png
#
# Starts JupyterLab headless on a free localhost port with the project's settings overrides
# (.jupyter/lab/settings/overrides.json, passed as --LabApp.app_settings_dir exactly as the Makefile's `lab` target
# does), no token, no browser, and a throw-away user-settings, workspaces and runtime folder (so neither the user's
# own ~/.jupyter settings nor a saved workspace can hide or cause the prompt, and nothing is written to ~; the
# checkpoint JupyterLab makes on opening a notebook goes there too, not to notebooks/.ipynb_checkpoints). Opens
# /lab/tree/NOTEBOOK in headless Chromium, writes the screenshot, dumps the DOM and fails (exit 1) unless the
# notebook's title is on the page and the news prompt is not. Stops the server at the end.
#
# LAB_APP_SETTINGS_DIR=<folder> replaces the project's settings folder: with an empty folder the prompt must appear,
# which checks the check (`LAB_APP_SETTINGS_DIR=$(mktemp -d) EXPECT_PROMPT=1 bash scripts/lab_screenshot.sh`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
notebook="${1:-notebooks/04_main_table.ipynb}"
out="${2:-reports/lab_screenshot.png}"
settings="${LAB_APP_SETTINGS_DIR:-$root/.jupyter/lab/settings}"
expect_prompt="${EXPECT_PROMPT:-0}"
venv="${VENV:-$root/.venv}"
jupyter="${JUPYTER:-$venv/bin/jupyter}"
python="${PYTHON_BIN:-$venv/bin/python}"
prompt_text="official Jupyter news"     # JupyterLab 4: "Would you like to get notified about official Jupyter news?"

[[ -f "$notebook" ]] || { echo "lab-screenshot: $notebook not found" >&2; exit 1; }
[[ -x "$jupyter" ]] || { echo "lab-screenshot: $jupyter not found (run \`make setup\`, or set JUPYTER=)" >&2; exit 1; }
# The notebook's title: the first Markdown heading of the notebook, without its leading '#'s and number.
title="$("$python" - "$notebook" <<'EOF'
import json, re, sys
nb = json.load(open(sys.argv[1], encoding="utf-8"))
for cell in nb["cells"]:
    if cell["cell_type"] == "markdown":
        for line in "".join(cell["source"]).splitlines():
            if line.startswith("#"):
                text = re.sub(r"^\d+\s*·\s*", "", line.lstrip("#").strip())   # "04 · Main results table: ..."
                print(text.split(":")[0].strip())
                sys.exit(0)
sys.exit("no Markdown heading")
EOF
)"

source "$(dirname "${BASH_SOURCE[0]}")/chromium.sh"
browser="$(require_chromium lab-screenshot)"

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/user-settings" "$tmp/workspaces" "$tmp/runtime" "$tmp/profile"

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
nb_dir="$(dirname "$notebook")"
nb_name="$(basename "$notebook")"

root_flag=()
[[ "$(id -u)" == 0 ]] && root_flag=(--ServerApp.allow_root=True)   # containers run as root; the server binds localhost
JUPYTERLAB_SETTINGS_DIR="$tmp/user-settings" JUPYTERLAB_WORKSPACES_DIR="$tmp/workspaces" \
JUPYTER_RUNTIME_DIR="$tmp/runtime" \
  "$jupyter" lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port="$port" --ServerApp.port_retries=0 \
    --IdentityProvider.token= --ServerApp.password= --notebook-dir="$nb_dir" \
    --FileCheckpoints.checkpoint_dir="$tmp/checkpoints" --LabApp.app_settings_dir="$settings" "${root_flag[@]}" \
    >"$tmp/server.log" 2>&1 &
server_pid=$!

base="http://127.0.0.1:$port"
ready=0
for _ in $(seq 120); do
  if "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$base/api/status" 2>/dev/null; then
    ready=1; break
  fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.5
done
if [[ "$ready" != 1 ]]; then
  cat "$tmp/server.log" >&2
  echo "lab-screenshot: JupyterLab did not start on $base" >&2
  exit 1
fi

# What the server serves as fetchNews: overrides.json replaces the schema's default ('none' = ask).
fetch_news="$("$python" - "$base/lab/api/settings/@jupyterlab/apputils-extension:notification" <<'EOF'
import json, sys, urllib.request
d = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))   # user value, else the (overridden) schema default
print(d.get("settings", {}).get("fetchNews", d["schema"]["properties"]["fetchNews"].get("default")))
EOF
)" || fetch_news="<unreadable>"

mkdir -p "$(dirname "$out")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
rm -f "$out_abs"
url="$base/lab/tree/$nb_name"
flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --disable-dev-shm-usage --disable-quic --hide-scrollbars
       --window-size=1400,900 --virtual-time-budget=15000)
# One browser run for the DOM and one for the picture, each with a fresh profile.
timeout 180 "$browser" "${flags[@]}" --user-data-dir="$tmp/profile/dom" --dump-dom "$url" \
  >"$tmp/dom.html" 2>"$tmp/chromium-dom.log" || true
timeout 180 "$browser" "${flags[@]}" --user-data-dir="$tmp/profile/png" --screenshot="$out_abs" "$url" \
  >"$tmp/chromium-png.log" 2>&1 || true

status=0
if [[ ! -s "$out_abs" ]]; then
  cat "$tmp/chromium-png.log" >&2; echo "lab-screenshot: chromium wrote no screenshot" >&2; status=1
fi
if ! grep -qF "$title" "$tmp/dom.html"; then
  echo "lab-screenshot: the notebook's title \"$title\" is not on the page (did $nb_name open?)" >&2; status=1
fi
if grep -qF "$prompt_text" "$tmp/dom.html"; then
  prompt=1
else
  prompt=0
fi
if [[ "$prompt" != "$expect_prompt" ]]; then
  if [[ "$prompt" == 1 ]]; then
    echo "lab-screenshot: the page shows the \"$prompt_text\" prompt (fetchNews served as '$fetch_news')" >&2
  else
    echo "lab-screenshot: expected the news prompt (EXPECT_PROMPT=1) but the page does not show it" >&2
  fi
  status=1
fi
echo "lab-screenshot: $url -> $out (settings: $settings; fetchNews served: $fetch_news; title found:" \
     "$(grep -qF "$title" "$tmp/dom.html" && echo yes || echo no); news prompt: $([[ $prompt == 1 ]] && echo yes || echo no))"
exit "$status"
