#!/usr/bin/env bash
# Installs what the liteorm test matrix needs beyond Rust, and only what is missing:
#   libclang-dev    bindgen for the `system-sqlite` cell (libsqlite3-sys `session` feature)
#   libsqlite3-dev  headers + pkg-config file of the system SQLite that cell links
#   pkg-config      how libsqlite3-sys finds it
#   sqlite3         the CLI, used by tests to cross-check changesets
#   nats-server     a JetStream server (`-js`), started on 127.0.0.1 by the liteorm-nats tests
#   python3-pip     only when `python3 -m pip` is absent
#   apsw (PyPI)     an independent implementation of the session extension, used by tests
# Idempotent: when everything is present it runs no package manager and prints one line.
set -euo pipefail

log() { echo "install-deps: $*"; }
die() { echo "install-deps: error: $*" >&2; exit 1; }

# Runs a command quietly; shows its output only when it fails.
quiet() {
    local out
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "command failed: $*"
    fi
    rm -f "$out"
}

missing=()
for pkg in libclang-dev libsqlite3-dev pkg-config sqlite3 nats-server; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
need_apsw=
python3 -c 'import apsw' >/dev/null 2>&1 || need_apsw=1
# `python3 -m pip` (not a `pip3` that may belong to another interpreter) is what installs apsw.
if [[ -n $need_apsw ]] && ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        die "missing Debian packages: ${missing[*]}; not root and no sudo. Install them with: apt-get install ${missing[*]}"
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing packages: ${missing[*]}; apt-get not found"
    quiet "${as_root[@]}" apt-get update
    quiet "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
    for pkg in "${missing[@]}"; do
        log "installed $pkg (apt)"
    done
fi

if [[ -n $need_apsw ]]; then
    pip_args=(--quiet)
    # Debian's own python3 refuses pip installs outside a venv (PEP 668); this is a test box.
    if python3 -c 'import os, sys, sysconfig; sys.exit(not (sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'; then
        pip_args+=(--break-system-packages)
    fi
    quiet python3 -m pip install "${pip_args[@]}" apsw
    python3 -c 'import apsw' >/dev/null 2>&1 || die "apsw was installed but python3 cannot import it"
    log "installed apsw $(python3 -c 'import apsw; print(apsw.apswversion())') (pip)"
fi

if ((${#missing[@]} == 0)) && [[ -z $need_apsw ]]; then
    log "all dependencies present"
fi
