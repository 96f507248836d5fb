"""The FastInst meta-architecture: normalise, pad, backbone, head, then losses or instances (SPEC §1, §2.1).

Shape shorthand: B images, Hp x Wp the padded batch size (a multiple of the size divisibility), G ground-truth
instances of one image.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import Tensor, nn

from fastinst.checkpoint import fill_duplicate_empty_weight
from fastinst.modeling.criterion import SetCriterion
from fastinst.modeling.matcher import HungarianMatcher
from fastinst.modeling.postprocessing import instance_inference, instance_inference_reference

SMALL_INPUT_POLICIES = ("error", "pad")


def build_criterion(cfg) -> SetCriterion:
    """SetCriterion and HungarianMatcher from MODEL.FASTINST (the loss weights also weight the matching)."""
    fi = cfg.MODEL.FASTINST
    matcher = HungarianMatcher(
        cost_class=fi.CLASS_WEIGHT,
        cost_mask=fi.MASK_WEIGHT,
        cost_dice=fi.DICE_WEIGHT,
        cost_location=fi.LOCATION_WEIGHT,
        num_points=fi.TRAIN_NUM_POINTS,
    )
    weight_dict = {
        "loss_ce": fi.CLASS_WEIGHT,
        "loss_mask": fi.MASK_WEIGHT,
        "loss_dice": fi.DICE_WEIGHT,
    }
    if fi.DEEP_SUPERVISION:
        aux = {}
        for i in range(2 * fi.DEC_LAYERS):
            aux.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        weight_dict.update(aux)
    weight_dict["loss_proposal"] = fi.PROPOSAL_WEIGHT
    return SetCriterion(
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=fi.NO_OBJECT_WEIGHT,
        losses=["labels", "masks"],
        num_points=fi.TRAIN_NUM_POINTS,
        oversample_ratio=fi.OVERSAMPLE_RATIO,
        importance_sample_ratio=fi.IMPORTANCE_SAMPLE_RATIO,
        dense_proposal_targets=fi.DENSE_PROPOSAL_TARGETS,
    )


@META_ARCH_REGISTRY.register()
class FastInst(nn.Module):
    """FastInst for instance segmentation.

    Input: a list of dicts with "image" (C, H, W) in INPUT.FORMAT (RGB), optional "height"/"width" (output size)
    and, in training, "instances" (gt_classes, gt_masks). Eval output: [{"instances": Instances}] per image, with
    pred_masks (k, height, width) bool, pred_boxes, scores and pred_classes (`instance_inference`).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        num_queries: int,
        size_divisibility: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        test_topk_per_image: int,
        small_input: str = "error",
        box_threshold: float = 0.5,
        largest_component: bool = False,
    ):
        super().__init__()
        if small_input not in SMALL_INPUT_POLICIES:
            raise ValueError(
                f"MODEL.FASTINST.SMALL_INPUT must be one of {SMALL_INPUT_POLICIES}, got {small_input!r}."
            )
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.size_divisibility = size_divisibility
        self.test_topk_per_image = test_topk_per_image
        self.small_input = small_input
        # Post-processing picks the top-k pairs before resizing their masks (same outputs); False runs the
        # official order of work (`instance_inference_reference`, zero boxes), for benchmarks.
        self.fast_postprocessing = True
        # Instances whose class probability is below this cannot pass a caller's score filter: the fast
        # post-processing drops them before resizing their masks (0.0: keep the top-k, as evaluation needs).
        # Set by `FastInstPredictor` to its score_threshold; not a config key (no official number depends on it).
        self.test_score_threshold = 0.0
        # Boxes around the mask probability > box_threshold (0.5: the masks' own tight boxes).
        self.test_box_threshold = box_threshold
        # Each mask keeps only its largest connected component (MODEL.FASTINST.TEST.LARGEST_COMPONENT).
        self.test_largest_component = bool(largest_component)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # checkpoints holding only one of the two `empty_weight` paths still load cleanly (SPEC §10 F10)
        self._register_load_state_dict_pre_hook(
            lambda state_dict, prefix, *args: fill_duplicate_empty_weight(state_dict, prefix)
        )

    @classmethod
    def from_config(cls, cfg):
        fi = cfg.MODEL.FASTINST
        if fi.TEST.SEMANTIC_ON or fi.TEST.PANOPTIC_ON or not fi.TEST.INSTANCE_ON:
            raise ValueError(
                "FastInst implements instance segmentation: set MODEL.FASTINST.TEST.INSTANCE_ON True and "
                "SEMANTIC_ON / PANOPTIC_ON False."
            )
        backbone = build_backbone(cfg)
        criterion = build_criterion(cfg)
        # The head's decoder uses the criterion's matcher for GT-mask-guided learning; the same module is this
        # model's `criterion`, as in the official state dict.
        sem_seg_head = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(
            cfg, backbone.output_shape(), criterion=criterion
        )
        size_divisibility = fi.SIZE_DIVISIBILITY
        if size_divisibility < 0:
            size_divisibility = backbone.size_divisibility
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": fi.NUM_OBJECT_QUERIES,
            "size_divisibility": size_divisibility,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "small_input": fi.SMALL_INPUT,
            "box_threshold": fi.TEST.BOX_THRESHOLD,
            "largest_component": fi.TEST.LARGEST_COMPONENT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise each image, then pad the batch to a common size divisible by `size_divisibility`."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, self.size_divisibility)
        if self.small_input == "pad":
            images = self._pad_to_fit_queries(images)
        return images

    def _pad_to_fit_queries(self, images: ImageList) -> ImageList:
        """Grow the padded size until the stride-16 map has at least `num_queries` locations."""
        hp, wp = images.tensor.shape[-2:]
        step = max(self.size_divisibility, 16)
        h, w = hp, wp
        while (h // 16) * (w // 16) < self.num_queries:
            if h <= w:
                h += step
            else:
                w += step
        if (h, w) != (hp, wp):
            tensor = F.pad(images.tensor, (0, w - wp, 0, h - hp), value=0.0)
            images = ImageList(tensor, images.image_sizes)
        return images

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess(batched_inputs)
        features = self.backbone(images.tensor)

        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            outputs = self.sem_seg_head(features, targets)
            losses = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}

        outputs = self.sem_seg_head(features)
        return self.postprocess(outputs, batched_inputs, images)

    def postprocess(
        self, outputs: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        padded_size = tuple(images.tensor.shape[-2:])
        results = []
        # post-processing in float32, also under autocast
        cls_all, masks_all = outputs["pred_logits"].float(), outputs["pred_masks"].float()
        for cls_logits, mask_logits, inputs, image_size in zip(
            cls_all, masks_all, batched_inputs, images.image_sizes
        ):
            out_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            args = (cls_logits, mask_logits, padded_size, image_size, out_size)
            with torch.autocast(device_type=self.device.type, enabled=False):
                if self.fast_postprocessing:
                    instances = instance_inference(
                        *args,
                        self.test_topk_per_image,
                        self.test_score_threshold,
                        box_threshold=self.test_box_threshold,
                        largest_component=self.test_largest_component,
                    )
                else:
                    instances = instance_inference_reference(*args, self.test_topk_per_image)
            results.append({"instances": instances})
        return results

    def prepare_targets(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """{"labels": (G,) int64, "masks": (G, Hp, Wp) zero-padded} per image."""
        hp, wp = images.tensor.shape[-2:]
        targets = []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise ValueError(
                    f"Training input {i} has no 'instances'. FastInst trains on dicts made by an instance "
                    "dataset mapper (INPUT.DATASET_MAPPER_NAME 'fastinst_instance' or 'coco_instance_lsj')."
                )
            gt = x["instances"].to(self.device)
            masks = gt.gt_masks if gt.has("gt_masks") else None
            masks = getattr(masks, "tensor", masks)  # BitMasks -> tensor
            if not isinstance(masks, Tensor):
                raise ValueError(
                    f"Training input {i}: instances.gt_masks must be a (G, H, W) tensor or BitMasks, got "
                    f"{type(masks).__name__}. Polygon masks come from detectron2's default mapper; use the "
                    "'fastinst_instance' mapper (INPUT.DATASET_MAPPER_NAME)."
                )
            g, h, w = masks.shape
            padded = torch.zeros((g, hp, wp), dtype=masks.dtype, device=self.device)  # (G, Hp, Wp)
            padded[:, :h, :w] = masks
            targets.append({"labels": gt.gt_classes, "masks": padded})
        return targets
