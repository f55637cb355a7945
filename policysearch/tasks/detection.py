"""Object detection, anchor-free CenterNet-style (Zhou et al. 2019, "Objects as Points").

The head predicts, at stride 4, a per-class centre heatmap (focal loss), the box size (w, h) and
the sub-pixel offset of the centre (L1 at object centres). Collate keeps the raw boxes; the loss
encodes them into CenterNet targets at the resolution of the actual output, so any encoder and
any input size work. ``decode`` turns outputs back into boxes in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import batched_nms

from policysearch.data.base import Sample, TaskSpec
from policysearch.errors import DataError
from policysearch.tasks.base import (
    DenseDecoder,
    MetricInfo,
    Task,
    as_tensor,
    image_size,
    register_task_kind,
)

HEATMAP_PRIOR = 0.1  # CenterNet initialises the heatmap bias to log(p / (1 - p)) = -2.19


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CenterNet's Gaussian radius for boxes of these sizes (in heatmap cells), element-wise."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (α = 2, β = 4), summed over pixels and
    divided by the number of object centres (at least 1)."""
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * neg
    num_pos = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def sample_focal_losses(logits: Tensor, target: Tensor) -> Tensor:
    """``focal_loss`` of each sample alone (B): summed over its pixels and divided by its own
    number of object centres (at least 1)."""
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = (torch.log(pred) * (1 - pred) ** 2 * pos).flatten(1).sum(dim=1)
    neg_loss = (torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * neg).flatten(1).sum(dim=1)
    num_pos = pos.flatten(1).sum(dim=1).clamp(min=1.0)
    return -(pos_loss + neg_loss) / num_pos


class CenterNetHead(nn.Module):
    """FPN-lite neck to ``stride``, then heatmap / size / offset branches (3×3 conv, ReLU, 1×1).

    Output: dict of B×C×h×w ``heatmap`` logits, B×2×h×w ``size`` (w, h in heatmap cells) and
    B×2×h×w ``offset`` (sub-cell centre offset).
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int,
                 width: int = 32, stride: int = 4):
        super().__init__()
        self.neck = DenseDecoder(channels, strides, width, out_stride=stride)
        self.heatmap = self._branch(width, num_classes)
        self.size = self._branch(width, 2)
        self.offset = self._branch(width, 2)
        final = self.heatmap[-1]
        assert isinstance(final, nn.Conv2d) and final.bias is not None
        nn.init.constant_(final.bias, math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR)))

    @staticmethod
    def _branch(width: int, out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(width, out, 1))

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self.neck(features)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}


def _to_float(value: Tensor) -> float:
    v = float(value)
    # torchmetrics reports -1 when there is no ground-truth box at all
    return 0.0 if not math.isfinite(v) or v < 0 else v


class DetectionEvaluator:
    """COCO mAP@0.5 and mAP@[.5:.95] (torchmetrics with the pycocotools backend)."""

    def __init__(self, task: DetectionTask):
        self.task = task
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                        backend="pycocotools")

    def update(self, output: dict[str, Tensor], targets: dict[str, Any]) -> None:
        self.update_detections(self.task.decode(output, targets.get("image_size")), targets)

    def update_detections(self, detections: Sequence[dict[str, Tensor]],
                          targets: dict[str, Any]) -> None:
        """Accumulate already decoded detections (``boxes``, ``scores``, ``labels`` per image)
        against collated targets; images whose target is missing are skipped."""
        valid = targets.get("valid")
        flags = [True] * len(detections) if valid is None else valid.tolist()
        preds, gts = [], []
        for det, boxes, labels, ok in zip(detections, targets["boxes"], targets["labels"],
                                          flags, strict=True):
            if ok:
                preds.append({k: v.detach().cpu() for k, v in det.items()})
                gts.append({"boxes": boxes.detach().cpu().float().reshape(-1, 4),
                            "labels": labels.detach().cpu().long().reshape(-1)})
        if preds:
            self.map.update(preds, gts)

    def compute(self) -> dict[str, float]:
        if not self.map.update_called:
            return {"map50": 0.0, "map": 0.0}
        result = self.map.compute()
        return {"map50": _to_float(result["map_50"]), "map": _to_float(result["map"])}


class DetectionTask(Task):
    """Boxes (N×4 pixel x1, y1, x2, y2) with labels 0..num_classes-1 (no background class).

    Collated targets: ``{"boxes": [N_i×4 float32], "labels": [N_i int64], "valid": B bool
    (False where the sample has no boxes target at all), "image_size": (H, W)}``.
    """

    kind = "detection"
    metrics = (
        MetricInfo("map50", higher_is_better=True, primary=True),
        MetricInfo("map", higher_is_better=True, primary=False),
    )
    labels_key = "box_labels"

    def __init__(self, spec: TaskSpec, width: int = 32, stride: int = 4, top_k: int = 50,
                 score_threshold: float = 0.05, nms_iou: float = 0.5, max_detections: int = 20,
                 size_weight: float = 0.1, offset_weight: float = 1.0):
        super().__init__(spec)
        self.num_classes = self._require_classes(1)
        self.width = width
        self.stride = stride
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.size_weight = size_weight
        self.offset_weight = offset_weight

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        return CenterNetHead(channels, strides, self.num_classes, width=self.width,
                             stride=self.stride)

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        key = self.spec.target_key()
        boxes, labels, valid = [], [], []
        for s in samples:
            b, lab = s.get(key), s.get(self.labels_key)
            valid.append(b is not None)
            b = torch.zeros(0, 4) if b is None else as_tensor(b, torch.float32).reshape(-1, 4)
            if lab is None and len(b) and self.num_classes > 1:
                raise DataError(f"task {self.name!r}: {len(b)} boxes without "
                                f"{self.labels_key!r}", field=self.labels_key)
            lab = (torch.zeros(len(b), dtype=torch.long) if lab is None
                   else as_tensor(lab, torch.long).reshape(-1))
            if len(lab) != len(b):
                raise DataError(f"task {self.name!r}: {len(b)} boxes but {len(lab)} labels",
                                field=self.labels_key)
            if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
                raise DataError(f"task {self.name!r}: box label out of range "
                                f"0..{self.num_classes - 1}", field=self.labels_key)
            boxes.append(b)
            labels.append(lab)
        return {"boxes": boxes, "labels": labels, "valid": torch.tensor(valid, dtype=torch.bool),
                "image_size": image_size(samples[0]) if samples else (0, 0)}

    def encode(self, boxes: Sequence[Tensor], labels: Sequence[Tensor],
               out_size: tuple[int, int], device: torch.device | str | None = None
               ) -> dict[str, Tensor]:
        """CenterNet targets on an ``out_size`` (h, w) grid at ``self.stride``.

        Returns dense ``heatmap`` B×C×h×w (Gaussian peaks of value 1 at object centres),
        ``size`` and ``offset`` B×2×h×w (set at the centres) and ``mask`` B×h×w (the centres).
        """
        h, w = out_size
        batch = len(boxes)
        device = device if device is not None else (boxes[0].device if batch else "cpu")
        heat = torch.zeros(batch * self.num_classes, h * w, device=device)
        size = torch.zeros(batch, 2, h, w, device=device)
        offset = torch.zeros(batch, 2, h, w, device=device)
        mask = torch.zeros(batch, h, w, dtype=torch.bool, device=device)
        if batch == 0:
            return {"heatmap": heat.view(0, self.num_classes, h, w), "size": size,
                    "offset": offset, "mask": mask}
        bidx = torch.cat([torch.full((len(b),), i, dtype=torch.long)
                          for i, b in enumerate(boxes)]).to(device)
        all_boxes = torch.cat([b.reshape(-1, 4).float() for b in boxes]).to(device) / self.stride
        all_labels = torch.cat([lab.reshape(-1).long() for lab in labels]).to(device)
        bw = all_boxes[:, 2] - all_boxes[:, 0]
        bh = all_boxes[:, 3] - all_boxes[:, 1]
        keep = (bw > 0) & (bh > 0)
        bidx, all_boxes, all_labels, bw, bh = (t[keep] for t in (bidx, all_boxes, all_labels,
                                                                 bw, bh))
        if len(bidx):
            cx = (all_boxes[:, 0] + all_boxes[:, 2]) / 2
            cy = (all_boxes[:, 1] + all_boxes[:, 3]) / 2
            ix = cx.floor().clamp(0, w - 1)
            iy = cy.floor().clamp(0, h - 1)
            radius = gaussian_radius(bh.ceil(), bw.ceil()).floor().clamp(min=0)
            sigma = (2 * radius + 1) / 6
            xs = torch.arange(w, device=device, dtype=torch.float32)
            ys = torch.arange(h, device=device, dtype=torch.float32)
            dx = xs[None, :] - ix[:, None]  # K×w
            dy = ys[None, :] - iy[:, None]  # K×h
            gx = torch.exp(-dx**2 / (2 * sigma[:, None] ** 2)) * (dx.abs() <= radius[:, None])
            gy = torch.exp(-dy**2 / (2 * sigma[:, None] ** 2)) * (dy.abs() <= radius[:, None])
            gauss = gy[:, :, None] * gx[:, None, :]  # K×h×w, exactly 1 at the centre
            rows = (bidx * self.num_classes + all_labels)[:, None].expand(-1, h * w)
            heat.scatter_reduce_(0, rows, gauss.reshape(len(bidx), h * w), "amax")
            iyl, ixl = iy.long(), ix.long()
            size[bidx, :, iyl, ixl] = torch.stack([bw, bh], dim=1)
            offset[bidx, :, iyl, ixl] = torch.stack([cx - ix, cy - iy], dim=1)
            mask[bidx, iyl, ixl] = True
        return {"heatmap": heat.view(batch, self.num_classes, h, w), "size": size,
                "offset": offset, "mask": mask}

    def loss(self, output: dict[str, Tensor], targets: dict[str, Any]) -> Tensor:
        logits = output["heatmap"].float()  # fp32 under autocast: the focal loss takes logs
        enc = self.encode(targets["boxes"], targets["labels"], tuple(logits.shape[-2:]),
                          device=logits.device)
        valid = targets["valid"].to(logits.device)
        if not valid.any():
            return logits.sum() * 0.0
        hm_loss = focal_loss(logits[valid], enc["heatmap"][valid])
        centres = (enc["mask"] & valid[:, None, None]).unsqueeze(1).float()
        n = centres.sum().clamp(min=1.0)
        size_loss = ((output["size"].float() - enc["size"]).abs() * centres).sum() / n
        offset_loss = ((output["offset"].float() - enc["offset"]).abs() * centres).sum() / n
        return hm_loss + self.size_weight * size_loss + self.offset_weight * offset_loss

    def has_target(self, targets: dict[str, Any]) -> bool:
        return bool(targets["valid"].any())

    def sample_losses(self, output: dict[str, Tensor], targets: dict[str, Any]) -> Tensor:
        """``loss`` of each sample alone: its focal, size and offset terms divided by its own
        object centres, where ``loss`` divides the batch's sums by the batch's centres; NaN
        where ``valid`` is False."""
        logits = output["heatmap"].float()
        enc = self.encode(targets["boxes"], targets["labels"], tuple(logits.shape[-2:]),
                          device=logits.device)
        hm_loss = sample_focal_losses(logits, enc["heatmap"])
        centres = enc["mask"].unsqueeze(1).float()
        n = centres.flatten(1).sum(dim=1).clamp(min=1.0)
        size_err = (output["size"].float() - enc["size"]).abs() * centres
        offset_err = (output["offset"].float() - enc["offset"]).abs() * centres
        size_loss = size_err.flatten(1).sum(dim=1) / n
        offset_loss = offset_err.flatten(1).sum(dim=1) / n
        losses = hm_loss + self.size_weight * size_loss + self.offset_weight * offset_loss
        return torch.where(targets["valid"].to(logits.device), losses, torch.nan)

    @torch.no_grad()
    def decode(self, output: dict[str, Tensor], image_size: tuple[int, int] | None = None
               ) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes`` N×4 (x1, y1, x2, y2 input pixels, clipped to
        ``image_size`` (H, W) when given), ``scores`` N and ``labels`` N, N ≤ max_detections.

        3×3 max-pool peaks, top-K over classes and positions, score threshold, per-class NMS.
        """
        heat = output["heatmap"].detach().float().sigmoid()
        batch, classes, h, w = heat.shape
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        k = min(self.top_k, classes * h * w)
        scores, idx = peaks.reshape(batch, -1).topk(k)
        cls = idx // (h * w)
        pix = idx % (h * w)
        ys = (pix // w).float()
        xs = (pix % w).float()
        gather = pix[:, None, :].expand(batch, 2, k)
        size = output["size"].detach().float().reshape(batch, 2, h * w).gather(2, gather)
        off = output["offset"].detach().float().reshape(batch, 2, h * w).gather(2, gather)
        cx = (xs + off[:, 0]) * self.stride
        cy = (ys + off[:, 1]) * self.stride
        half_w = size[:, 0].clamp(min=0) * self.stride / 2
        half_h = size[:, 1].clamp(min=0) * self.stride / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
        if image_size is not None:
            height, width = image_size
            boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
            boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
        results = []
        for b in range(batch):
            keep = scores[b] >= self.score_threshold
            bx, sc, lb = boxes[b][keep], scores[b][keep], cls[b][keep]
            kept = batched_nms(bx, sc, lb, self.nms_iou)[: self.max_detections]
            results.append({"boxes": bx[kept], "scores": sc[kept], "labels": lb[kept]})
        return results

    def evaluator(self) -> DetectionEvaluator:
        return DetectionEvaluator(self)


register_task_kind(DetectionTask)
