"""Post-processing memory follows the instances kept, not the image size (issue 12, point 5).

The measure is the bytes that torch's CPU allocator hands out while the post-processing runs (profiler with
`profile_memory=True`, each op's own allocations): an upper bound of its peak, independent of the process.
"""

import torch
from torch.profiler import ProfilerActivity, profile

from fastinst.modeling.postprocessing import instance_inference

PADDED, IMAGE = (96, 128), (90, 121)  # a 96x128 padded input holding a 90x121 image


def logits(seed: int = 0, confidence: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(20, 8, generator=g) * confidence  # (Q, K+1)
    masks = torch.randn(20, 12, 16, generator=g) * 4  # (Q, H8, W8)
    return cls, masks


def allocated_bytes(fn) -> tuple[int, object]:
    """(bytes allocated by the ops that `fn` runs, its result)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events() if e.name != "[memory]")
    return allocated, result


def test_nothing_kept_costs_the_same_at_16x_the_pixels():
    cls, masks = logits()
    assert cls.softmax(-1)[:, :-1].max() < 0.9  # no pair can reach the threshold
    peaks = {}
    for out_size in ((180, 242), (720, 968)):  # 16x the pixels
        peaks[out_size], inst = allocated_bytes(
            lambda s=out_size: instance_inference(cls, masks, PADDED, IMAGE, s, 50, 0.9)
        )
        assert len(inst) == 0 and inst.pred_masks.shape == (0, *out_size)
    small, large = peaks.values()
    assert large <= small + 16 * 1024, peaks  # no full-size mask pasted

    # without a threshold (evaluation: all top-k) the same measure grows with the image
    top_k = [
        allocated_bytes(lambda s=s: instance_inference(cls, masks, PADDED, IMAGE, s, 50))[0]
        for s in ((180, 242), (720, 968))
    ]
    assert top_k[1] > 8 * top_k[0] > 8 * 180 * 242, top_k
    assert small < 180 * 242, peaks  # less than one bool mask of the small image


def test_threshold_keeps_exactly_the_instances_that_pass():
    for seed in range(3):
        cls, masks = logits(seed, confidence=6.0)
        args = (cls, masks, PADDED, IMAGE, (180, 242), 50)
        everything = instance_inference(*args)  # as evaluation
        passing = everything[everything.scores >= 0.5]
        early = instance_inference(*args, score_threshold=0.5)
        early = early[early.scores >= 0.5]
        assert len(passing) > 0
        assert torch.equal(early.scores, passing.scores)  # bit-identical
        assert torch.equal(early.pred_classes, passing.pred_classes)
        assert early.pred_masks.dtype == torch.bool
        assert torch.equal(early.pred_masks, passing.pred_masks)
        assert torch.equal(early.pred_boxes.tensor, passing.pred_boxes.tensor)
