"""A simulated expert: answers advise's test sample (test_review/to_review.csv) with the hidden clean labels of
truth.csv, as a pathologist relabelling those images would (a perfect one: the study's upper bound).

    python studies/advise_pneumonia/expert.py runs/advise_pneumonia/truth.csv runs/advise_pneumonia/advice
"""

import sys
from pathlib import Path

import pandas as pd


def main(truth: str, advice: str) -> None:
    clean = pd.read_csv(truth).set_index("path")["clean"]
    data = Path(truth).parent / "data"
    page = pd.read_csv(Path(advice) / "test_review" / "to_review.csv")
    paths = [p if (data / p).is_file() else str(Path(p).resolve().relative_to(data.resolve())) for p in page["path"]]
    answers = pd.DataFrame({"index": page["index"], "label": [clean[p] for p in paths]})
    answers.to_csv(Path(advice) / "test_review" / "answers.csv", index=False)
    print(f"{len(answers)} test images answered")


if __name__ == "__main__":
    main(*sys.argv[1:3])
