"""Generation speed: our KV-cache generate() against HF transformers' generate(), same weights, one run.

    python -m bench.generate              # batch 1 greedy and 10 samples per prompt, fp32 and bf16 weights
    python -m bench.generate --quick      # one weight dtype (generate.py's --dtype auto), 3 rounds
    python -m bench.generate --device cuda
    python -m bench.generate --host-bound --threads 1   # each side's cost per decode step around the kernels

One random GPT-2 124M (seeded) is saved by transformers and loaded by model/hf.py, so both sides hold the
same weights; ours runs with model/kernels.py's fast kernels, as generate.py runs it, and a greedy run
checks that both produce the same ids. The prompt is 64 random token ids; every call makes exactly
--new-tokens tokens per row (no end-of-text stop), so tokens/s = rows x new tokens / seconds, prefill
included. Each round makes one call of every workload on each side (ours b1, HF b1, ours n, HF n);
medians of --rounds after a warm-up round.
The pass@k workload is n=10 samples of one prompt (temperature 0.8, top-p 0.95): one prefill, ten rows.
--host-bound keeps GPT-2's 12 layers and 12 heads but at width 48 with a 1,024-token vocabulary: the work
per step is then tiny, and tokens/s measures what each side spends around its kernels (Python, dispatch,
allocation). That cost is what bounds batch-1 decoding on a GPU, so on a CPU this is its proxy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from bench.common import interleave, machine_line, markdown_table, median, open_device, positive_int, timed
from cli import cpu_has_bf16, resolve_dtype
from generation import generate

HOST_BOUND = dict(n_embd=48, vocab_size=1024)  # --host-bound: GPT-2's depth and heads, tiny matrices


def load_pair(device: torch.device, seed: int = 0, **shape):
    """(ours, hf) GPT-2 (124M, or GPT2Config(**shape)) with the same random weights, in eval mode, fp32;
    ours with the fast kernels that generate.py decodes with."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from model.hf import load_pretrained
    from model.kernels import use_fast_kernels

    torch.manual_seed(seed)
    last = shape.get("vocab_size", 50257) - 1  # GPT-2's <|endoftext|> is its last id
    hf = GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=last, eos_token_id=last)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_pretrained(d, device=device)
    hf.generation_config.eos_token_id = None  # every call makes exactly max_new_tokens tokens
    hf.generation_config.pad_token_id = last
    return use_fast_kernels(ours).eval(), hf.to(device)


def workloads(
    ours, hf, prompt: torch.Tensor, new: int, n: int, seed: int, graph: bool = False, compiled: bool = False
):
    """name -> (rows, {side: call}) for batch 1 greedy and n samples of one prompt; sides ours, HF, with
    graph ours decoding through one CUDA graph per step (generate(cuda_graph=True)), and with compiled
    ours at batch 1 through torch.compile (generate(compile=True), which decodes one row)."""
    ids = prompt.tolist()
    attn = torch.ones_like(prompt)
    g = torch.Generator(device=prompt.device)
    sampling = dict(temperature=0.8, top_p=0.95)

    def ours_greedy(**kw):
        return generate(ours, [ids[0]], max_new_tokens=new, **kw)

    def hf_greedy():
        return hf.generate(
            prompt, attention_mask=attn, max_new_tokens=new, min_new_tokens=new, do_sample=False
        )

    def ours_sample(**kw):
        g.manual_seed(seed)
        return generate(ours, [ids[0]], max_new_tokens=new, n=n, generator=g, **sampling, **kw)

    def hf_sample():
        torch.manual_seed(seed)
        return hf.generate(
            prompt, attention_mask=attn, max_new_tokens=new, min_new_tokens=new, do_sample=True,
            num_return_sequences=n, top_k=0, **sampling,
        )  # fmt: skip

    loads = {
        "batch 1, greedy": (1, {"ours": ours_greedy, "HF": hf_greedy}),
        f"{n} samples of 1 prompt (pass@k)": (n, {"ours": ours_sample, "HF": hf_sample}),
    }
    if graph:
        for _, calls in loads.values():
            calls["graph"] = lambda f=calls["ours"]: f(cuda_graph=True)
    if compiled:
        loads["batch 1, greedy"][1]["compiled"] = lambda: ours_greedy(compile=True)
    return loads


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one weight dtype (generate.py's auto), 3 rounds")
    p.add_argument("--prompt-len", type=positive_int, default=64)
    p.add_argument("--new-tokens", type=positive_int, default=128)
    p.add_argument("--n", type=positive_int, default=10, help="samples per prompt in the pass@k row")
    p.add_argument(
        "--rounds", type=positive_int, default=5, help="timed calls per contender (median reported)"
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--dtypes", default="auto", help="fp32,bf16 or auto (fp32, + bf16 where native: GPU, AVX512-BF16/AMX)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also ours with one CUDA graph per decode step (--device cuda)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also ours at batch 1 decoding through torch.compile (CPU, fp32; compiled in the warm-up)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--host-bound",
        action="store_true",
        help="GPT-2's layers and heads at width 48, vocabulary 1,024: measures the cost per step around the "
        "kernels (a CPU proxy for batch-1 decoding on a GPU)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prompt_len + args.new_tokens > 1024:  # GPT-2 124M's context
        print(f"error: --prompt-len + --new-tokens = {args.prompt_len + args.new_tokens}, over GPT-2's 1024")
        return 2
    device = open_device(args.device, args.threads)
    if device is None:
        return 2
    if args.cuda_graph and device.type != "cuda":
        print("error: --cuda-graph needs --device cuda")
        return 2
    if args.compile and device.type != "cpu":
        print("error: --compile decodes on a CPU (on a GPU: --cuda-graph)")
        return 2
    if args.compile and args.warmup < 1:
        print("error: --compile needs a warm-up round (--warmup 1 or more): it holds the compile time")
        return 2
    dtypes = args.dtypes.split(",")
    if args.dtypes != "auto" and not set(dtypes) <= {"fp32", "bf16"}:
        print(f"error: --dtypes {args.dtypes}: pass fp32, bf16, fp32,bf16 or auto")
        return 2
    if args.dtypes == "auto":  # a CPU without native bf16 emulates it, far slower: bf16 rows would time that
        native_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
        dtypes = ["fp32", "bf16"] if native_bf16 else ["fp32"]
    if args.quick and args.dtypes == "auto":  # the one generate.py decodes in
        dtypes = ["bf16" if resolve_dtype("auto", device, training=False) == torch.bfloat16 else "fp32"]
    rounds = min(3, args.rounds) if args.quick else args.rounds
    shape = HOST_BOUND if args.host_bound else {}
    ours, hf = load_pair(device, **shape)
    vocab = ours.config.vocab_size
    prompt = torch.randint(0, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)
    with torch.no_grad():
        a = generate(ours, [prompt[0].tolist()], max_new_tokens=16)[0]
        b = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False)
    hf_ids = b[0, args.prompt_len :].tolist()
    print(f"greedy ids, fp32, first 16 tokens: ours == HF: {a == hf_ids}")
    if args.cuda_graph:
        c = generate(ours, [prompt[0].tolist()], max_new_tokens=16, cuda_graph=True)[0]
        print(f"greedy ids, fp32, first 16 tokens: ours with the CUDA graph == HF: {c == hf_ids}")
    if args.compile:
        start = time.perf_counter()
        c = generate(ours, [prompt[0].tolist()], max_new_tokens=16, compile=True)[0]
        print(
            f"greedy ids, fp32, first 16 tokens: ours compiled == HF: {c == hf_ids} (first call, compile "
            f"included: {time.perf_counter() - start:.1f} s)"
        )
    extra = "graph" if args.cuda_graph else "compiled" if args.compile else None
    rows = []
    for dt in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dt]
        ours, hf = ours.to(dtype), hf.to(dtype)
        loads = workloads(
            ours,
            hf,
            prompt,
            args.new_tokens,
            args.n,
            0,
            graph=args.cuda_graph,
            compiled=args.compile and dt == "fp32",
        )
        # Every call of every workload in one round-robin, so "vs its batch 1" also compares calls made
        # under the same load: (workload, side) -> seconds per call.
        fns = {
            (name, side): (lambda f=f: timed(f, device))
            for name, (_, calls) in loads.items()
            for side, f in calls.items()
        }
        with torch.no_grad():
            times = interleave(fns, rounds, args.warmup)
        b1 = {
            side: args.new_tokens / median(t)
            for (name, side), t in times.items()
            if name == "batch 1, greedy"
        }
        for name, (n_rows, calls) in loads.items():
            tps = {side: n_rows * args.new_tokens / median(times[(name, side)]) for side in calls}
            secs = {side: [round(t, 2) for t in times[(name, side)]] for side in calls}
            speeds = ", ".join(f"{k} {v:.1f} tok/s {secs[k]}" for k, v in tps.items())
            print(f"  {dt} {name}: {speeds}", flush=True)
            row = [
                name, dt, f"{tps['ours']:,.1f}", f"{tps['HF']:,.1f}", f"**{tps['ours'] / tps['HF']:.2f}x**",
                f"{tps['ours'] / b1['ours']:.2f}x", f"{tps['HF'] / b1['HF']:.2f}x",
            ]  # fmt: skip
            if extra == "graph":
                row[5:5] = [f"{tps['graph']:,.1f}", f"**{tps['graph'] / tps['HF']:.2f}x**"]
                row.append(f"{tps['graph'] / b1['graph']:.2f}x")
            elif extra == "compiled":  # batch 1 only: generate(compile=True) decodes more rows eagerly
                c = tps.get("compiled")
                row[5:5] = [f"{c:,.1f}", f"**{c / tps['HF']:.2f}x**"] if c else ["-", "-"]
            rows.append(row)
    header = ["workload", "weights", "ours tok/s", "HF tok/s", "speed-up", "ours vs its batch 1",
              "HF vs its batch 1"]  # fmt: skip
    if extra == "graph":
        header[5:5] = ["ours, CUDA graph tok/s", "graph speed-up"]
        header.append("graph vs its batch 1")
    elif extra == "compiled":
        header[5:5] = ["ours, compiled tok/s", "compiled speed-up"]
    print()
    model = "GPT-2 124M" if not shape else "GPT-2's 12 layers x 12 heads at width 48, vocabulary 1,024"
    print(
        f"Generation, {model} (random weights), {args.prompt_len}-token prompt, {args.new_tokens} new "
        f"tokens per row, KV cache, median of {rounds} rounds after {args.warmup} warm-up (each round: one "
        f"call of every workload on each side):\n"
    )
    print(markdown_table(header, rows))
    print(f"\n{machine_line(device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
