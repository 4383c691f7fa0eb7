"""A news sweep on the full THUCNews title set within a CPU budget: test accuracy and wall time.

sweeplab: ``run_sweep`` on task ``news`` with its default space (``news``: a BERT trained from
scratch with the bert-base-chinese vocabulary, TPE over learning rate, batch size, maximum length,
warm-up, weight decay and epochs), then the best trial's checkpoint scored once on the 10k test
titles, exactly as ``sweep run news --data-dir DIR --trials N`` does.

The peer, measured in the same run on the same split: the strong classical baseline of this set,
TF-IDF of character 1-2-grams with a linear SVM (scikit-learn), trained on the training titles.

Published test accuracies on this title set, trained on its full 180k titles (four times the 45k
here): TextCNN 91.2%, FastText 92.2%, BERT (pretrained bert-base-chinese) 94.8%.

    python benchmarks/news_thucnews.py                       # 8 trials, about 40 min on 2 cores
    python benchmarks/news_thucnews.py --trials 4 --data-dir DIR --out results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sweeplab.datasets.news import read_news
from sweeplab.sweeps.driver import SweepOptions, run_sweep
from sweeplab.tracker.query import best_trials

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "news" / "THUCNews" / "data"
PUBLISHED = {"TextCNN": 0.912, "FastText": 0.922, "BERT (pretrained)": 0.948}


def tfidf_svm(data_dir: Path) -> dict[str, float]:
    """Test accuracy and seconds of TF-IDF char 1-2-grams + LinearSVC on the same split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score
    from sklearn.svm import LinearSVC

    data = read_news(data_dir)
    start = time.perf_counter()
    vectoriser = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    model = LinearSVC(C=0.5).fit(vectoriser.fit_transform(data.train.texts), data.train.labels)
    predicted = model.predict(vectoriser.transform(data.test.texts))
    return {"test_accuracy": float(accuracy_score(data.test.labels, predicted)), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--space", default="news")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()

    peer = tfidf_svm(args.data_dir)
    print(f"peer TF-IDF + LinearSVC: test accuracy {peer['test_accuracy']:.4f} in {peer['seconds']:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store_dir or Path(tmp) / "store"
        options = SweepOptions(task="news", trials=args.trials, data_dir=args.data_dir, space=args.space,
                               seed=args.seed, store_dir=store)
        start = time.perf_counter()
        outcome = run_sweep(options)
        wall = time.perf_counter() - start
        row = best_trials(outcome.tracking_uri, "news", "best_val_accuracy", study=outcome.study)[0]

    result = {
        "trials": outcome.counts,
        "wall_seconds": wall,
        "best_trial": row.trial,
        "best_params": {k: row.params[k] for k in ("lr", "batch_size", "max_length", "warmup_ratio", "weight_decay", "epochs")},
        "best_step": row.summary.get("best_step"),
        "best_val_accuracy": row.value,
        "test": outcome.test,
        "peer_tfidf_svm": peer,
        "published_180k": PUBLISHED,
    }
    test_accuracy = (outcome.test or {}).get("test_accuracy", float("nan"))
    print(f"sweeplab news sweep: {outcome.counts}, wall time {wall / 60:.1f} min")
    print(f"best trial {row.trial} {result['best_params']} best step {result['best_step']:g}: "
          f"val accuracy {row.value:.4f}, test accuracy {test_accuracy:.4f}")
    print(f"ratio of test accuracy to the peer's: {test_accuracy / peer['test_accuracy']:.3f}; "
          f"to TextCNN's published 0.912: {test_accuracy / PUBLISHED['TextCNN']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
