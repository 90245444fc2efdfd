"""MoCo v2 (Chen et al. 2020, arXiv 2003.04297, on He et al., CVPR 2020): a query encoder trained against keys from
a momentum copy of itself and a queue of past keys.

Lightly provides the head, the queued loss and the helpers (``update_momentum``, ``batch_shuffle``); this file makes
the views and wires them up. Defaults and deviations (momentum schedule, shuffle-BN only under DDP, ``symmetric``):
docs/methods.md, "MoCo v2".
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod, distributed

# ``cosine_schedule`` counts integer steps; the loop reports a fraction, so we evaluate it on this fine grid.
_SCHEDULE_STEPS = 100_000


@dataclass
class MoCoArgs:
    """Hyper-parameters of :class:`MoCo` (the recipe's ``method_args``)."""

    temperature: float = 0.2  # MoCo v2 value (v1: 0.07)
    queue_size: int = 4096    # negatives kept from previous batches (paper: 65,536 on ImageNet)
    hidden_dim: int = 512     # projection head hidden width (v2 paper: 2048 for ResNet-50)
    out_dim: int = 128        # embedding dimension the loss and the queue see
    momentum: float = 0.99    # key-encoder momentum at the start; rises to 1.0 on a cosine
    symmetric: bool = False   # also use view 1 as query against view 0's key (2x compute)

    def validate(self) -> None:
        if self.temperature <= 0:
            raise UserError(f"moco temperature must be > 0, got {self.temperature}")
        if self.queue_size < 1 or self.hidden_dim < 1 or self.out_dim < 1:
            raise UserError("moco queue_size, hidden_dim and out_dim must be >= 1")
        if not 0.0 <= self.momentum <= 1.0:
            raise UserError(f"moco momentum must be in [0, 1], got {self.momentum}")


@contextmanager
def _device_rng_seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Run a block whose global-RNG draws on ``device`` are fixed by ``seed``, then restore the global state.

    Lightly's ``batch_shuffle`` draws its permutation from the global RNG; seeding it from the step's generator
    keeps a run reproducible without touching anyone else's random stream.
    """
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        gen = torch.cuda.default_generators[index] if cuda else torch.default_generator
        gen.manual_seed(seed)
        yield


@METHODS.register("moco")
class MoCo(SSLMethod):
    """MoCo v2 (He et al., 2019, "Momentum Contrast for Unsupervised Visual Representation Learning",
    https://arxiv.org/abs/1911.05722; Chen et al., 2020, "Improved Baselines with Momentum Contrastive Learning",
    https://arxiv.org/abs/2003.04297).

    Query encoder = ``backbone`` + MLP ``head``; key encoder = momentum copies of both, never trained by gradients.
    The loss is InfoNCE of each query against its key (positive) and ``queue_size`` keys of earlier batches.

    Args:
        backbone: the query encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`MoCoArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = MoCo(net, d, InputSpec(1, 16, [0.5], [0.5]), {"queue_size": 64})
    >>> loss = method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0))
    >>> method.on_step_end(0.5)  # momentum update of the key encoder
    """

    Args = MoCoArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.head = MoCoProjectionHead(feat_dim, a.hidden_dim, a.out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = NTXentLoss(
            temperature=a.temperature, memory_bank_size=(a.queue_size, a.out_dim), gather_distributed=distributed()
        )

    @torch.no_grad()
    def _keys(self, v: torch.Tensor, seed: int | None) -> torch.Tensor:
        """Key embeddings (B, D) of a normalised view; cross-GPU shuffle BN when ``seed`` is given (DDP only)."""
        if seed is None:
            return self.head_momentum(self.backbone_momentum(v))
        with _device_rng_seeded(v.device, seed):
            v, shuffle = batch_shuffle(v, distributed=True)  # v: (B, C, H, W), rows from any GPU
        k = self.head_momentum(self.backbone_momentum(v))     # k: (B, D) in shuffled order
        return batch_unshuffle(k, shuffle, distributed=True)

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]. Every random draw comes from g, views first, so that runs with and without
        # DDP see the same augmentations.
        v0, v1 = self.two_views(x, g).chunk(2)                 # v0, v1: (B, C, H, W)
        n_keys = 2 if self.args.symmetric else 1
        seeds = [None] * n_keys
        if distributed():
            seeds = [int(s) for s in torch.randint(2**62, (n_keys,), generator=g, device=g.device)]

        q = self.head(self.backbone(v0))  # q: (B, D)
        k = self._keys(v1, seeds[0])      # k: (B, D), no grad; enqueued by the loss
        if self.args.symmetric:
            # One loss call on the stacked pairs (= the mean of both directions): two calls would enqueue the
            # first keys before the second call, and q1 would then meet its own image's key among the negatives.
            q = torch.cat([q, self.head(self.backbone(v1))])  # q: (2B, D), views 0 then 1
            k = torch.cat([k, self._keys(v0, seeds[1])])      # k: (2B, D), views 1 then 0
        # float32 even under autocast: at temperature 0.07 the logits reach ~14, where bf16 has 2-3 digits.
        with torch.autocast(q.device.type, enabled=False):
            return self.criterion(q.float(), k.float())

    def get_extra_state(self) -> dict:
        """The queue travels with ``state_dict()``: lightly keeps it in non-persistent buffers, so without this a
        resumed run would restart from a random queue and no longer match an uninterrupted one."""
        bank = self.criterion.memory_bank
        return {"bank": bank.bank.detach().clone(), "bank_ptr": bank.bank_ptr.detach().clone()}

    def set_extra_state(self, state: dict) -> None:
        bank = self.criterion.memory_bank
        bank.bank.copy_(state["bank"])
        bank.bank_ptr.copy_(state["bank_ptr"])

    def on_step_end(self, progress: float) -> None:
        """EMA update of the key encoder; the momentum follows a cosine from ``momentum`` to 1 over training."""
        step = round(min(max(progress, 0.0), 1.0) * _SCHEDULE_STEPS)
        m = cosine_schedule(step, _SCHEDULE_STEPS + 1, self.args.momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.head, self.head_momentum, m)
