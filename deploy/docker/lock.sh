#!/usr/bin/env bash
# Re-resolve constraints-<cpu|gpu>.txt: the newest versions (binary wheels only) of pyproject's
# runtime dependencies plus the image's extra, for the image's Python on linux x86_64.
#   bash deploy/docker/lock.sh cpu    # python:3.11-slim-bookworm  -> Python 3.11
#   bash deploy/docker/lock.sh gpu    # nvidia/cuda ... ubuntu24.04 -> Python 3.12
set -euo pipefail
cd "$(dirname "$0")/../.."
variant="${1:?usage: lock.sh cpu|gpu}"
case "$variant" in
  cpu) python_version=3.11 ;;
  gpu) python_version=3.12 ;;
  *) echo "usage: lock.sh cpu|gpu" >&2; exit 2 ;;
esac
python="${PYTHON:-.venv/bin/python}"
mapfile -t requirements < <("$python" - "$variant" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"][sys.argv[1]]:
    print(requirement)
PY
)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip install -q --dry-run --ignore-installed --only-binary=:all: \
  --python-version "$python_version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --target "$work/target" --report "$work/report.json" \
  "${requirements[@]}"
{
  echo "# Exact versions for the $variant image (Python $python_version, linux x86_64), resolved from pyproject.toml's"
  echo "# runtime dependencies plus the $variant extra. Regenerate with deploy/docker/lock.sh $variant."
  "$python" - "$work/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = sorted((i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"])
              for i in report["install"])
print("\n".join(f"{name}=={version}" for name, version in pins))
PY
} > "deploy/docker/constraints-$variant.txt"
echo "wrote deploy/docker/constraints-$variant.txt" >&2
