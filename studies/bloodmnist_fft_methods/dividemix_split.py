"""Why DivideMix's split fails on this schedule: re-train a finished DivideMix cell's warm-up from its config
(deterministic: the same epochs as the cell) and, at each division until epoch ``stop``, print per network the
eval-mode loss quantiles of clean and flipped labels, how well that loss ranks the flips (AUROC), the two mixture
components DivideMix fits (means, sds, weights on the min-max normalised loss), and the share it labels clean with
the clean share among those (the mixture refitted with seed 0; the run's own split is the log's labelled_frac),
and, for comparison only, the same split on the loss clipped at its 99th percentile.
Costs about the cell's first ``stop`` epochs (4-5 min of one core to epoch 11, the first division).

    SSL_NOISE_DATA=../shared/data python studies/bloodmnist_fft_methods/dividemix_split.py \
        runs/random-bloodmnist-sym0.6n1-dividemix-s0-<hash> 11
"""

import json
import sys
from pathlib import Path

import numpy as np
import yaml
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.finetune.loop import fit
from ssl_noise.finetune.prepare import prepare
from ssl_noise.robust import dividemix
from ssl_noise.robust.base import ROBUST
from ssl_noise.settings import checkpoints_root


class Done(Exception):
    """Raised from the epoch callback to end training at ``stop``."""


def describe(loss: np.ndarray, flipped: np.ndarray) -> dict:
    """The loss of clean vs flipped labels and the mixture fitted to it, as DivideMix fits it."""
    loss = np.asarray(loss, dtype=np.float64)
    x = ((loss - loss.min()) / (loss.max() - loss.min()))[:, None]
    gmm = GaussianMixture(**dividemix.GMM_KW, random_state=0).fit(x)
    labelled = dividemix.clean_posterior(loss) > 0.5
    # Not DivideMix: the same split on the loss clipped at its 99th percentile, to see what a few outliers cost.
    clipped = dividemix.clean_posterior(np.minimum(loss, np.percentile(loss, 99))) > 0.5
    return {"loss_clean_q05_50_95": np.percentile(loss[~flipped], [5, 50, 95]).round(2).tolist(),
            "loss_flipped_q05_50_95": np.percentile(loss[flipped], [5, 50, 95]).round(2).tolist(),
            "loss_max": round(float(loss.max()), 2), "flip_auroc": round(float(roc_auc_score(flipped, loss)), 3),
            "gmm_means": gmm.means_[:, 0].round(3).tolist(),
            "gmm_sds": np.sqrt(gmm.covariances_.ravel()).round(3).tolist(),
            "gmm_weights": gmm.weights_.round(3).tolist(), "labelled": round(float(labelled.mean()), 3),
            "clean_among_labelled": round(float((~flipped[labelled]).mean()), 3) if labelled.any() else None,
            "clipped99_labelled": round(float(clipped.mean()), 3),
            "clipped99_clean_among_labelled": round(float((~flipped[clipped]).mean()), 3) if clipped.any() else None}


def main(run: str, stop: int) -> None:
    cfg = resolve(FinetuneConfig, yaml.safe_load((Path(run) / "config.yaml").read_text()))
    prep = prepare(cfg, data_root=None, checkpoints=checkpoints_root())  # data: $SSL_NOISE_DATA
    flipped = prep.train_noise.noisy != prep.data.train.labels
    print(f"realised rate {flipped.mean():.3f}")

    def make(ctx):
        method = ROBUST["dividemix"](ctx, cfg.method_args)
        losses = method.losses

        def traced(net):
            loss = losses(net)
            print(json.dumps(describe(loss, flipped)), flush=True)
            return loss

        method.losses = traced
        return method

    def on_epoch(record: dict) -> None:
        print({k: record.get(k) for k in ("epoch", "train_acc_clean", "labelled_frac_net1", "labelled_frac_net2")},
              flush=True)
        if record["epoch"] >= stop:
            raise Done

    try:
        fit(prep, make_method=make, on_epoch=on_epoch, show_progress=False)
    except Done:
        pass


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
