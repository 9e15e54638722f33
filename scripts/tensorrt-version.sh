#!/usr/bin/env bash
# Prints the major.minor of the TensorRT on this host (trtexec's banner, else the Python
# package); fails with a message when there is none.
set -euo pipefail
trtexec=$(command -v trtexec || true)
[ -z "$trtexec" ] && [ -x /usr/src/tensorrt/bin/trtexec ] && trtexec=/usr/src/tensorrt/bin/trtexec
if [ -n "$trtexec" ]; then
  v=$("$trtexec" --help 2>&1 | sed -n 's/.*\[TensorRT v\([0-9]*\)\].*/\1/p' | head -1)
  if [ -n "$v" ]; then echo "$((v / 10000)).$(((v / 100) % 100))"; exit 0; fi
fi
if python3 -c 'import tensorrt' 2>/dev/null; then
  python3 -c 'import tensorrt as t; print(".".join(t.__version__.split(".")[:2]))'; exit 0
fi
echo "no TensorRT: neither trtexec (PATH, /usr/src/tensorrt/bin) nor the tensorrt Python package;" \
     "use NVIDIA's TensorRT container (nvcr.io/nvidia/tensorrt:<yy.mm>-py3) on a GPU host" >&2
exit 1
