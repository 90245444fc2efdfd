"""What the instance-dependent generator does to BloodMNIST's labels: per clean class, its flip rate and the share
of its flips that go to its most frequent wrong class; per given (noisy) label, the share of the samples carrying it
that are wrong. Reads noise files (``ssl-noise noise --type instance ...`` or a sweep's ``runs/noise/*.csv``).

    ssl-noise noise --dataset bloodmnist --type instance --rate 0.4 --seed 1 --out inst-n1.csv
    python studies/bloodmnist_fft_methods/instance_noise.py inst-n1.csv
"""

import sys

import pandas as pd


def describe(path: str) -> None:
    labels = pd.read_csv(path)
    flipped = labels[labels["clean_label"] != labels["noisy_label"]]
    print(f"\n{path}: {len(labels)} labels, realised rate {len(flipped) / len(labels):.3f}\n")
    print("| class | flip rate | top wrong class | its share of the flips | samples given this label | of them wrong |")
    print("|---" * 6 + "|")
    for k in sorted(labels["clean_label"].unique()):
        mine = labels[labels["clean_label"] == k]
        wrong = flipped[flipped["clean_label"] == k]["noisy_label"].value_counts()
        given = labels[labels["noisy_label"] == k]
        top = f"{wrong.index[0]} | {wrong.iloc[0] / wrong.sum():.0%}" if len(wrong) else "– | –"
        print(f"| {k} | {wrong.sum() / len(mine):.3f} | {top} | {len(given)} | "
              f"{(given['clean_label'] != k).mean():.0%} |")


if __name__ == "__main__":
    for noise_file in sys.argv[1:]:
        describe(noise_file)
