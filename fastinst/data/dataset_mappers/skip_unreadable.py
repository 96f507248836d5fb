"""Training never dies on one bad image: a mapper wrapper that skips files that fail to decode.

The registration's header check (fastinst/data/datasets/coco_validation.py) catches most bad files before
training; a file whose header is fine but whose data is not (truncated, corrupt) is found only when the mapper
decodes it. Then `SkipUnreadableImages` logs one warning naming the file, appends a line to its record file and
returns None; detectron2's `MapDataset` then maps another, randomly chosen image instead. The record file (one
line per skip, shared by data loader workers and processes through O_APPEND writes) feeds the summary at the end
of training (`skipped_images_summary`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..image_io import UnreadableImageError

__all__ = ["SkipUnreadableImages", "skipped_images_summary"]

logger = logging.getLogger(__name__)


class SkipUnreadableImages:
    """Wrap a training mapper: an image that cannot be decoded -> warning, record line, None (skip)."""

    def __init__(self, mapper: Callable[[dict], Any], record_file: str | None = None) -> None:
        """
        Args:
            mapper: the training mapper (dataset dict -> model input).
            record_file: file to which each skip appends "file_name<TAB>reason"; None records nothing.
        """
        self.mapper = mapper
        self.record_file = record_file

    def __call__(self, dataset_dict: dict[str, Any]) -> Any:
        try:
            return self.mapper(dataset_dict)
        except UnreadableImageError as e:
            logger.warning("skipped a training image: %s Training goes on with another image.", e)
            if self.record_file is not None:
                line = f"{e.path}\t{e.reason}\n".encode("utf-8", "replace")
                fd = os.open(self.record_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            return None


def skipped_images_summary(record_file: str) -> str | None:
    """One line: how many training images were skipped (how many times), the first few names; None if none."""
    if not os.path.isfile(record_file):
        return None
    with open(record_file, encoding="utf-8", errors="replace") as f:
        names = Counter(line.split("\t", 1)[0] for line in f if line.strip())
    if not names:
        return None
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"{len(names)} training image(s) could not be decoded and were skipped {sum(names.values())} time(s) "
        f"in all: {shown} (list in {record_file}). Replace or remove them from the json."
    )
