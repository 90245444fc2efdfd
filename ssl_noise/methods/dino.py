"""DINO (Caron et al., ICCV 2021, arXiv 2104.14294) with a ResNet backbone: a student matches the centred, sharpened
output distribution of a momentum teacher on other views of the same image (self-distillation, no labels).

Head, loss (with its centre) and the EMA helpers are lightly's (``DINOProjectionHead``, ``DINOLoss``,
``update_momentum``, ``deactivate_requires_grad``); this file makes the views (multi-crop optional), schedules the
teacher temperature and momentum, and wires them up. Defaults and sources: docs/pretraining.md, "DINO".
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from ssl_noise.augment import augment
from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod, cosine_momentum


@dataclass
class DINOArgs:
    """Hyper-parameters of :class:`DINO` (the recipe's ``method_args``)."""

    hidden_dim: int = 2048              # head MLP width (paper: 2048)
    bottleneck_dim: int = 256           # before the weight-normalised last layer (paper: 256)
    out_dim: int = 2048                 # prototypes K (paper 65,536 on ImageNet; lightly's CIFAR-10 benchmark 2048)
    batch_norm: bool = True             # BN in the head (lightly's CIFAR-10 ResNet benchmark; ViTs use none)
    momentum: float = 0.99              # teacher momentum at the start, cosine to 1 (paper 0.996; lightly's
                                        # CIFAR-10 benchmark 0.99, better for short schedules)
    student_temp: float = 0.1           # paper: 0.1
    teacher_temp: float = 0.07          # after the warm-up (paper: 0.04 -> 0.07 over the first 30 epochs)
    warmup_teacher_temp: float = 0.04   # at the start (paper: 0.04)
    warmup_fraction: float = 0.3        # fraction of training for the linear warm-up (paper: 30 of 100 epochs)
    center_momentum: float = 0.9        # EMA of the teacher's batch mean subtracted before its softmax (paper: 0.9)
    n_local_views: int = 0              # multi-crop: extra small views seen by the student only (paper: 10; 0: off)
    local_size: int = 12                # px of a local view (paper: 96 of 224; 12 of 28 keeps the ratio)
    local_min_scale: float = 0.05       # local crop area range (paper: 0.05 to 0.4)
    local_max_scale: float = 0.4
    freeze_last_layer: int = 1          # epochs the head's last (prototype) layer gets no update (authors' code: 1)

    def validate(self) -> None:
        if min(self.hidden_dim, self.bottleneck_dim, self.out_dim) < 1:
            raise UserError("dino hidden_dim, bottleneck_dim and out_dim must be >= 1")
        if not 0.0 <= self.momentum <= 1.0:
            raise UserError(f"dino momentum must be in [0, 1], got {self.momentum}")
        if min(self.student_temp, self.teacher_temp, self.warmup_teacher_temp) <= 0:
            raise UserError("dino temperatures must be > 0")
        if not 0.0 <= self.warmup_fraction <= 1.0 or not 0.0 <= self.center_momentum <= 1.0:
            raise UserError("dino warmup_fraction and center_momentum must be in [0, 1]")
        if self.n_local_views < 0 or self.local_size < 4:
            raise UserError("dino n_local_views must be >= 0 and local_size >= 4")
        if self.freeze_last_layer < 0:
            raise UserError(f"dino freeze_last_layer must be >= 0 epochs, got {self.freeze_last_layer}")
        if not 0.0 < self.local_min_scale <= self.local_max_scale <= 1.0:
            raise UserError("dino needs 0 < local_min_scale <= local_max_scale <= 1")


@METHODS.register("dino")
class DINO(SSLMethod):
    """DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers",
    https://arxiv.org/abs/2104.14294), with the ResNet backbone the paper also reports.

    Student = ``backbone`` + ``head``; teacher = momentum copies of both (identical at the start), never trained
    by gradients. Two global views go through both networks, ``n_local_views`` small crops through the student
    only; the loss is lightly's cross-entropy between the teacher's softmax ``((t - centre) / teacher_temp)`` and
    the student's ``log_softmax(s / student_temp)`` over all pairs of different views. The centre is an EMA of the
    teacher's batch mean (all-reduced over processes under DDP); the teacher temperature warms up linearly over
    ``warmup_fraction`` of training and the teacher momentum rises from ``momentum`` to 1 on a cosine, both per
    optimiser step. The head's last layer gets no update in the first ``freeze_last_layer`` epochs (``before_step``
    drops its gradients, as the authors' ``cancel_gradients_last_layer`` does), so the prototypes do not chase a
    random encoder.

    Args:
        backbone: the student encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe); global views use its recipe.
        args: mapping validated into :class:`DINOArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = DINO(net, d, InputSpec(1, 16, [0.5], [0.5]), {"hidden_dim": 64, "out_dim": 128})
    >>> loss = method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0))
    >>> method.on_step_end(0.5)  # teacher momentum update; the temperature schedule moves on
    """

    Args = DINOArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.head = self._new_head(feat_dim)
        self.teacher_backbone = copy.deepcopy(self.backbone)
        # A new head loaded with the student's weights, not a deepcopy: the weight-normalised last layer holds a
        # non-leaf tensor, which ``copy.deepcopy`` refuses.
        self.teacher_head = self._new_head(feat_dim)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=a.out_dim, teacher_temp=a.teacher_temp, student_temp=a.student_temp,
                                  center_momentum=a.center_momentum)
        self.local_augment = replace(spec.augment, min_scale=a.local_min_scale, max_scale=a.local_max_scale)
        # Fraction of training done, set by on_step_end; a buffer so that a resumed run continues the schedule.
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))

    def _new_head(self, feat_dim: int) -> DINOProjectionHead:
        a = self.args
        with warnings.catch_warnings():  # lightly 1.6 builds the last layer with the deprecated weight_norm
            warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
            return DINOProjectionHead(feat_dim, a.hidden_dim, a.bottleneck_dim, a.out_dim, batch_norm=a.batch_norm,
                                      freeze_last_layer=a.freeze_last_layer)

    def teacher_temperature(self) -> float:
        """The teacher temperature now: linear from ``warmup_teacher_temp`` to ``teacher_temp``, then constant."""
        a = self.args
        p = float(self.progress)
        if a.warmup_fraction <= 0 or p >= a.warmup_fraction:
            return a.teacher_temp
        return a.warmup_teacher_temp + (a.teacher_temp - a.warmup_teacher_temp) * p / a.warmup_fraction

    def smallest_input(self) -> int:
        return self.args.local_size if self.args.n_local_views else self.spec.image_size

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        a, b = self.args, x.shape[0]
        glob = self.two_views(x, g)                                            # glob: (2B, C, H, W)
        student = self.head(self.backbone(glob)).chunk(2)                      # 2 x (B, K)
        if a.n_local_views:
            loc = torch.cat([self.normalize(augment(x, self.local_augment, g, out_size=a.local_size))
                             for _ in range(a.n_local_views)])                 # loc: (nB, C, s, s)
            student = student + self.head(self.backbone(loc)).split(b)         # + n x (B, K)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(glob)).chunk(2)  # 2 x (B, K), global views only
        # float32: softmax at temperature 0.04 turns bf16 rounding of the logits into large probability errors.
        with torch.autocast(glob.device.type, enabled=False):
            return self.criterion([t.float() for t in teacher], [s.float() for s in student],
                                  teacher_temp=self.teacher_temperature())

    def before_step(self, epoch: int) -> None:
        """No update of the student's last layer in the first ``freeze_last_layer`` epochs (lightly's
        ``cancel_last_layer_gradients``: the gradients become None, so neither the step nor weight decay moves it)."""
        self.head.cancel_last_layer_gradients(epoch)

    def on_step_end(self, progress: float) -> None:
        """EMA update of the teacher (once per optimiser step) and the schedules' clock."""
        self.progress.fill_(progress)
        m = cosine_momentum(progress, self.args.momentum)
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)
