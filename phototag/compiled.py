"""A torch.compile'd forward pass whose compile cost is paid once, before the first request.

TorchServe hands the handler batches of any size from 1 to batchSize. A model compiled for static shapes would
recompile (seconds to minutes) on the first batch of each new size, in the middle of serving. So batches are
padded up to the next of a few bucket sizes (powers of two up to the largest batch) and every bucket is compiled
by `warm_up` at worker start.
"""
from __future__ import annotations

import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two below `max_batch`, then `max_batch` itself: 8 -> [1, 2, 4, 8], 12 -> [1, 2, 4, 8, 12]."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    return buckets + [max_batch]


def cat_outputs(chunks: list):
    """Concatenate per-chunk outputs along the batch: tensors, or tuples of tensors (logits, cells)."""
    if isinstance(chunks[0], torch.Tensor):
        return torch.cat(chunks)
    return tuple(torch.cat(parts) for parts in zip(*chunks))


def _head(output, n: int):
    """The first n photos of an output: a tensor or a tuple of tensors."""
    return output[:n] if isinstance(output, torch.Tensor) else tuple(part[:n] for part in output)


class BucketedCompiledModel:
    """Callable like the model it wraps: float [N, 3, S, S] -> its output for any N (logits [N, num_logits], or
    a `phototag.model.ServedTagger`'s (logits, cells)).

    Batches larger than the largest bucket are run in chunks of it.
    """

    def __init__(self, model: torch.nn.Module, max_batch: int, mode: str = "default"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, not {mode!r}")
        self.model = model
        self.mode = mode
        self.buckets = batch_buckets(max_batch)
        self.compiled = torch.compile(model, mode=mode, dynamic=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        largest = self.buckets[-1]
        if len(x) > largest:
            return cat_outputs([self(chunk) for chunk in x.split(largest)])
        n = len(x)
        bucket = next(b for b in self.buckets if b >= n)
        if bucket > n:
            padding = x.new_zeros((bucket - n, *x.shape[1:]))
            x = torch.cat([x, padding]).contiguous(memory_format=_memory_format(x))
        return _head(self.compiled(x), n)

    def warm_up(self, run_batch) -> None:
        """Compile every bucket now; `run_batch(n)` runs one forward pass of n images the way serving will."""
        for size in self.buckets:
            run_batch(size)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
