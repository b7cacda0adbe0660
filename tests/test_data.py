"""Data: where files are found, the error when they are not, HF-row semantics, the calibration sampler."""

import random

import pytest
import torch

from conftest import tiny_tokenizer
from prunellm import data
from prunellm.data import calibration_batch, data_dirs, load_rows, sample_windows
from prunellm.errors import UsageError


def _write_wikitext(root, lines):
    folder = root / "wikitext-2-raw"
    folder.mkdir(parents=True)
    for split in ("test", "valid"):
        (folder / f"wiki.{split}.raw").write_text("".join(lines), encoding="utf-8")


def test_wikitext_rows_are_hf_rows(tmp_path):
    _write_wikitext(tmp_path, [" \n", " = Title = \n", " \n", " Some text . \n"])
    rows = load_rows("wikitext2", "test", tmp_path)
    assert rows == ["", " = Title = \n", "", " Some text . \n"]


def test_data_dir_priority(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    _write_wikitext(explicit, [" explicit \n"])
    _write_wikitext(env, [" env \n"])
    monkeypatch.setenv("PRUNELLM_DATA", str(env))
    assert data_dirs(explicit)[:2] == [explicit, env]
    assert load_rows("wikitext2", "test", explicit) == [" explicit \n"]
    assert load_rows("wikitext2", "test") == [" env \n"]
    assert any(str(d).endswith("shared/data") for d in data_dirs())


def test_missing_data_error_names_every_place(tmp_path, monkeypatch):
    fake = data.Corpus(files={"test": "nowhere/missing.raw"}, hub=("no/such", None, "text"), eval_join="\n\n")
    monkeypatch.setitem(data.CORPORA, "fake", fake)
    monkeypatch.setenv("PRUNELLM_DATA", str(tmp_path / "env"))

    def offline(corpus, split):
        raise OSError("offline")

    monkeypatch.setattr(data, "_read_hub", offline)
    with pytest.raises(UsageError) as err:
        load_rows("fake", "test", tmp_path / "explicit")
    message = str(err.value)
    for folder in data_dirs(tmp_path / "explicit"):
        assert str(folder / "nowhere/missing.raw") in message
    assert "Hugging Face hub" in message


def test_unknown_dataset_and_missing_file():
    with pytest.raises(UsageError, match="unknown dataset"):
        load_rows("imagenet", "test")
    with pytest.raises(UsageError, match="not found"):
        load_rows("text:/no/such/file.txt", "test")


def test_wikitext2_test_text_matches_protocol(shared_data):
    joined = "\n\n".join(load_rows("wikitext2", "test", shared_data))
    assert len(joined) == 1_294_336
    assert len(joined.encode("utf-8")) == 1_296_370


def test_sampler_is_the_reference_protocol():
    ids = torch.arange(1000)
    got = sample_windows(ids, nsamples=5, seqlen=50, seed=3)
    random.seed(3)
    starts = [random.randint(0, 1000 - 50 - 1) for _ in range(5)]
    assert torch.equal(got, torch.stack([ids[i : i + 50] for i in starts]))
    assert torch.equal(got, sample_windows(ids, 5, 50, 3))
    assert not torch.equal(got, sample_windows(ids, 5, 50, 4))


def test_calibration_uses_validation_joined_by_space(tmp_path):
    folder = tmp_path / "wikitext-2-raw"
    folder.mkdir()
    (folder / "wiki.valid.raw").write_text(" the quick brown fox \n \n jumps over the lazy dog \n" * 20)
    (folder / "wiki.test.raw").write_text("pruning " * 500)
    tok = tiny_tokenizer()
    got = calibration_batch(tok, "wikitext2", 4, 16, seed=0, data_dir=tmp_path)
    rows = load_rows("wikitext2", "validation", tmp_path)
    expected = sample_windows(tok(" ".join(rows), return_tensors="pt").input_ids[0], 4, 16, 0)
    assert torch.equal(got, expected)


def test_sampler_rejects_short_text():
    with pytest.raises(UsageError, match="too few"):
        sample_windows(torch.arange(10), 1, 16, 0)
