#!/usr/bin/env bash
# One-time set-up, idempotent: Debian speech recordings, a virtual environment with avindex and
# its extras, and the speech_embedding and aiSFX weights (fetched as wheels, never installed).
#   --test          also the test tools: the `test` extra and Debian systemd, prometheus and
#                   chromium (scripts/test.sh passes it; `avindex demo` needs none of them)
#   AVINDEX_EXTRAS  pip extras to install (default: cpu,train,embedded, with --test
#                   cpu,train,test; use gpu,train,embedded on a GPU box)
#   AVINDEX_VENV    where the virtual environment lives (default: .venv)
#   AVINDEX_TORCH   the torch requirement installed first when an extra needs torch (default
#                   torch==2.13.0, whose CPU wheel lies on the project's machines)
#   AVINDEX_TORCH_INDEX  a pip index URL to take torch from, e.g. PyTorch's CPU-only wheel index
#                   on a machine without a GPU (plain pip would fetch a multi-GB CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
test_tools=0
if [ "${1:-}" = "--test" ]; then test_tools=1; fi
if [ "$test_tools" = 1 ]; then
  extras="${AVINDEX_EXTRAS:-cpu,train,test}"
else
  extras="${AVINDEX_EXTRAS:-cpu,train,embedded}"
fi
venv="${AVINDEX_VENV:-.venv}"
weights_dir="${AVINDEX_WEIGHTS_DIR:-$HOME/.cache/avindex}"

say() { printf '[setup] %s\n' "$*" >&2; }

# Human speech for AV-digits (CC-BY-SA-3.0). Optional: without it the corpus uses eSpeak only.
if ! ls /usr/share/asterisk/sounds/*/digits/7.wav >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian asterisk-core-sounds-{en,es,fr,it}-wav"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav \
      asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav >/dev/null) \
      || say "WARNING: could not install asterisk sounds; AV-digits will use eSpeak voices only"
  else
    say "WARNING: asterisk-core-sounds-*-wav not installed (needs root + apt-get); eSpeak only"
  fi
fi

# Tools for tests/test_deploy.py: systemd-analyze/systemd-sysusers (Debian systemd), promtool
# (Debian prometheus). Missing tools make those tests skip locally and fail when CI is set.
if [ "$test_tools" = 1 ] && { ! command -v systemd-analyze >/dev/null || ! command -v promtool >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian systemd and prometheus (systemd-analyze, promtool for deploy tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends systemd prometheus >/dev/null) \
      || say "WARNING: could not install systemd/prometheus; deploy tests skip locally, fail in CI"
  else
    say "WARNING: systemd-analyze/promtool missing (needs root + apt-get); deploy tests skip"
  fi
fi

# Headless browser for the web page test (tests/daemon/test_daemon_search.py): Debian chromium.
# Missing, that test skips locally and fails when CI is set.
if [ "$test_tools" = 1 ] && ! command -v chromium >/dev/null \
   && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian chromium (headless browser for the web page test)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium >/dev/null) \
      || say "WARNING: could not install chromium; the web page test skips locally, fails in CI"
  else
    say "WARNING: chromium missing (needs root + apt-get); the web page test skips"
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, by an exact requirement: the `train` extra only asks for a range, which pip could
# satisfy with a multi-GB CUDA build; an installed torch in that range is kept as it is.
if [[ ",$extras," == *,train,* ]] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  torch_req="${AVINDEX_TORCH:-torch==2.13.0}"
  say "installing $torch_req${AVINDEX_TORCH_INDEX:+ from $AVINDEX_TORCH_INDEX}"
  "$venv/bin/python" -m pip install -q "$torch_req" \
    ${AVINDEX_TORCH_INDEX:+--index-url "$AVINDEX_TORCH_INDEX"}
fi
say "installing avindex[$extras]"
"$venv/bin/python" -m pip install -q -e ".[$extras]"

# Google's speech_embedding (Apache-2.0), the default audio front-end: the openwakeword wheel
# carries it as ONNX files, but the package pulls tflite, so only the wheel file is kept.
if ! ls "$weights_dir"/openwakeword-0.5.1-*.whl >/dev/null 2>&1; then
  say "fetching the openwakeword 0.5.1 wheel into $weights_dir (no dependencies, not installed)"
  mkdir -p "$weights_dir"
  "$venv/bin/python" -m pip download -q --no-deps openwakeword==0.5.1 -d "$weights_dir" \
    || { say "ERROR: could not fetch openwakeword==0.5.1 (speech front-end of the default model)"; exit 1; }
fi

# aiSFX weights (CC-BY-4.0): its package pins old numpy/librosa, so only the wheel file is kept.
if ! ls "$weights_dir"/aisfx-*.whl >/dev/null 2>&1; then
  say "fetching the aiSFX wheel into $weights_dir (no dependencies, not installed)"
  mkdir -p "$weights_dir"
  "$venv/bin/python" -m pip download -q --no-deps aisfx -d "$weights_dir" \
    || say "WARNING: aiSFX weights unavailable; the aisfx front-end will explain how to get them"
fi

# Four more human voices for AV-digits (Debian digit prompts, unpacked into
# $weights_dir/voices, not installed). Optional: without them the corpus has fewer human voices.
if command -v apt-get >/dev/null; then
  say "fetching Debian voices for AV-digits into $weights_dir/voices (avindex data voices)"
  AVINDEX_WEIGHTS_DIR="$weights_dir" "$venv/bin/avindex" data voices >/dev/null \
    || say "WARNING: some AV-digits voices could not be fetched; the corpus uses the others"
fi
say "done"
