"""Robustness benchmarks with the literature's exact conventions: ImageNet(-C, -A, -R, -P, -Sketch, -V2), CIFAR-C.

``run_benchmark(model_name, output, imagenet_c=..., ...)`` evaluates a model into a resumable run folder and returns
plain dicts (``corrupt=DIR, corrupt_options=CorruptOptions(...)``: any image folder under ImageNet-C's corruptions
generated on the device); ``compare([...])`` puts several results side by side; ``write_corrupted_tree(src, dst)``
saves a corrupted copy in ImageNet-C's layout. The metric functions are pure tensor code in
`corruption_metrics` and `perturbation_metrics`; the fixed constants and their sources are in `reference`.
"""
from .compare import compare, read_results
from .corrupt_tree import write_corrupted_tree
from .on_the_fly import CorruptOptions
from .runner import load_model, run_benchmark

__all__ = ['run_benchmark', 'load_model', 'compare', 'read_results', 'CorruptOptions', 'write_corrupted_tree']
