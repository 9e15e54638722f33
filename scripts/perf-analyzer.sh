#!/usr/bin/env bash
# Installs Triton's load generator perf_analyzer (PyPI `perf-analyzer` 2.60.0, a prebuilt binary)
# into DIR (default .cache/perf-analyzer) with a wrapper DIR/perf_analyzer. The wheel needs glibc
# 2.38 and libstdc++ from GCC 13 (manylinux_2_38); on an older system (Debian 12 has glibc 2.36)
# the wrapper runs it with Debian 13's libc6, libstdc++6 and libgcc-s1, fetched with apt-get
# download through a private sources list (the system's apt configuration is not touched) and
# unpacked under DIR. Idempotent.
set -euo pipefail
DIR=${1:-.cache/perf-analyzer}
VERSION=2.60.0
if [[ -f "$DIR/.complete" ]]; then
  echo "$DIR/perf_analyzer is ready"; exit 0
fi
rm -rf "$DIR" && mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)
pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_38_x86_64 \
  --dest "$DIR/wheel" "perf-analyzer==$VERSION"
python3 -m zipfile -e "$DIR"/wheel/perf_analyzer-*.whl "$DIR/wheel/unpacked"
BIN="$DIR/wheel/unpacked/perf_analyzer/bin/perf_analyzer"
chmod +x "$BIN"
if "$BIN" --version >/dev/null 2>&1; then
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$BIN" > "$DIR/perf_analyzer"
else
  apt_dir="$DIR/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$DIR/root"
  echo "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download libc6 libstdc++6 libgcc-s1 2>/dev/null)
  for deb in "$apt_dir"/*.deb; do dpkg-deb -x "$deb" "$DIR/root"; done
  LIB="$DIR/root/usr/lib/x86_64-linux-gnu"
  # The newer loader and libraries first, the system's (libssl, libz) after them.
  printf '#!/bin/sh\nexec "%s/ld-linux-x86-64.so.2" --library-path "%s:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu" "%s" "$@"\n' \
    "$LIB" "$LIB" "$BIN" > "$DIR/perf_analyzer"
fi
chmod +x "$DIR/perf_analyzer"
"$DIR/perf_analyzer" --version
touch "$DIR/.complete"
echo "$DIR/perf_analyzer is ready"
