"""SAE training throughput on cached activations, and how close it gets to the machine's matmul rate.

Ours: SAELens's SAETrainer.step (TopK SAE forward, AuxK, backward, grad clip, Adam, sparsity stats)
fed by `saes.data.ShardedBatches` over an in-memory activation cache (synthetic Gaussian
activations with the default SAE's shapes: d_in 576, d_sae 4608, k 32, batch 1024).
Baseline: the five plain `torch.mm` of the same shapes that one step needs (encode, decode, and
the three backward GEMMs: dW_dec, d acts, dW_enc). Achieved FLOP rate counts 10 * B * d_in * d_sae
per step; ratio = achieved rate / torch.mm rate, the median over repeats of the paired ratio (the
two sides alternate, `lm.benchmark.interleaved`, until it is known to --tol or --budget-s is spent);
rates are from each side's median time. Prints one JSON line last.
"""

import argparse
import json
import statistics

import torch

from lm.benchmark import interleaved, paired_ratio


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--cached-tokens", type=int, default=32_768)
    ap.add_argument("--steps", type=int, default=6, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=20, help="most timed rounds")
    ap.add_argument("--tol", type=float, default=0.005, help="stop once the median ratio's standard error is below")
    ap.add_argument("--budget-s", type=float, default=40.0, help="stop after this many seconds of timed rounds")
    args = ap.parse_args(argv)

    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saes.data import ShardedBatches

    torch.manual_seed(0)
    B, d, m = args.batch_size, args.d_in, args.d_sae
    acts = {0: {"h": torch.randn(args.cached_tokens, d)}}
    batches = ShardedBatches(acts, n_shards=1, batch_size=B, seed=0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=args.k))
    total = (args.steps * args.repeats * 2 + 2) * B
    trainer = SAETrainer(SAETrainerConfig(total_training_samples=total, train_batch_size_samples=B, lr_end=3e-5), sae, iter(()))

    def ours():
        for _ in range(args.steps):
            trainer.step(next(batches)["h"])
            trainer.n_training_steps += 1

    x, g_out = torch.randn(B, d), torch.randn(B, d)
    a, g_act = torch.randn(B, m), torch.randn(B, m)
    W_enc, W_dec = torch.randn(d, m), torch.randn(m, d)

    def baseline():
        for _ in range(args.steps):
            torch.mm(x, W_enc), torch.mm(a, W_dec)  # forward
            torch.mm(a.T, g_out), torch.mm(g_out, W_dec.T), torch.mm(x.T, g_act)  # backward

    times = interleaved({"ours": ours, "mm": baseline}, args.repeats, pairs=[("ours", "mm")], tol=args.tol,
                        budget_s=args.budget_s)
    t_ours, t_base = statistics.median(times["ours"]), statistics.median(times["mm"])
    flops = 10 * B * d * m
    result = {
        "tokens_per_s": args.steps * B / t_ours,
        "achieved_gflop_s": flops * args.steps / t_ours / 1e9,
        "mm_gflop_s": flops * args.steps / t_base / 1e9,
        "ratio": paired_ratio(times["ours"], times["mm"], digits=None)["median"],
        "ratio_spread": paired_ratio(times["ours"], times["mm"]),
        "step_ms": 1e3 * t_ours / args.steps,
        "shape": {"batch": B, "d_in": d, "d_sae": m, "k": args.k},
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
