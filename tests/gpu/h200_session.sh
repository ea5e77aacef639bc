#!/usr/bin/env bash
# The batched H200 sessions behind results/h200/ (see README "GPU suite"). One call a stage; every
# step is bounded and logged into $OUT as it finishes, most important first.
#   bash tests/gpu/h200_session.sh kernels   # build, check, matvec bandwidth, 7B bench, graph profile
#   bash tests/gpu/h200_session.sh ceilings  # doctor --measure, then qprof beside llama.cpp (LLAMA_BENCH=path for a live run)
set -u
STAGE=${1:?stage}
source tests/device_prelude.sh || exit 1
export QPROF_CACHE=/root/qc
# the copy's .git is stale there: the build this tree is, written by the caller (git rev-parse --short=8 HEAD
# > .qprof_build, carried), names every row
export QPROF_BUILD_COMMIT=$(cat .qprof_build 2>/dev/null || echo unknown)
Q="python3 -m qprof.cli"  # a shell function would not survive `timeout`
# only 8 files come back from $OUT: every log also goes into $OUT/logs.tgz, rebuilt after each step
step() {  # step NAME SECONDS CMD... : bounded, logged to $W/NAME.log
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  timeout --kill-after=5 $secs "$@" > $W/$name.log 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a $W/steps.txt
  tar czf $OUT/logs.tgz -C $W .
}
# the four synthetic 7B files, made in the background (wait before benching them)
make_7b_set() { for v in q4_k_m q4_0 q8_0 q6_k; do (python3 -m qprof.cli workloads make mistral-7b-$v > $W/make_$v.log 2>&1) & done; }
bench_7b_set() {  # bench_7b_set SECONDS [BENCH ARGS]: -p 512 -n 128 -r 5 on each, llama.cpp's rows beside Q4_K_M
  local secs=$1; shift
  step bench_q4_k_m $secs $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 5 "$@" \
    --llama-bench-json tests/fixtures/llama_bench_h200_synth7b.json --results $OUT/bench_h200.jsonl
  for v in q4_0 q8_0 q6_k; do
    step bench_$v $secs $Q bench -m mistral-7b-$v -p 512 -n 128 -r 5 "$@" --results $OUT/bench_h200.jsonl
  done
}
smollm2_e2e() {  # every SmolLM2 variant made, then the end-to-end GPU tests (greedy equality, profiles)
  for v in q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k f16; do
    (python3 -m qprof.cli workloads make smollm2-$v > /dev/null 2>&1) &
  done
  wait
  step gpu_tests_e2e 330 python3 -m pytest -q -rfs tests/gpu/test_generate_gpu.py tests/gpu/test_profile_gpu.py \
    tests/gpu/test_profile_graphs_gpu.py
}
W=/root/logs/$STAGE; mkdir -p $W
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; git log --oneline -1; } > $OUT/card.txt 2>&1
if [ "$STAGE" = kernels ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step check_fused 240 $Q check --ops matvec,fused_qkv,fused_gate_up,fused_norm_matvec,fused_residual_matvec --failures-only
  wait
  step matvec_bw 120 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q4_0,Q8_0 --batches 1,8
  step bench_7b 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --results $OUT/bench.jsonl
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
fi
if [ "$STAGE" = stream ]; then  # the shared-memory weight stream: correctness first, then bandwidth and tg128
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step check_mv 240 $Q check --ops matvec,fused_qkv,fused_gate_up,fused_norm_matvec,fused_residual_matvec --failures-only
  step matvec_bw 200 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q4_0,Q8_0,Q5_K,Q3_K --batches 1,8
  CUOBJ=$(ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
  [ -n "$CUOBJ" ] && ls $QPROF_CACHE/*.ptx > /dev/null 2>&1 && for f in $QPROF_CACHE/matvec-sm90-*.ptx; do
    ptxas -arch=sm_90 $f -o /root/mv.cubin 2>/dev/null || /usr/local/cuda/bin/ptxas -arch=sm_90 $f -o /root/mv.cubin
    $CUOBJ -sass -fun matvec_q4_k_b1 /root/mv.cubin > $W/sass_q4k_b1.txt 2>&1; done
  wait
  step bench_7b 200 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --results $OUT/bench.jsonl
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
fi
if [ "$STAGE" = fused ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step check_new 240 $Q check --ops matvec,fused_qkv,fused_gate_up,fused_norm_matvec,fused_residual_matvec,attention --failures-only
  wait
  step bench_7b 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --results $OUT/bench.jsonl
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
  step matvec_bw 150 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q4_0,Q8_0 --batches 1,8
fi
if [ "$STAGE" = pipeline ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step matvec_bw 150 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q4_0,Q8_0 --batches 1,8
  wait
  step bench_7b 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --results $OUT/bench.jsonl
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
  step check_new 240 $Q check --ops matvec,fused_qkv,fused_gate_up,fused_norm_matvec,fused_residual_matvec --failures-only
fi
if [ "$STAGE" = variants ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step matvec_bw 300 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q4_0,Q8_0 --batches 1 \
    --variant "-DQP_MV_MIN_CTAS_B1=1 -DQP_MV_DOUBLE_BUFFER=1 -DQP_MV_UNROLL=2" \
    --variant "-DQP_MV_MIN_CTAS_B1=1 -DQP_MV_UNROLL=2" --variant "-DQP_MV_MIN_CTAS_B1=3"
  wait
  step bench_7b 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --results $OUT/bench.jsonl
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
fi
if [ "$STAGE" = ncu ]; then
  step build 240 $Q kernels build
  NCU=$(ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1); NCU=${NCU:-ncu}
  step ncu 200 $NCU --kernel-name regex:matvec --launch-skip 2 --launch-count 2 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section LaunchStats --section MemoryWorkloadAnalysis python3 tests/gpu/ncu_matvec.py Q4_K
  step matvec_bw 300 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q8_0 --batches 1 \
    --variant="-DQP_MV_MIN_CTAS_B1=1 -DQP_MV_UNROLL=2" --variant="-DQP_MV_MIN_CTAS_B1=3"
fi
if [ "$STAGE" = prefetch ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step matvec_bw 300 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q8_0 --batches 1 \
    --variant="-DQP_MV_PREFETCH_STAGES=0" --variant="-DQP_MV_PREFETCH_STAGES=4"
  wait
  step bench_7b 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --results $OUT/bench.jsonl
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
  step check_new 240 $Q check --ops fused_qkv,fused_gate_up,fused_norm_matvec,fused_residual_matvec --failures-only
fi
if [ "$STAGE" = ceilings ]; then
  # issue 11: the card's measured ceilings, then qprof beside llama.cpp (the saved H200 llama-bench JSON,
  # and a live llama-bench where $LLAMA_BENCH names a build of it)
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step doctor_measure 180 $Q doctor --measure
  step doctor_cached 60 $Q doctor
  cp $QPROF_CACHE/ceilings.json $OUT/ceilings.json 2>/dev/null
  step ceilings_gpu_test 180 python3 -m pytest -q -rs tests/gpu/test_ceilings_gpu.py
  wait
  step bench_7b_llama_json 300 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 5 \
    --llama-bench-json tests/fixtures/llama_bench_h200_synth7b.json --results $OUT/bench_h200.jsonl
  if [ -n "${LLAMA_BENCH:-}" ]; then
    step bench_7b_llama_live 500 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 5 --llama-bench "$LLAMA_BENCH" \
      --results $OUT/bench_h200_llama_live.jsonl
    QPROF_LLAMA_BENCH="$LLAMA_BENCH" step llama_bench_test 300 python3 -m pytest -q -rs tests/test_llama_bench.py -k real
  fi
  step compare_peers 60 $Q compare --peers $OUT/bench_h200.jsonl
  step profile_7b 150 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
fi
# The closing measurements (issue 9): two calls in a row, the first carrying .smol/smollm2.whl.part-aa, the
# second .smol/smollm2.whl.part-ab (64 MiB a call); files under /root survive between them while warm.
if [ "$STAGE" = final1 ]; then
  make_7b_set
  step build 240 $Q kernels build
  step doctor_measure 120 $Q doctor --measure
  cp $QPROF_CACHE/ceilings.json $OUT/ceilings.json 2>/dev/null
  step check_all 330 $Q check --failures-only
  wait
  bench_7b_set 200
  step matvec_bw 200 python3 tests/gpu/bench_matvec.py --batches 1,8 --json $OUT/matvec_h200.json
  step gpu_tests_spread_ceilings 120 python3 -m pytest -q -rfs tests/gpu/test_bench_spread_gpu.py tests/gpu/test_ceilings_gpu.py
fi
# The closing run of the shared-memory stream (issue 9), two calls: final2 (carries .smol/smollm2.whl.part-aa)
# then final2e2e (carries .smol/smollm2.whl.part-ab) while the machine is warm.
if [ "$STAGE" = final2 ]; then
  make_7b_set
  step build 240 $Q kernels build
  step check_all 300 $Q check --failures-only
  wait
  bench_7b_set 120
  step matvec_bw 120 python3 tests/gpu/bench_matvec.py --batches 1,8 --json $OUT/matvec_h200.json
fi
if [ "$STAGE" = hybrid ]; then  # the per-type choice of stream / register path, re-measured
  make_7b_set
  step build 240 $Q kernels build
  step check_mv 240 $Q check --ops matvec,fused_qkv,fused_gate_up,fused_norm_matvec,fused_residual_matvec --failures-only
  wait
  bench_7b_set 120
  step matvec_bw 200 python3 tests/gpu/bench_matvec.py --batches 1,8 --json $OUT/matvec_h200.json \
    --variant="-DQP_MV_FORCE_REGISTERS=1"
fi
if [ "$STAGE" = next ]; then  # issue-9-next: Q2_K/Q4_K/Q5_K on the register path, ld.global.nc loads there
  make_7b_set
  step build 240 $Q kernels build
  step check_all 300 $Q check --failures-only
  wait
  bench_7b_set 120
  step matvec_bw 200 python3 tests/gpu/bench_matvec.py --batches 1,8 --json $OUT/matvec_h200.json \
    --variant="-DQP_MV_FORCE_REGISTERS=1"
fi
# programmatic dependent launch: the same logits and the graph's edges, then every file with and without,
# and the L2 warm's byte count as variants (results/h200: stages pdl at 8e34911e, pdl2 at d8498dfe)
if [ "$STAGE" = pdl ]; then
  make_7b_set
  step build 240 $Q kernels build
  step gpu_tests_pdl 150 python3 -m pytest -q -rfs -s tests/gpu/test_pdl_gpu.py
  step check_all 300 $Q check --failures-only
  wait
  bench_7b_set 120 --pdl 1,0
  for wb in 0 8192; do QPROF_KERNEL_DEFINES="-DQP_MV_WARM_BYTES=$wb" step bench_warm$wb 120 $Q bench \
    -m mistral-7b-q4_k_m -p 0 -n 128 -r 5 --pdl 1 --results $OUT/bench_variants.jsonl; done
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8 --pdl
fi
# prefill as CUDA graphs (branch prefill-graphs): replays equal eager bit for bit, then pp512 eager and replayed
# on each file in one lease (--prefill-graphs 0,1), then the usual set with both graphs on
if [ "$STAGE" = prefill ]; then
  make_7b_set
  step build 240 $Q kernels build
  step gpu_tests_prefill 300 python3 -m pytest -q -rfs tests/gpu/test_prefill_graphs_gpu.py tests/gpu/test_pdl_gpu.py
  step gpu_tests_bench 150 python3 -m pytest -q -rfs -m gpu tests/test_bench_cli.py
  wait
  for v in q4_k_m q4_0 q8_0 q6_k; do
    step pp_$v 150 $Q bench -m mistral-7b-$v -p 512 -n 0 -r 10 --prefill-graphs 0,1 --results $OUT/bench_prefill.jsonl
  done
  bench_7b_set 120
fi
if [ "$STAGE" = final3A ]; then  # carries .smol/smollm2.whl.part-aa: the shipped build's bench rows and kernel suites
  make_7b_set
  step build 240 $Q kernels build
  step gpu_tests_kernels 150 python3 -m pytest -q -rfs -x tests/gpu/test_quant_kernels.py tests/gpu/test_forward_ops.py \
    tests/gpu/test_pdl_gpu.py
  step check_inject 100 $Q check --inject block-dim --failures-only
  wait
  bench_7b_set 120
fi
if [ "$STAGE" = final3B ]; then  # carries .smol/smollm2.whl.part-ab, issued while final3A's machine is warm
  smollm2_e2e
fi
# issue 13 on one GPU: rayA carries .ray/a (the prelude keeps it in /root/ray), rayB carries .ray/b while
# rayA's machine is warm: Ray installs, a local head starts, and the same plan runs plain, --ray auto, --gpus all
# (the `ray` script: pip --target leaves out bin/ where an earlier wheel made it)
RAY_CLI='import sys; from ray.scripts.scripts import main; sys.argv[0] = "ray"; sys.exit(main())'
if [ "$STAGE" = rayB ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step gpu_tests_spread 120 python3 -m pytest -q -rfs tests/gpu/test_bench_spread_gpu.py  # its own ray.init: before the head
  step ray_start 60 python3 -c "$RAY_CLI" start --head --num-gpus=1 --num-cpus=4 --include-dashboard=false --disable-usage-stats
  wait
  for how in plain ray gpus; do
    case $how in plain) extra=();; ray) extra=(--ray auto);; gpus) extra=(--gpus all);; esac
    step bench_$how 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 5 "${extra[@]}" --results $OUT/bench_spread_$how.jsonl
  done
  python3 -c "$RAY_CLI" stop > /dev/null 2>&1
fi
# Decode attention like for like: what this tree's launches add to a step at short and long positions, and
# the same for the tree in .oldtree (`git archive issue-9-attn2 | tar x -C .oldtree`, carried), one lease
if [ "$STAGE" = attncmp ]; then
  step attn_here 150 python3 tests/gpu/bench_attention.py --positions 8,64,128,512 --fetch
  [ -d .oldtree ] && (cd .oldtree && PYTHONPATH=/tmp/site:$PWD step attn_oldtree 150 python3 tests/gpu/bench_attention.py \
    --positions 8,64,128,512)
fi
# session 5: fused QKV's RoPE table and prefill graphs. final5A carries .smol/smollm2.whl.part-aa and .oldtree
# (a git archive of the build to compare with, its commit in .oldtree/.qprof_build); final5B, issued while the
# machine is warm, carries part-ab. Only logs.tgz and the jsonl files come back (a call returns 8 files).
ab_oldtree() {  # ab_oldtree RUNS BENCH ARGS: this tree and .oldtree alternately, rows into $OUT/bench_ab.jsonl
  local runs=$1; shift
  for i in $(seq 1 $runs); do
    step ab_new_$i 120 $Q bench "$@" --results $OUT/bench_ab.jsonl
    [ -d .oldtree ] && (cd .oldtree && PYTHONPATH=/tmp/site:$PWD QPROF_BUILD_COMMIT=$(cat .qprof_build 2>/dev/null) \
      step ab_old_$i 200 $Q bench "$@" --results $OUT/bench_ab.jsonl)
  done
}
final5_checks_and_bench() {  # build, every check and kernel suite, the four files' bench (7B files made meanwhile)
  make_7b_set
  step build 240 $Q kernels build
  step check_all 200 $Q check --failures-only
  step gpu_tests_kernels 240 python3 -m pytest -q -rfs tests/gpu/test_quant_kernels.py tests/gpu/test_forward_ops.py \
    tests/gpu/test_pdl_gpu.py tests/gpu/test_prefill_graphs_gpu.py
  wait
  bench_7b_set 150
}
final5_e2e() {  # SmolLM2 end to end (the second half of its wheel carried by this call), the fault check, bench's GPU test
  smollm2_e2e
  step check_inject 150 $Q check --inject block-dim --failures-only
  step gpu_tests_bench 150 python3 -m pytest -q -rfs -m gpu tests/test_bench_cli.py
}
if [ "$STAGE" = final5A ]; then
  final5_checks_and_bench
  ab_oldtree 2 -m mistral-7b-q4_k_m -p 512 -n 128 -r 5
  step pp_eager_graphs 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 0 -r 10 --prefill-graphs 0,1 \
    --results $OUT/bench_prefill.jsonl
fi
if [ "$STAGE" = final5B ]; then
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
  final5_e2e
  step matvec_bw 240 python3 tests/gpu/bench_matvec.py --batches 1,8 --json $W/matvec_h200.json
fi
# prefill attention through torch's SDPA: the same as final5A/B, pp512 beside .oldtree (the build before it)
if [ "$STAGE" = final5C ]; then  # carries .smol/smollm2.whl.part-aa and .oldtree
  final5_checks_and_bench
  ab_oldtree 2 -m mistral-7b-q4_k_m -p 512 -n 0 -r 10
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 512 -n 4
fi
if [ "$STAGE" = final5D ]; then  # carries part-ab, issued while final5C's machine is warm
  final5_e2e
fi
if [ "$STAGE" = final2e2e ]; then
  smollm2_e2e
  step gpu_tests_kernels 120 python3 -m pytest -q -rfs -x tests/gpu/test_quant_kernels.py tests/gpu/test_forward_ops.py
  step check_inject 100 $Q check --inject block-dim --failures-only
fi
if [ "$STAGE" = finalA ]; then  # carries .smol/smollm2.whl.part-aa
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step matvec_bw 200 python3 tests/gpu/bench_matvec.py --batches 1,8 --json $W/matvec_h200.json
  step check_inject 150 $Q check --inject block-dim --failures-only
  wait
  step bench_kv_fused 200 $Q bench -m mistral-7b-q4_k_m -p 0 -n 128 -r 5 --kv-type f32,f16 --fused 1,0 \
    --results $W/bench_kv_fused.jsonl
  step gpu_tests_kernels 150 python3 -m pytest -q -rfs -x tests/gpu/test_quant_kernels.py tests/gpu/test_forward_ops.py
fi
if [ "$STAGE" = finalB ]; then  # carries .smol/smollm2.whl.part-ab, issued while finalA's machine is warm
  smollm2_e2e
  step generate_graphs 60 $Q generate -n 128
  for t in nsys torch events; do
    step profile_graphs_$t 100 $Q profile -m mistral-7b-q4_k_m --graphs --timing $t -p 128 -n 32
  done
fi
# session 6: bytes in flight a warp. Variants of the matvec build (QPROF_KERNEL_DEFINES): the L2 warm of
# each warp's whole rows at its start (QP_MV_WARM_BYTES), the register pipeline (QP_MV_PIPELINE: the next
# stage's loads issued before this one computes), alternately twice for tg128, then the matvec table and
# the replayed graph's op costs for the default and the variants
INFLIGHT_VARIANTS=("" "-DQP_MV_WARM_BYTES=2048" "-DQP_MV_WARM_BYTES=16384" "-DQP_MV_PIPELINE=1"
  "-DQP_MV_PIPELINE=1 -DQP_MV_WARM_BYTES=16384" "-DQP_MV_PIPELINE=1 -DQP_MV_MIN_CTAS_B1=1")
if [ "$STAGE" = inflight ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  wait
  for round in 1 2; do
    for i in "${!INFLIGHT_VARIANTS[@]}"; do
      step tg_v${i}_r$round 120 env QPROF_KERNEL_DEFINES="${INFLIGHT_VARIANTS[$i]}" $Q bench -m mistral-7b-q4_k_m \
        -p 0 -n 128 -r 5 --results $OUT/bench_inflight.jsonl
    done
  done
  mv_variants=(); for v in "${INFLIGHT_VARIANTS[@]:1}"; do mv_variants+=(--variant="$v"); done
  step matvec_bw 200 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K --batches 1 "${mv_variants[@]}"
  for i in 0 2 4; do
    step ablation_v$i 90 env QPROF_KERNEL_DEFINES="${INFLIGHT_VARIANTS[$i]}" python3 tests/gpu/bench_decode_ablation.py \
      -m mistral-7b-q4_k_m --reps 2
  done
fi
# session 6: decode attention with its loads in flight (QP_DECODE_KEYS_IN_FLIGHT) and kernels built per heads
# per KV head; checks first, then what it adds to a step at short and long positions beside .oldtree (the
# build before it, carried) and tg128 alternately in one lease
if [ "$STAGE" = attn6 ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step check_attn 240 $Q check --ops attention,fused_qkv --failures-only
  step gpu_tests_fwd 240 python3 -m pytest -q -rfs tests/gpu/test_forward_ops.py tests/gpu/test_prefill_graphs_gpu.py
  for kv in f32 f16; do
    step attn_here_$kv 150 python3 tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608 --kv $kv
    [ -d .oldtree ] && (cd .oldtree && PYTHONPATH=/tmp/site:$PWD step attn_old_$kv 150 python3 tests/gpu/bench_attention.py \
      --positions 8,64,128,512,4096 --n-ctx 4608 --kv $kv)
  done
  wait
  ab_oldtree 2 -m mistral-7b-q4_k_m -p 0 -n 128 -r 5
  step ablation 90 python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m --reps 2
fi
# session 6's closing measurements: final6A carries .smol/smollm2.whl.part-aa and .oldtree (the build before the
# last kernel change); final6B, issued while the machine is warm, carries part-ab
if [ "$STAGE" = final6A ]; then
  final5_checks_and_bench
  ab_oldtree 2 -m mistral-7b-q4_k_m -p 0 -n 128 -r 5
  step matvec_bw 240 python3 tests/gpu/bench_matvec.py --batches 1,8 --json $W/matvec_h200.json
  step attn_variants 150 python3 tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608 \
    --variant=-DQP_DECODE_KEYS_IN_FLIGHT=4 --variant=-DQP_DECODE_KEYS_IN_FLIGHT=2
fi
if [ "$STAGE" = final6B ]; then
  final5_e2e
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
  step ablation 90 python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m --reps 2
fi
# after final6A/B: the default keys in flight 8 -> 4; the attention check, its cost, and the events/torch agreement
# test (Mistral-7B, no SmolLM2 needed) that read attention 5.4% apart with 8
if [ "$STAGE" = final6C ]; then
  step build 240 $Q kernels build
  step check_attn 150 $Q check --ops attention --failures-only
  step attn 60 python3 tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608
  step gpu_test_agree 200 python3 -m pytest -q -rfs -s tests/gpu/test_profile_gpu.py -k agree_with_torch
fi
# session 7: decode attention in one launch (a TMA ring per warp, online softmax, the last split merges).
# attn7A: checks first, then its cost at short and long positions beside .oldtree (the build before it, carried)
# and the split size as variants; attn7B, issued while the machine is warm: tg128 alternately in one lease, the
# events/torch agreement test and the replayed graph's op costs
if [ "$STAGE" = attn7A ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step check_attn 240 $Q check --ops attention --failures-only
  step gpu_tests_fwd 200 python3 -m pytest -q -rfs tests/gpu/test_forward_ops.py
  step attn_f32 150 python3 tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608 \
    --variant=-DQP_DECODE_SPLIT_KEYS=32 --variant=-DQP_DECODE_SPLIT_KEYS=128
  step attn_f16 60 python3 tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608 --kv f16
  [ -d .oldtree ] && (cd .oldtree && PYTHONPATH=/tmp/site:$PWD step attn_old_f32 90 python3 tests/gpu/bench_attention.py \
    --positions 8,64,128,512,4096 --n-ctx 4608)
  wait
fi
if [ "$STAGE" = attn7B ]; then
  step make_7b 240 $Q workloads make mistral-7b-q4_k_m
  ab_oldtree 2 -m mistral-7b-q4_k_m -p 0 -n 128 -r 5
  step gpu_test_agree 200 python3 -m pytest -q -rfs -s tests/gpu/test_profile_gpu.py -k agree_with_torch
  step ablation 90 python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m --reps 2
fi
# session 7, after attn7A/B: the merge with one fence and count by thread 0 and one load of each split's (m, l);
# the split size as variants, after a flush and without one (the caches still cycle through HBM), and tg128
# of the default beside QP_DECODE_SPLIT_KEYS=128 (one split a KV head up to 128 positions) alternately
if [ "$STAGE" = attn7C ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step check_attn 240 $Q check --ops attention --failures-only
  for mb in 128 0; do
    step attn_f32_flush$mb 150 python3 tests/gpu/bench_attention.py --positions 8,64,128,256,512,4096 --n-ctx 4608 \
      --flush-mb $mb --variant=-DQP_DECODE_SPLIT_KEYS=128 --variant=-DQP_DECODE_SPLIT_KEYS=256
  done
  step attn_f16_flush0 60 python3 tests/gpu/bench_attention.py --positions 8,64,128,256,512,4096 --n-ctx 4608 \
    --kv f16 --flush-mb 0
  wait
  for round in 1 2; do
    for v in "" "-DQP_DECODE_SPLIT_KEYS=128"; do
      step tg_split${v#*=}_r$round 120 env QPROF_KERNEL_DEFINES="$v" $Q bench -m mistral-7b-q4_k_m -p 0 -n 128 -r 5 \
        --results $OUT/bench_split.jsonl
    done
  done
fi
# session 7: more splits at a long context (--splits: 32 is decode_splits' for n_ctx 4608 and 8 KV heads)
if [ "$STAGE" = attn7D ]; then
  step build 240 $Q kernels build
  step check_attn 240 $Q check --ops attention --failures-only
  for n in 32 64 128; do
    step attn_f32_s$n 60 python3 tests/gpu/bench_attention.py --positions 128,512,1024,4096 --n-ctx 4608 --flush-mb 0 \
      --splits $n --variant=-DQP_DECODE_SPLIT_KEYS=32
  done
  step attn_f16_s128 60 python3 tests/gpu/bench_attention.py --positions 128,512,1024,4096 --n-ctx 4608 --flush-mb 0 \
    --splits 128 --kv f16
fi
# session 7's closing run: final7A carries .smol/smollm2.whl.part-aa and .oldtree (main before this session's
# attention, 4d2b23fd); final7B, issued while the machine is warm, carries part-ab
if [ "$STAGE" = final7A ]; then
  final5_checks_and_bench
  ab_oldtree 2 -m mistral-7b-q4_k_m -p 0 -n 128 -r 5
  for mb in 0 128; do
    step attn_f32_flush$mb 60 python3 tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608 --flush-mb $mb
  done
  # the build before (its bench_attention always flushes 128 MB)
  [ -d .oldtree ] && (cd .oldtree && PYTHONPATH=/tmp/site:$PWD step attn_old_f32_flush128 60 python3 \
    tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608)
  step attn_f16_flush0 60 python3 tests/gpu/bench_attention.py --positions 8,64,128,512,4096 --n-ctx 4608 --kv f16 --flush-mb 0
fi
if [ "$STAGE" = final7B ]; then
  final5_e2e
  step ablation 90 python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m --reps 2
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
fi
# session 9's closing run on main (the split of branch issue-9-split2 measured slower in its split8A): final9A
# carries .smol/smollm2.whl.part-aa; final9B, issued while the machine is warm, carries part-ab
if [ "$STAGE" = final9A ]; then
  final5_checks_and_bench
  step gpu_tests_ceilings 120 python3 -m pytest -q -rfs tests/gpu/test_ceilings_gpu.py
  cp $QPROF_CACHE/ceilings.json $OUT/ceilings.json 2>/dev/null
  step matvec_bw 240 python3 tests/gpu/bench_matvec.py --batches 1,8 --read --json $W/matvec_h200.json
  cp $W/matvec_h200.json $OUT/ 2>/dev/null
fi
if [ "$STAGE" = final9B ]; then
  final5_e2e
  step ablation 90 python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m --reps 2
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
fi
# session 9: the read ceiling timed with its launches back to back (final9A's ceilings GPU test found the
# 1 GiB read, one launch a sample, 5-9% below the 128 MiB reads of the read by size)
if [ "$STAGE" = read9 ]; then
  step bench_read 120 python3 tests/gpu/bench_read.py --launches 1,4,16
  step doctor_measure 120 $Q doctor --measure
  cp $QPROF_CACHE/ceilings.json $OUT/ceilings.json 2>/dev/null
  step gpu_tests_ceilings 120 python3 -m pytest -q -rfs tests/gpu/test_ceilings_gpu.py
  step bench_read_128 60 python3 tests/gpu/bench_read.py --mib 128 --launches 1,4
fi
# session 9: the ceilings measured with the read's launches back to back (the default since read9), then
# tg128 Q4_K_M against the decode bound they give, and the per-step host gap (events timing, no profiler)
if [ "$STAGE" = bench9 ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step doctor_measure 120 $Q doctor --measure
  cp $QPROF_CACHE/ceilings.json $OUT/ceilings.json 2>/dev/null
  step gpu_tests_ceilings 120 python3 -m pytest -q -rfs tests/gpu/test_ceilings_gpu.py
  step build 240 $Q kernels build
  wait
  step bench_q4_k_m 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 5 --results $OUT/bench_h200.jsonl
  for i in 1 2; do step tg_$i 120 $Q bench -m mistral-7b-q4_k_m -p 0 -n 128 -r 5 --results $OUT/bench_h200.jsonl; done
  step profile_events 120 $Q profile -m mistral-7b-q4_k_m --timing events --graphs -p 64 -n 32
fi
# session 9: the host's turn between tokens (bench's synchronized loop against decodes queued back to back)
if [ "$STAGE" = host9 ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  wait
  step host_turn 90 python3 tests/gpu/bench_host_turn.py -m mistral-7b-q4_k_m --reps 3
  step host_turn_nvtx 60 python3 tests/gpu/bench_host_turn.py -m mistral-7b-q4_k_m --reps 2 --nvtx on
fi
# branches issue-9-q6k-repack / issue-9-repack-heads: Q6_K (and Q4_0, Q5_0, Q8_0) split at upload, the codes
# 16-aligned and the heads apart. q6k10A carries
# .oldtree (main before the repack) and .smol/smollm2.whl.part-aa: every check, the kernel suites, the split types'
# matvec table here and in .oldtree, tg128 of Q4_K_M, Q6_K and Q8_0 alternately, and the host's turn split by call; q6k10B,
# issued while the machine is warm, carries part-ab: SmolLM2 end to end, the fault check, the four files' bench
if [ "$STAGE" = q6k10A ]; then
  for v in q4_k_m q6_k q8_0; do (python3 -m qprof.cli workloads make mistral-7b-$v > $W/make_$v.log 2>&1) & done
  step build 240 $Q kernels build
  step check_all 200 $Q check --failures-only
  step gpu_tests_kernels 240 python3 -m pytest -q -rfs tests/gpu/test_quant_kernels.py tests/gpu/test_forward_ops.py \
    tests/gpu/test_pdl_gpu.py tests/gpu/test_prefill_graphs_gpu.py
  step matvec_bw 150 python3 tests/gpu/bench_matvec.py --types Q6_K,Q8_0,Q4_0,Q5_0,Q4_K --batches 1,8 --read
  [ -d .oldtree ] && (cd .oldtree && PYTHONPATH=/tmp/site:$PWD step matvec_bw_old 150 python3 tests/gpu/bench_matvec.py \
    --types Q6_K,Q8_0,Q4_0,Q5_0 --batches 1,8 --read)
  wait
  for i in 1 2; do
    for v in q4_k_m q6_k q8_0; do
      step tg_${v}_new_$i 120 $Q bench -m mistral-7b-$v -p 0 -n 128 -r 5 --results $OUT/bench_ab.jsonl
      [ -d .oldtree ] && (cd .oldtree && PYTHONPATH=/tmp/site:$PWD QPROF_BUILD_COMMIT=$(cat .qprof_build) \
        step tg_${v}_old_$i 200 $Q bench -m mistral-7b-$v -p 0 -n 128 -r 5 --results $OUT/bench_ab.jsonl)
    done
  done
  step host_turn 90 python3 tests/gpu/bench_host_turn.py -m mistral-7b-q4_k_m --reps 3
fi
if [ "$STAGE" = q6k10B ]; then
  final5_e2e
  make_7b_set
  wait
  bench_7b_set 150
  step ablation 90 python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m --reps 2
fi
# session 10: greedy decode with one token in flight (bench's --decode-loop, default in-flight) on main with the device
# layout. final10A carries .smol/smollm2.whl.part-aa: every check and kernel suite (the chain's GPU tests too), the
# four files' bench with both loops, tg128 Q4_K_M with the loops in the other order, the host's turn with the
# in-flight column, the matvec table; final10B, issued while the machine is warm, carries part-ab: SmolLM2 end to
# end (generate's greedy now in flight), the fault check, bench's GPU test, the ablation and a graphs profile
if [ "$STAGE" = final10A ]; then
  make_7b_set
  step build 240 $Q kernels build
  step check_all 200 $Q check --failures-only
  step gpu_tests_kernels 300 python3 -m pytest -q -rfs tests/gpu/test_quant_kernels.py tests/gpu/test_forward_ops.py \
    tests/gpu/test_pdl_gpu.py tests/gpu/test_prefill_graphs_gpu.py tests/gpu/test_decode_greedy_gpu.py \
    tests/gpu/test_ceilings_gpu.py
  cp $QPROF_CACHE/ceilings.json $OUT/ceilings.json 2>/dev/null
  wait
  bench_7b_set 200 --decode-loop in-flight,synced
  step tg_loops_q4_k_m 200 $Q bench -m mistral-7b-q4_k_m -p 0 -n 128 -r 5 --decode-loop synced,in-flight \
    --results $OUT/bench_h200.jsonl
  step host_turn 120 python3 tests/gpu/bench_host_turn.py -m mistral-7b-q4_k_m --reps 3
  step matvec_bw 240 python3 tests/gpu/bench_matvec.py --batches 1,8 --read --json $W/matvec_h200.json
  cp $W/matvec_h200.json $OUT/ 2>/dev/null
fi
# session 10: the in-flight loop under the profiler (torch and nsys, graphs), beside the synced loop
if [ "$STAGE" = profile10 ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  wait
  step gpu_tests_profile_graphs 300 python3 -m pytest -q -rfs -s tests/gpu/test_profile_graphs_gpu.py
  for loop in synced in-flight; do
    step profile_7b_$loop 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 16 --decode-loop $loop
  done
fi
# session 10's last commit: the GPU tests of the in-flight loop and Q4_K_M's bench with both loops, twice
if [ "$STAGE" = final10C ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  step build 240 $Q kernels build
  step gpu_tests_chain 200 python3 -m pytest -q -rfs tests/gpu/test_decode_greedy_gpu.py
  wait
  for i in 1 2; do
    step bench_q4_k_m_$i 150 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 5 --decode-loop in-flight,synced \
      --results $OUT/bench_h200.jsonl
  done
fi
# session 10: fewer keys a decode-attention split at short positions (QP_DECODE_SPLIT_KEYS 32 against the default
# 64; only positions below 64 x the splits change): attention's check and cost, then tg128 in flight, alternating
if [ "$STAGE" = split10 ]; then
  (python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1) &
  K32=-DQP_DECODE_SPLIT_KEYS=32
  step build 240 $Q kernels build
  QPROF_KERNEL_DEFINES=$K32 step build_k32 240 $Q kernels build
  QPROF_KERNEL_DEFINES=$K32 step check_attn_k32 120 $Q check --ops attention --failures-only
  step attn_k64 60 python3 tests/gpu/bench_attention.py --positions 8,32,64,128 --n-ctx 256 --flush-mb 0
  QPROF_KERNEL_DEFINES=$K32 step attn_k32 60 python3 tests/gpu/bench_attention.py --positions 8,32,64,128 \
    --n-ctx 256 --flush-mb 0
  wait
  for i in 1 2; do
    step tg_k64_$i 90 $Q bench -m mistral-7b-q4_k_m -p 0 -n 128 -r 5 --results $OUT/bench_split.jsonl
    QPROF_KERNEL_DEFINES=$K32 step tg_k32_$i 90 $Q bench -m mistral-7b-q4_k_m -p 0 -n 128 -r 5 \
      --results $OUT/bench_split.jsonl
  done
fi
if [ "$STAGE" = final10B ]; then
  final5_e2e
  step ablation 90 python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m --reps 2
  step profile_7b 120 $Q profile -m mistral-7b-q4_k_m --timing torch --graphs -p 64 -n 8
fi
