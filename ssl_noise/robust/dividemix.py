"""DivideMix (Li, Socher & Hoi, ICLR 2020, arXiv 2002.07394; code LiJunnan1992/DivideMix, ``Train_cifar.py``).

After a CE warm-up, each epoch each network fits a two-component Gaussian mixture to its per-sample losses; the
low-loss component's posterior is a sample's clean probability. *Co-divide*: each network trains on the split made
by the other, so the two do not confirm their own errors. Labelled samples get co-refined labels (the given label
mixed with the network's own prediction by the clean probability), unlabelled ones co-guessed labels (both
networks' predictions), then MixMatch (mixup over both parts) trains on them semi-supervised.
Defaults, source, cost and deviations: docs/methods.md#dividemix-dividemixpy
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ssl_noise.engine import Recipe, scaled_epochs
from ssl_noise.errors import UserError
from ssl_noise.io import derive_seed
from ssl_noise.robust.base import ROBUST, Batch, Classifier, MethodWarning, RobustMethod, label_prob

#: The code's mixture settings (``eval_train``): few EM steps on a 1-D loss, a covariance floor.
GMM_KW = dict(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)
#: lambda_u of the code's CIFAR-10 commands by noise level, read off at the estimated wrong-label rate: 0 below
#: 0.3 (their 20 %), 25 below 0.6 (50 %), 150 above (80 and 90 %).
LAMBDA_U_TABLE = ((0.3, 0.0), (0.6, 25.0), (1.01, 150.0))


@dataclass
class DivideMixArgs:
    warmup: Optional[int] = None          # CE epochs before the first division; None: min(10, max(1, epochs // 3))
    lambda_u: Optional[float] = None      # unlabelled loss weight; None: from the estimated rate (LAMBDA_U_TABLE)
    noise_estimate: Optional[float] = None  # the rate for lambda_u; None: --noise-estimate (auto by default)
    T: float = 0.5                        # sharpening temperature
    alpha: float = 4.0                    # Beta(alpha, alpha) of the mixup coefficient
    p_threshold: float = 0.5              # clean posterior above which a sample is labelled
    rampup: int = 16                      # epochs of linear lambda_u ramp after the warm-up (the code: 16)
    warmup_penalty: bool = False          # negative-entropy penalty in the warm-up (the code: asymmetric noise)

    def validate(self) -> None:
        if self.warmup is not None and self.warmup < 0:
            raise UserError(f"warmup must be non-negative, got {self.warmup}")
        if self.lambda_u is not None and self.lambda_u < 0:
            raise UserError(f"lambda_u must be non-negative, got {self.lambda_u}")
        if self.noise_estimate is not None and not 0 <= self.noise_estimate < 1:
            raise UserError(f"noise_estimate must be in [0, 1), got {self.noise_estimate}")
        if self.T <= 0 or self.alpha <= 0 or self.rampup < 1 or not 0 < self.p_threshold < 1:
            raise UserError("T and alpha must be positive, rampup at least 1 and p_threshold in (0, 1)")


def lambda_u_for(rate: float) -> float:
    """The code's CIFAR-10 lambda_u at a wrong-label rate.

    >>> [lambda_u_for(r) for r in (0.2, 0.4, 0.6, 0.8)]
    [0.0, 25.0, 150.0, 150.0]
    """
    return next(value for bound, value in LAMBDA_U_TABLE if rate < bound)


def clean_posterior(loss: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N,) posterior of the lower-mean component of a 2-component GMM on min-max normalised ``loss`` (N,)."""
    from sklearn.mixture import GaussianMixture

    loss = np.asarray(loss, dtype=np.float64)
    span = loss.max() - loss.min()
    if not np.isfinite(span) or span <= 0:  # one loss value: nothing to split
        return np.ones(len(loss), dtype=np.float32)
    x = ((loss - loss.min()) / span)[:, None]
    gmm = GaussianMixture(**GMM_KW, random_state=seed).fit(x)
    return gmm.predict_proba(x)[:, int(np.argmin(gmm.means_[:, 0]))].astype(np.float32)


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    """Rows of ``p ** (1 / T)``, renormalised."""
    p = p ** (1.0 / T)
    return p / p.sum(dim=1, keepdim=True)


def mixmatch_loss(net: Classifier, parts: Dict[str, torch.Tensor], targets_x: torch.Tensor,
                  targets_u: Optional[torch.Tensor], lam: float, perm: torch.Tensor,
                  lambda_u: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """MixMatch on [x1, x2, u1, u2] with targets [tx, tx, tu, tu]: mixup with ``lam`` (already max(l, 1 - l))
    and ``perm``; CE on the labelled half, ``lambda_u`` x MSE on the unlabelled half, plus the uniform-prior
    penalty. Returns (loss, the mixed inputs/targets and logits for inspection)."""
    inputs = [parts["x1"], parts["x2"]] + ([parts["u1"], parts["u2"]] if targets_u is not None else [])
    targets = [targets_x, targets_x] + ([targets_u, targets_u] if targets_u is not None else [])
    all_inputs, all_targets = torch.cat(inputs), torch.cat(targets)
    mixed_input = lam * all_inputs + (1 - lam) * all_inputs[perm]
    mixed_target = lam * all_targets + (1 - lam) * all_targets[perm]
    logits = net(mixed_input).float()
    n_x = 2 * len(parts["x1"])
    loss_x = -(F.log_softmax(logits[:n_x], dim=1) * mixed_target[:n_x]).sum(dim=1).mean()
    loss_u = ((logits[n_x:].softmax(dim=1) - mixed_target[n_x:]) ** 2).mean() if n_x < len(logits) \
        else logits.sum() * 0.0
    prior = torch.full((logits.shape[1],), 1.0 / logits.shape[1], device=logits.device)
    penalty = (prior * torch.log(prior / logits.softmax(dim=1).mean(dim=0))).sum()
    loss = loss_x + lambda_u * loss_u + penalty
    return loss, {"mixed_input": mixed_input, "mixed_target": mixed_target, "logits": logits, "loss_x": loss_x,
                  "loss_u": loss_u}


@ROBUST.register("dividemix")
class DivideMix(RobustMethod):
    """Two classifiers; warm-up, per-epoch GMM co-divide, co-refinement, co-guessing, MixMatch.

    >>> from ssl_noise.robust import ROBUST
    >>> a = ROBUST["dividemix"].Args()
    >>> (a.T, a.alpha, a.p_threshold)
    (0.5, 4.0, 0.5)
    """

    Args = DivideMixArgs
    paper = Recipe("sgd", 0.02, momentum=0.9, weight_decay=5e-4, schedule="step", milestones=(150 / 300,),
                   source="LiJunnan1992/DivideMix@d9d3058 Train_cifar.py:232-233,243-249")

    def setup(self) -> None:
        ctx, args = self.ctx, self.args
        self.net1, self.net2 = ctx.build_model(0), ctx.build_model(1)
        ctx.build_optimizer(self.net1)
        ctx.build_optimizer(self.net2)
        if args.warmup is not None:
            self.warmup = args.warmup
        else:  # the code's 10 of 300 epochs for CIFAR-10 (Train_cifar.py:218-221), scaled under protocol paper
            shared = min(10, max(1, ctx.epochs // 3))
            self.warmup = scaled_epochs(10, 300, ctx.epochs) if ctx.protocol == "paper" else shared
        if args.lambda_u is not None:
            self.lambda_u = float(args.lambda_u)
        else:
            rate = args.noise_estimate if args.noise_estimate is not None else ctx.noise_rate
            if rate is None:
                raise UserError("dividemix needs lambda_u or a noise-rate estimate when the noise rate is unknown: "
                                "--set method_args.lambda_u=VALUE")
            self.lambda_u = lambda_u_for(float(rate))
        n = len(ctx.labels)
        self.prob = np.full((2, n), np.nan, dtype=np.float32)   # clean posterior per network, latest division
        self.split_count = np.zeros(n, dtype=np.int32)          # epochs network 1 called a sample clean
        self.divisions = 0
        self.step_in_epoch, self.steps = 0, 1
        self.skipped = np.zeros(2, dtype=np.int64)   # epochs each network's semi-supervised step was skipped
        self.skip_now = [False, False]                # this epoch's: its peer marked fewer than 2 samples clean

    @classmethod
    def needs_noise_rate(cls, args) -> bool:
        return args.lambda_u is None

    def inactive_reason(self) -> Optional[str]:
        if self.warmup >= self.ctx.epochs:
            return f"its warm-up of {self.warmup} epoch(s) fills the whole run of {self.ctx.epochs}: it never divides"
        return None

    @property
    def nets(self) -> List[Classifier]:
        return [self.net1, self.net2]

    # ---------------------------------------------------------------------------------------------- division

    @torch.no_grad()
    def losses(self, net: Classifier) -> np.ndarray:
        """(N,) eval-mode CE of the given labels on the un-augmented training images."""
        was = net.training
        net.eval()
        with self.ctx.autocast():
            logits = torch.from_numpy(self.ctx.predict_train(lambda x: net(x).float()))
        net.train(was)
        return F.cross_entropy(logits, torch.as_tensor(self.ctx.labels), reduction="none").numpy()

    def divide(self, epoch: int) -> np.ndarray:
        """(2, N) clean posteriors of both networks from fresh mixtures."""
        return np.stack([clean_posterior(self.losses(net), seed=derive_seed(self.ctx.seed, epoch, k, 7) % 2**32)
                         for k, net in enumerate(self.nets)])

    def on_epoch_start(self, epoch: int) -> None:
        self.step_in_epoch = 0
        if epoch < self.warmup:
            return
        self.prob = self.divide(epoch)
        self.split_count += self.prob[0] > self.args.p_threshold
        self.divisions += 1

    # ------------------------------------------------------------------------------------------------ batches

    def _views(self, rows: np.ndarray, epoch: int, slot: int) -> Iterator[Batch]:
        return self.ctx.batches(rows=torch.from_numpy(rows), augment=self.ctx.augment, shuffle=False,
                                epoch=derive_seed(self.ctx.seed, epoch, slot, 11) % 2**31)

    def epoch_batches(self, epoch: int):
        if epoch < self.warmup:
            return super().epoch_batches(epoch)
        return self._semi_batches(epoch)

    def _semi_batches(self, epoch: int) -> Iterator[Batch]:
        """Per step, for network k: B labelled rows of the *other* network's split (two views, their clean
        posterior ``w``) and B unlabelled rows (two views); the longer labelled part sets the number of steps,
        shorter parts are cycled. Network 1's labelled part is the Batch itself, the rest is in ``extra``."""
        n, ctx = len(self.ctx.labels), self.ctx
        b = ctx.batch_size or math.ceil(n / ctx.steps_per_epoch)
        order = np.random.default_rng(derive_seed(ctx.seed, epoch, 13))
        parts, streams = [], {}
        for k in range(2):
            clean = self.prob[1 - k] > self.args.p_threshold
            parts.append((np.flatnonzero(clean), np.flatnonzero(~clean)))
        # A peer that marks fewer than 2 samples clean leaves nothing to learn labels from (the authors' code fails
        # on the empty loader): that network skips its semi-supervised step this epoch.
        self.skip_now = [len(lab) < 2 for lab, _ in parts]
        self._count_skips(epoch)
        active = [k for k in range(2) if not self.skip_now[k]]
        self.steps = min(ctx.steps_per_epoch, max([math.ceil(len(parts[k][0]) / b) for k in active], default=0))
        length = self.steps * b

        def tiled(rows: np.ndarray) -> np.ndarray:
            return np.resize(order.permutation(rows), length)

        for k, (lab, unl) in enumerate(parts):
            if self.skip_now[k]:
                continue
            lab_rows = tiled(lab)
            streams[f"x{k}"] = (lab_rows, self._views(lab_rows, epoch, 4 * k), self._views(lab_rows, epoch, 4 * k + 1))
            if len(unl):
                unl_rows = tiled(unl)
                streams[f"u{k}"] = (unl_rows, self._views(unl_rows, epoch, 4 * k + 2),
                                    self._views(unl_rows, epoch, 4 * k + 3))
        for _ in range(self.steps):
            extra: Dict[str, torch.Tensor] = {}
            main = None
            for key, (_, first, second) in streams.items():
                v1, v2 = next(first), next(second)
                extra[f"{key}_1"], extra[f"{key}_2"] = v1.x, v2.x
                if key.startswith("x"):
                    k = int(key[1])
                    extra[f"y{k}"], extra[f"index{k}"] = v1.y, v1.index
                    w = torch.from_numpy(self.prob[1 - k][v1.index.cpu().numpy()]).to(v1.x.device)
                    extra[f"w{k}"] = torch.nan_to_num(w, nan=1.0)
                    main = v1 if main is None else main   # network 1's labelled rows, else network 2's
            yield Batch(main.x, main.y, main.index, extra)

    def _count_skips(self, epoch: int) -> None:
        """Count and (once per run) say the networks whose semi-supervised step this epoch skips."""
        for k in np.flatnonzero(self.skip_now):
            if not self.skipped.any():
                warnings.warn(f"dividemix: at epoch {epoch + 1} network {2 - k}'s split marks fewer than 2 samples "
                              f"clean, so network {k + 1} skips its semi-supervised step (no labelled batch); every "
                              f"such epoch is counted in metrics.json (method.dividemix_skipped_epochs)",
                              MethodWarning, stacklevel=2)
            self.skipped[k] += 1

    # -------------------------------------------------------------------------------------------------- steps

    def _warmup_step(self, batch: Batch) -> Dict[str, torch.Tensor]:
        loss, logits_sum = 0.0, 0.0
        for net in self.nets:
            logits = net(batch.x).float()
            loss = loss + F.cross_entropy(logits, batch.y)
            if self.args.warmup_penalty:  # NegEntropy: sum p log p, pushes away from over-confident fits
                p = logits.softmax(dim=1)
                loss = loss + (p * p.clamp_min(1e-12).log()).sum(dim=1).mean()
            logits_sum = logits_sum + logits.detach()
        return {"loss": loss, "prob": label_prob(logits_sum, batch.y), "pred": logits_sum.argmax(dim=1)}

    def ramp(self, epoch: int) -> float:
        """lambda_u x clip((epoch + step / steps - warmup) / rampup, 0, 1), the code's ``linear_rampup``."""
        current = epoch + self.step_in_epoch / max(self.steps, 1)
        return self.lambda_u * float(np.clip((current - self.warmup) / self.args.rampup, 0.0, 1.0))

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        if epoch < self.warmup:
            return self._warmup_step(batch)
        e, T = batch.extra, self.args.T
        rng = np.random.default_rng(derive_seed(self.ctx.seed, epoch, self.step_in_epoch, 17))
        lambda_u, loss, out = self.ramp(epoch), 0.0, {}
        for k, (net, peer) in enumerate([(self.net1, self.net2), (self.net2, self.net1)]):
            if self.skip_now[k]:
                continue
            parts = {"x1": e[f"x{k}_1"], "x2": e[f"x{k}_2"]}
            y, w = e[f"y{k}"], e[f"w{k}"].float()[:, None]
            with torch.no_grad():
                targets_u = None
                if f"u{k}_1" in e:  # co-guessing: both networks, both views (the peer in eval mode)
                    parts.update(u1=e[f"u{k}_1"], u2=e[f"u{k}_2"])
                    peer.eval()
                    guess = sum(m(u).float().softmax(dim=1) for m in (net, peer) for u in (parts["u1"], parts["u2"]))
                    peer.train()
                    targets_u = sharpen(guess / 4, T)
                logits_x = net(parts["x1"]).float()  # co-refinement: given label vs own prediction, by w
                p_x = (logits_x.softmax(dim=1) + net(parts["x2"]).float().softmax(dim=1)) / 2
                targets_x = sharpen(w * F.one_hot(y, p_x.shape[1]).float() + (1 - w) * p_x, T)
            lam = float(rng.beta(self.args.alpha, self.args.alpha))
            lam = max(lam, 1 - lam)
            size = 2 * len(y) + (2 * len(parts["u1"]) if targets_u is not None else 0)
            perm = torch.from_numpy(rng.permutation(size)).to(y.device)
            loss_k, _ = mixmatch_loss(net, parts, targets_x, targets_u, lam, perm, lambda_u)
            loss = loss + loss_k
            if not out:  # the batch's rows are the first trained network's labelled rows
                out = {"prob": label_prob(logits_x, y), "pred": logits_x.argmax(dim=1)}
        self.step_in_epoch += 1
        return {"loss": loss, **out}

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        if epoch < self.warmup:
            return {"dividemix_phase": 0.0}
        labelled = (self.prob > self.args.p_threshold).mean(axis=1)
        return {"dividemix_phase": 1.0, "labelled_frac_net1": float(labelled[0]),
                "labelled_frac_net2": float(labelled[1]), "lambda_u": self.ramp(epoch)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net1(x) + self.net2(x)

    def outputs(self) -> Dict[str, np.ndarray]:
        """``kept``: network 1's clean split of the last division (every sample if it never divided; that split
        trains network 2), ``selection_freq``: share of divisions that called a sample clean, ``noise_score``:
        1 - network 1's clean posterior from a final division, ``clean_prob``: (2, N) of the last division."""
        n = len(self.ctx.labels)
        divided = self.divisions > 0
        kept = np.flatnonzero(self.prob[0] > self.args.p_threshold) if divided else np.arange(n)
        freq = (self.split_count / self.divisions if divided else np.ones(n)).astype(np.float32)
        final = clean_posterior(self.losses(self.net1), seed=derive_seed(self.ctx.seed, self.ctx.epochs, 0, 7) % 2**32)
        return {"kept": kept.astype(np.int64), "selection_freq": freq, "noise_score": (1 - final).astype(np.float32),
                "clean_prob": self.prob.copy()}

    def summary(self) -> Dict[str, Any]:
        return {"dividemix_skipped_epochs": [int(v) for v in self.skipped]}

    def epoch_state(self) -> Dict[str, np.ndarray]:
        return {"prob": self.prob.copy(), "split_count": self.split_count.copy(),
                "divisions": np.asarray(self.divisions, dtype=np.int64), "skipped": self.skipped.copy()}

    def load_epoch_state(self, state: Mapping[str, np.ndarray]) -> None:
        prob = np.asarray(state["prob"], dtype=np.float32)
        if prob.shape != self.prob.shape:
            raise ValueError(f"DivideMix state of shape {prob.shape} does not fit this run's {self.prob.shape}")
        self.prob, self.split_count = prob.copy(), np.asarray(state["split_count"], dtype=np.int32).copy()
        self.divisions = int(state["divisions"])
        self.skipped = np.asarray(state.get("skipped", np.zeros(2)), dtype=np.int64).copy()
