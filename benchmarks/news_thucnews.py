"""A news sweep on the full THUCNews title set within a wall-time budget on this machine: test
accuracy of the model it hands back, beside the classic baseline measured in the same run.

sweeplab: ``run_sweep`` on task ``news`` with its default space (``news``: TPE over the model
family, TextCNN, fastText-style or a small BERT from scratch, and each family's settings) and
``--timeout`` (no trial starts after it, and the running ones stop at their next evaluation with
their best so far), then the best trial's checkpoint scored once on the 10k test titles, exactly as ``sweep run news --data-dir DIR --trials N --timeout S``.
The wall time reported covers everything: data preparation, every trial, test scoring.

The peer, measured in the same run on the same split: the strong classical baseline of this set,
TF-IDF of character 1-2-grams with a linear SVM (scikit-learn), trained on the training titles.

Published test accuracies on this title set, trained on its full 180k titles (four times the 45k
here), with pretrained character embeddings for the first two: TextCNN 91.2%, FastText 92.2%,
BERT (pretrained bert-base-chinese) 94.8%.

    python benchmarks/news_thucnews.py --minutes 30 --out news.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from sweeplab.datasets.news import read_news
from sweeplab.sweeps.driver import run_sweep
from sweeplab.sweeps.options import SweepOptions
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
    parser.add_argument("--minutes", type=float, default=30.0, help="the whole budget, preparation and test scoring included")
    parser.add_argument("--last-trial-minutes", type=float, default=1.0,
                        help="kept free at the end for the running trials' last evaluation and the test scoring: "
                             "--timeout is --minutes less this")
    parser.add_argument("--trials", type=int, default=24, help="an upper bound (TPE samples its first quarter at random); the time budget ends the sweep")
    parser.add_argument("--space", default="news")
    parser.add_argument("--pruner", default=None, help="default: sweep run's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()

    peer = tfidf_svm(args.data_dir)
    print(f"peer TF-IDF + LinearSVC: test accuracy {peer['test_accuracy']:.4f} in {peer['seconds']:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store_dir or Path(tmp) / "store"
        extra = {"pruner": args.pruner} if args.pruner else {}
        options = SweepOptions.of("news", trials=args.trials, data_dir=args.data_dir, space=args.space, seed=args.seed,
                               store_dir=store, timeout=60 * (args.minutes - args.last_trial_minutes), **extra)
        start = time.perf_counter()
        outcome = run_sweep(options)
        wall = time.perf_counter() - start
        rows = best_trials(outcome.tracking_uri, "news", "best_val_accuracy", top=10_000, study=outcome.study,
                           states=("complete", "pruned"))

    families: dict[str, dict] = defaultdict(lambda: {"trials": 0, "pruned": 0, "evaluations": 0})
    for row in rows:
        family = families[row.params.get("model", "?")]
        family["trials"] += 1
        family["pruned"] += row.state == "pruned"
        family["evaluations"] += int(row.summary.get("steps_run", 0))
        if row.state == "complete" and row.value > family.get("best_val_accuracy", -1.0):
            family.update(best_val_accuracy=row.value, best_trial=row.trial,
                          best_params={k: v for k, v in sorted(row.params.items()) if not k.startswith("overfit_")})
    best = rows and max((r for r in rows if r.state == "complete"), key=lambda r: r.value)
    test_accuracy = (outcome.test or {}).get("test_accuracy", float("nan"))
    result = {
        "budget_minutes": args.minutes,
        "wall_seconds": wall,
        "trials": outcome.counts,
        "families": dict(families),
        "best_trial": best.trial if best else None,
        "best_model": best.params.get("model") if best else None,
        "best_val_accuracy": best.value if best else None,
        "test": outcome.test,
        "peer_tfidf_svm": peer,
        "published_180k": PUBLISHED,
    }
    print(f"sweeplab news sweep: {outcome.counts}, wall time {wall / 60:.1f} min (budget {args.minutes:g} min)")
    for name, family in sorted(families.items()):
        print(f"  {name:9} {family['trials']:3} trials ({family['pruned']} pruned), {family['evaluations']} epochs; "
              f"best val accuracy {family.get('best_val_accuracy', float('nan')):.4f} (trial {family.get('best_trial', '-')})")
    if best:
        print(f"best trial {best.trial} ({best.params.get('model')}): val accuracy {best.value:.4f}, test accuracy {test_accuracy:.4f}")
    print(f"ratio of test accuracy to the peer's: {test_accuracy / peer['test_accuracy']:.3f}; "
          f"to TextCNN's published 0.912: {test_accuracy / PUBLISHED['TextCNN']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
