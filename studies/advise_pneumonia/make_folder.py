"""PneumoniaMNIST (the shared class-balanced file, 28 px) as a folder of PNGs whose labels carry a hidden 20 %
class-dependent noise, the way a researcher's own data arrives: the folder names are the labels advise sees.

Noise, drawn once with seed 0 in every split (train, val and test: real test labels are noisy too): a pneumonia
image is filed under normal with probability 0.30, a normal image under pneumonia with 0.10 (20 % over the balanced
classes). The clean labels go to ``truth.csv`` beside the folder, never into it; only score.py reads them.

    python studies/advise_pneumonia/make_folder.py ../shared/data/pneumoniamnist_balanced.npz runs/advise_pneumonia/data
"""

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ["normal", "pneumonia"]
T = np.array([[0.90, 0.10],     # clean normal    -> given normal / pneumonia
              [0.30, 0.70]])    # clean pneumonia -> given normal / pneumonia
SEED = 0


def main(npz: str, out: str) -> None:
    data, out = np.load(npz), Path(out)
    rng = np.random.default_rng(SEED)
    rows = []
    for split in ("train", "val", "test"):
        images, clean = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        given = np.array([rng.choice(2, p=T[c]) for c in clean])
        for i, (image, g, c) in enumerate(zip(images, given, clean)):
            path = Path(split) / NAMES[g] / f"{split}_{i:05d}.png"
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / path)
            rows.append((str(path), split, NAMES[g], NAMES[c]))
        print(f"{split}: {len(clean)} images, {np.mean(given != clean):.3f} of the labels wrong "
              f"(normal->pneumonia {np.mean(given[clean == 0] == 1):.3f}, "
              f"pneumonia->normal {np.mean(given[clean == 1] == 0):.3f})")
    with open(out.parent / "truth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "given", "clean"])
        writer.writerows(rows)


if __name__ == "__main__":
    main(*sys.argv[1:3])
