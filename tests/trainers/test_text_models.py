"""TextCNN and fastText-style models: padding never changes a prediction, n-grams are hashed
from real tokens only, and a saved checkpoint loads back to the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sweeplab.trainers.text_models import FastText, TextCNN, build_text_model, load_text_model, parse_kernel_sizes, save_text_model

VOCAB = 50


def _batch(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids of ``lengths`` tokens, right-padded with 0 to ``width``."""
    torch.manual_seed(0)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, VOCAB, (n,))
        mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("model", [
    TextCNN(VOCAB, 4, embedding_dim=8, filters=5, kernel_sizes=(1, 3, 5), dropout=0.5),
    FastText(VOCAB, 4, embedding_dim=8, ngrams=3, buckets=97, dropout=0.5),
], ids=["textcnn", "fasttext"])
def test_padding_does_not_change_the_logits(model: torch.nn.Module) -> None:
    model.eval()
    ids, mask = _batch([2, 6, 4], 6)
    wider_ids, wider_mask = torch.nn.functional.pad(ids, (0, 9)), torch.nn.functional.pad(mask, (0, 9))
    with torch.no_grad():
        narrow = model(input_ids=ids, attention_mask=mask).logits
        wide = model(input_ids=wider_ids, attention_mask=wider_mask).logits
    assert narrow.shape == (3, 4)
    torch.testing.assert_close(narrow, wide)


def test_fasttext_pools_every_token_and_every_ngram_of_real_tokens() -> None:
    model = FastText(VOCAB, 2, embedding_dim=4, ngrams=3, buckets=11, dropout=0.0)
    ids, mask = _batch([5, 2], 7)
    grams, real = model._grams(ids, mask)
    assert real[0].sum() == 5 + 4 + 3 and real[1].sum() == 2 + 1 + 0
    hashed = grams[real.bool()]
    assert ((hashed < VOCAB) | ((hashed >= VOCAB) & (hashed < VOCAB + 11))).all()
    # the same bigram gets the same bucket wherever it stands
    twice = torch.tensor([[7, 9, 7, 9]])
    grams, real = model._grams(twice, torch.ones_like(twice))
    bigrams = grams[0, 4:7]
    assert bigrams[0] == bigrams[2] and bigrams[0] != bigrams[1]


def test_fasttext_learns_a_bigram_that_no_single_token_gives_away() -> None:
    """Label 1 when token 3 directly precedes token 4; both tokens appear in every text."""
    torch.manual_seed(0)
    texts, labels = [], []
    for i in range(200):
        positive = i % 2 == 0
        texts.append([5, 3, 4, 6] if positive else [5, 4, 6, 3])
        labels.append(int(positive))
    ids = torch.tensor(texts)
    mask = torch.ones_like(ids)
    y = torch.tensor(labels)
    accuracies = {}
    for ngrams in (1, 2):
        model = FastText(VOCAB, 2, embedding_dim=8, ngrams=ngrams, buckets=101, dropout=0.0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(60):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y).backward()
            optimizer.step()
        accuracies[ngrams] = float((model(input_ids=ids, attention_mask=mask).logits.argmax(1) == y).float().mean())
    assert accuracies[1] == pytest.approx(0.5) and accuracies[2] == 1.0


@pytest.mark.parametrize(("family", "settings"), [
    ("textcnn", {"embedding_dim": 8, "filters": 4, "kernel_sizes": "2,3", "dropout": 0.1}),
    ("fasttext", {"embedding_dim": 8, "ngrams": 3, "buckets": 31, "dropout": 0.1}),
])
def test_a_saved_model_loads_back_to_the_same_logits(tmp_path: Path, family: str, settings: dict) -> None:
    model = build_text_model(family, settings, num_labels=3, vocab_size=VOCAB).eval()
    save_text_model(tmp_path, family, settings, model.state_dict(), 3, VOCAB, 0, ["a", "b", "c"])
    loaded = load_text_model(tmp_path)
    assert type(loaded) is type(model)
    ids, mask = _batch([3, 5], 5)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, loaded(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("value", ["", "2,x", "0,3", []])
def test_bad_kernel_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="kernel_sizes"):
        parse_kernel_sizes(value)  # type: ignore[arg-type]
    assert parse_kernel_sizes("2, 3,4") == (2, 3, 4) and parse_kernel_sizes(5) == (5,)


def test_ngram_buckets_are_used_at_least_as_evenly_as_by_a_random_hash() -> None:
    """Every bigram of a 200-token vocabulary (40,000) into 50,000 buckets: a uniform random hash
    would use 50,000 * (1 - e^-0.8) = 27,530 distinct buckets (a hash that ignores high bits uses
    far fewer: 3a + b mod 50,000 uses 800); more buckets must mean fewer shared ones."""
    a, b = torch.meshgrid(torch.arange(1, 201), torch.arange(1, 201), indexing="ij")
    ids = torch.stack([a.flatten(), b.flatten()], dim=1)
    used = {}
    for buckets in (50_000, 400_000):
        model = FastText(201, 2, embedding_dim=2, ngrams=2, buckets=buckets, dropout=0.0)
        grams, _ = model._grams(ids, torch.ones_like(ids))
        used[buckets] = len(torch.unique(grams[:, 2]))
    assert used[50_000] > 27_000
    assert used[400_000] > max(used[50_000], 38_000)  # random: 400,000 * (1 - e^-0.1) = 38,065
