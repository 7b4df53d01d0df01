#!/usr/bin/env bash
# Install the lowest version pyproject.toml declares for every dependency (and the test tools) into a
# separate virtual environment, and run the fast tests there: a declared floor is one that was run.
#
#   bash scripts/check_floors.sh            # venv in .venv-floors (git-ignored)
#   FLOORS_VENV=/tmp/floors bash scripts/check_floors.sh -x -q tests/generators
#
# Extra arguments go to pytest (default: the fast suite, -m "not slow"). CPU-only: the GPU tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${FLOORS_VENV:-.venv-floors}"

# "name>=X" -> "name==X" for every requirement of the core and of the extras (markers kept).
pins=$("$PYTHON" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra, items in project["optional-dependencies"].items():
    reqs += [r for r in items if not r.startswith("r0kit[")]
seen = {}
for r in reqs:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)[^;]*(;.*)?$", r)
    if m:
        seen[m.group(1).lower()] = f"{m.group(1)}=={m.group(2)}{m.group(3) or ''}"
    else:
        seen.setdefault(re.split(r"[<>=;\s\[]", r.strip())[0].lower(), r)
print("\n".join(seen.values()))
PY
)
echo "floors:"; echo "$pins" | sed 's/^/  /'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
mapfile -t reqs <<<"$pins"
"$VENV/bin/python" -m pip install -q "${reqs[@]}"
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"
if [ "$#" -eq 0 ]; then set -- -q -m "not slow" -p no:cacheprovider; fi
"$VENV/bin/python" -m pytest -n "${JOBS:-2}" "$@"
