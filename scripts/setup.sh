#!/usr/bin/env bash
# Installs everything the worker and its tests need into a local virtual environment, and ComfyUI at the pinned
# version. Safe to run again: each step is skipped when what it installs is already there.
#
#   VENV         the virtual environment (default: .venv in the repository)
#   PYTHON       the interpreter that creates it (default: python3; 3.11 or newer)
#   COMFYUI_DIR      where ComfyUI is installed (default: .comfyui/ComfyUI in the repository)
#   COMFYUI_VERSION  the ComfyUI release tag to install (default: the tested one below, which the Dockerfile and
#                    docker-bake.hcl pin too). `source`: whatever COMFYUI_SRC holds, reinstalled on every run
#                    (`make test-comfyui`, docs/development.md "Upgrading ComfyUI")
#   COMFYUI_SRC      a local ComfyUI source of that version: a folder or an archive (.tar.gz, .tar.xz, .tgz, .zip);
#                    else ~/.cache/comfyui-worker/ComfyUI-<version>[.tar.gz], else upstream git
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEFAULT_COMFYUI_VERSION=v0.29.0
COMFYUI_VERSION=${COMFYUI_VERSION:-$DEFAULT_COMFYUI_VERSION}
COMFYUI_GIT_URL=https://github.com/comfyanonymous/ComfyUI
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
COMFYUI_DIR=${COMFYUI_DIR:-$ROOT/.comfyui/ComfyUI}
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-worker

say() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

comfyui_version_of() {  # prints the version a ComfyUI tree declares, or nothing
  sed -n 's/^__version__ = "\(.*\)"/v\1/p' "$1/comfyui_version.py" 2>/dev/null || true
}

unpack_into() {  # unpack_into SOURCE DEST: SOURCE is a folder or an archive of a ComfyUI tree
  local src=$1 dest=$2 tmp
  tmp=$(mktemp -d "${dest%/*}/.unpack.XXXXXX")
  if [[ -d $src ]]; then
    cp -a "$src/." "$tmp/"
  else
    case $src in
      *.zip) python3 -m zipfile -e "$src" "$tmp" ;;
      *.tar.gz|*.tgz|*.tar.xz|*.txz|*.tar) tar xf "$src" -C "$tmp" ;;
      *) rm -rf "$tmp"; die "COMFYUI_SRC=$src is neither a folder nor a .tar.gz/.tar.xz/.zip archive" ;;
    esac
  fi
  # An archive may hold the tree itself or one folder around it.
  local tree=$tmp
  if [[ ! -f $tree/main.py ]] && [[ $(find "$tmp" -mindepth 1 -maxdepth 1 | wc -l) -eq 1 ]]; then
    tree=$(find "$tmp" -mindepth 1 -maxdepth 1)
  fi
  [[ -f $tree/main.py ]] || { rm -rf "$tmp"; die "$src does not hold a ComfyUI tree (no main.py)"; }
  rm -rf "$dest"
  mv "$tree" "$dest"
  rm -rf "$tmp"
}

cached_source() {  # prints the cached ComfyUI source (folder or archive), if there is one
  local candidate
  for candidate in "$CACHE_DIR/ComfyUI-$COMFYUI_VERSION" "$CACHE_DIR/ComfyUI-$COMFYUI_VERSION".*; do
    [[ -e $candidate ]] && { echo "$candidate"; return; }
  done
}

install_comfyui() {
  mkdir -p "$(dirname "$COMFYUI_DIR")"
  if [[ $COMFYUI_VERSION == source ]]; then
    [[ -e ${COMFYUI_SRC:-} ]] || die "COMFYUI_VERSION=source needs COMFYUI_SRC, a ComfyUI folder or archive"
    say "installing ComfyUI from COMFYUI_SRC=$COMFYUI_SRC (its own version, untested)"
    unpack_into "$COMFYUI_SRC" "$COMFYUI_DIR"
    COMFYUI_VERSION=$(comfyui_version_of "$COMFYUI_DIR")
    COMFYUI_VERSION=${COMFYUI_VERSION:-unknown}
    return
  fi
  if [[ $(comfyui_version_of "$COMFYUI_DIR") == "$COMFYUI_VERSION" ]]; then
    say "ComfyUI $COMFYUI_VERSION already at $COMFYUI_DIR"
    return
  fi
  local cached
  if [[ -n ${COMFYUI_SRC:-} ]]; then
    [[ -e $COMFYUI_SRC ]] || die "COMFYUI_SRC=$COMFYUI_SRC does not exist"
    say "installing ComfyUI from COMFYUI_SRC=$COMFYUI_SRC"
    unpack_into "$COMFYUI_SRC" "$COMFYUI_DIR"
  elif cached=$(cached_source) && [[ -n $cached ]]; then
    say "installing ComfyUI from the local cache $cached"
    unpack_into "$cached" "$COMFYUI_DIR"
  elif timeout 300 git clone -q --depth 1 --branch "$COMFYUI_VERSION" "$COMFYUI_GIT_URL" "$COMFYUI_DIR.clone" 2>/dev/null; then
    say "installed ComfyUI $COMFYUI_VERSION from $COMFYUI_GIT_URL"
    rm -rf "$COMFYUI_DIR" && mv "$COMFYUI_DIR.clone" "$COMFYUI_DIR"
  else
    rm -rf "$COMFYUI_DIR.clone"
    die "ComfyUI $COMFYUI_VERSION is needed and could not be fetched from $COMFYUI_GIT_URL.
  Provide its source in one of these ways, then run this again:
    COMFYUI_SRC=/path/to/ComfyUI-$COMFYUI_VERSION (a folder, or a .tar.gz/.tar.xz/.zip archive of it) make test
    or put that folder or archive at ${CACHE_DIR}/ComfyUI-${COMFYUI_VERSION}[.tar.gz]"
  fi
  local got
  got=$(comfyui_version_of "$COMFYUI_DIR")
  [[ $got == "$COMFYUI_VERSION" ]] || die "the ComfyUI installed at $COMFYUI_DIR is '${got:-unknown}', not $COMFYUI_VERSION"
}

install_python_packages() {
  local stamp=$VENV/.installed digest
  digest=$(cat "$ROOT/requirements-torch.txt" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
                "$COMFYUI_DIR/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
  if [[ -f $stamp && $(cat "$stamp") == "$digest" ]]; then
    say "Python packages up to date in $VENV"
    return
  fi
  say "installing Python packages into $VENV (torch and ComfyUI's requirements: a few GB the first time)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned by requirements-torch.txt; ComfyUI's requirements name it unpinned.
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-torch.txt" -r "$ROOT/requirements.txt" \
    -r "$ROOT/requirements-dev.txt" -r "$COMFYUI_DIR/requirements.txt" -c "$ROOT/requirements-torch.txt"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  echo "$digest" > "$stamp"
}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than Python 3.11"
if [[ ! -x $VENV/bin/python ]]; then
  say "creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
install_comfyui
install_python_packages
say "ready: $VENV, ComfyUI $COMFYUI_VERSION at $COMFYUI_DIR"
