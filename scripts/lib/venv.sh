# Sourced by scripts/*: make .venv exist and hold chatsvc installed in editable
# mode, reinstalling only when the dependency files changed.
# Usage: . scripts/lib/venv.sh [extras]
set -euo pipefail
extras="${1:-}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.chatsvc-installed-$(cat setup.cfg pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    .venv/bin/python -m pip install --quiet -c constraints.txt -e "$spec" 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import chatsvc" # fail here, not later, if the install did not work
    rm -f .venv/.chatsvc-installed-*
    touch "$stamp"
fi
