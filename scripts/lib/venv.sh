# Sourced by scripts/*: make .venv exist and hold chatsvc installed in editable
# mode, reinstalling only when the dependency files changed.
# Usage: . scripts/lib/venv.sh EXTRAS   (pass "" for none: a sourced script
# otherwise sees its caller's arguments as its own)
set -euo pipefail
extras="${1:-}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp=".venv/.chatsvc-installed-$(cat setup.cfg pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras:-base}"

# pip's output, shown as one line that counts the packages as they arrive;
# the whole of it is kept in .venv/pip.log.
_chatsvc_pip_progress() {
    local count=0 line
    while IFS= read -r line; do
        printf '%s\n' "$line" >>.venv/pip.log
        case "$line" in
            Collecting* | Processing* | "Requirement already satisfied"*)
                count=$((count + 1))
                [ -t 1 ] && printf '\r  resolving and downloading: %d packages ' "$count"
                ;;
            "Installing collected packages"*)
                [ -t 1 ] && printf '\n'
                echo "  installing $count packages..."
                ;;
            ERROR*) printf '%s\n' "$line" >&2 ;;
        esac
    done
}

if [ ! -f "$stamp" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "creating .venv with $("$python" --version)"
        "$python" -m venv .venv
    fi
    echo "installing chatsvc${extras:+[$extras]} and its dependencies into .venv" \
        "(first run, or the dependencies changed; about a minute)"
    : >.venv/pip.log
    spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
        -c constraints.txt -e "$spec" 2>&1 | _chatsvc_pip_progress; }; then
        echo "pip install failed; its output is in .venv/pip.log" >&2
        exit 1
    fi
    # Fail here, not later, if the install did not work (from elsewhere than the
    # checkout, so that the source tree cannot stand in for the installed package).
    venv_python="$PWD/.venv/bin/python"
    (cd / && "$venv_python" -c "import chatsvc.cli") || {
        echo "chatsvc is not importable from .venv; pip's output is in .venv/pip.log" >&2
        exit 1
    }
    rm -f .venv/.chatsvc-installed-*
    touch "$stamp"
    echo "installed"
fi
