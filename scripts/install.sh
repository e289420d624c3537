#!/usr/bin/env bash
# Create (or reuse) the project's one environment and install gevit into it.
#
#   bash scripts/install.sh            # -> .venv (a link to a cached venv keyed on the dependency list)
#
# The venv lives in ${GEVIT_VENV_CACHE:-~/.cache/gevit/venvs}/<hash of the dependency list + this script> and
# .venv links to it, so a fresh clone with the same dependencies reuses it in seconds; any change to
# the dependency list builds a new one. Set GEVIT_VENV=DIR to install into DIR instead (no cache).
#
# escnn depends on py3nj, which is source-only and needs a Fortran compiler. We install gfortran with
# apt when we are root and it is missing; otherwise we install escnn without py3nj (escnn then uses a
# numerical fallback for Clebsch-Gordan coefficients; every 2-D feature works). See README.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"

# The cache key: the declared dependencies (not the rest of pyproject.toml) and this script.
dependency_list() {
    "$PY" - <<'PYEOF' 2>/dev/null || cat pyproject.toml
import json, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(json.dumps([project["dependencies"], project.get("optional-dependencies", {})], sort_keys=True))
PYEOF
}
hash_deps() { { dependency_list; cat scripts/install.sh; } | sha256sum | cut -c1-16; }

if [[ -n "${GEVIT_VENV:-}" ]]; then
    VENV="$GEVIT_VENV"
else
    VENV="${GEVIT_VENV_CACHE:-$HOME/.cache/gevit/venvs}/$(hash_deps)"
fi

log() { echo "[install] $*" >&2; }

if [[ ! -f "$VENV/.gevit-complete" ]]; then
    log "building environment in $VENV"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${PIP[@]}" --upgrade pip setuptools wheel
    # torch/torchvision first so nothing else drags in a different build.
    "${PIP[@]}" "torch>=2.3,<2.15" "torchvision>=0.18,<0.30"

    if ! command -v gfortran >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing gfortran (needed to build escnn's py3nj)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gfortran >/dev/null) \
            || log "apt-get could not install gfortran; falling back to escnn without py3nj"
    fi
    if command -v gfortran >/dev/null 2>&1; then
        "${PIP[@]}" -e ".[test]"
    else
        log "no Fortran compiler: installing escnn without py3nj"
        # Every declared dependency except escnn, then escnn alone, then its pure-python needs.
        mapfile -t DEPS < <("$VENV/bin/python" - <<'PYEOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = [d for d in p["dependencies"] if not d.startswith("escnn")] + p["optional-dependencies"]["test"]
print("\n".join(deps))
PYEOF
)
        "${PIP[@]}" "${DEPS[@]}"
        "${PIP[@]}" --no-deps "escnn>=1.0.11,<1.1"
        "${PIP[@]}" "lie-learn==0.0.2" pymanopt autograd joblib scipy
        "${PIP[@]}" --no-deps -e .
    fi
    touch "$VENV/.gevit-complete"
else
    log "reusing environment $VENV"
fi

# (Re-)point the editable install at this checkout: cheap, and correct for a fresh clone.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT" >/dev/null
# Build (or find cached) the fused GE-ViT attention kernel; never fails the install (eager fallback).
"$VENV/bin/python" -c "from gevit.layers.kernels import cpu; cpu.load()" >/dev/null 2>&1 || true
if [[ -z "${GEVIT_VENV:-}" ]]; then
    ln -sfn "$VENV" "$ROOT/.venv"
fi
log "ready: $ROOT/.venv/bin/python"
