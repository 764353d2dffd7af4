"""Cost of one RSPC training step relative to one plain step, measured side by side on this machine.

Both steps do forward, backward and the AdamW step of the backbone; the RSPC step also runs the corruption model,
the paired forward on ``cat([corrupted, clean])`` with alignment hooks, and C's SGD step. The floor is about 2.0:
every sample goes through the backbone twice.

    python benchmarks/bench_rspc_step.py    # rvt_tiny_plus (vit_tiny until RVT is registered), 224, batch 8
    python benchmarks/bench_rspc_step.py --model deit_tiny_patch16_224 --batch-size 16 --repeats 10
"""
import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn as nn

import timm_rspc  # noqa: F401  (registers RVT / FAN)
from timm_rspc.method import PlainClassificationTask, RSPCTask


def make_task(kind, args):
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=1000, **({'img_size': args.img_size} if args.img_size else {}))
    if kind == 'rspc':
        task = RSPCTask(model, nn.CrossEntropyLoss(), verbose=False)
    else:
        task = PlainClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=1e-4)
    task.attach_optimizer(optimizer)
    task.get_trainable_module().train()
    return task, optimizer


def one_step(task, optimizer, x, target):
    task(x, target)['loss'].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = 'rvt_tiny_plus' if 'rvt_tiny_plus' in timm.list_models() else 'vit_tiny_patch16_224'
    parser.add_argument('--model', default=default_model)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=6)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: unchanged)')
    parser.add_argument('--json', default=None, help='also write the results to this JSON file')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    target = torch.randint(0, 1000, (args.batch_size,))
    runs = {kind: make_task(kind, args) for kind in ('plain', 'rspc')}
    for kind, (task, optimizer) in runs.items():
        for _ in range(args.warmup):
            one_step(task, optimizer, x, target)
    times = {kind: [] for kind in runs}
    for _ in range(args.repeats):  # interleaved, so that load changes on the machine hit both alike
        for kind, (task, optimizer) in runs.items():
            start = time.perf_counter()
            one_step(task, optimizer, x, target)
            times[kind].append(time.perf_counter() - start)
    plain, rspc = statistics.median(times['plain']), statistics.median(times['rspc'])
    result = dict(model=args.model, img_size=args.img_size, batch_size=args.batch_size, threads=torch.get_num_threads(),
                  repeats=args.repeats, plain_step_s=plain, rspc_step_s=rspc, ratio=rspc / plain,
                  ratio_min_times=min(times['rspc']) / min(times['plain']))
    print(f"{args.model} @ {args.img_size}, batch {args.batch_size}, {result['threads']} threads, "
          f"median of {args.repeats}: plain step {plain * 1e3:.1f} ms, RSPC step {rspc * 1e3:.1f} ms, "
          f"ratio {rspc / plain:.2f} (min-based {result['ratio_min_times']:.2f}; floor ~2.0)")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
