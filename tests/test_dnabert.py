"""DNABERT: span masking (property tests), batches, the model against Hugging Face's BertForMaskedLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datapipe.shards.format import Sample
from datapipe.tokenizers import get_tokenizer
from trainer.bert_samples import IGNORE, BertSampleBuilder
from trainer.masking import MaskingConfig, span_mask
from trainer.models.bert import DNABERT, BertConfig


@pytest.mark.parametrize("k", [3, 4, 5, 6])
@pytest.mark.parametrize("seed", range(5))
def test_every_masked_span_hides_a_base(k, seed):
    """Property: no masked base stays visible through an unmasked neighbouring k-mer. For every centre base,
    each token covering it is masked; and every run of masked tokens hides at least one base entirely."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 511))
    masked, centres = span_mask(n, k=k, rate=0.15, rng=rng)
    for m in np.flatnonzero(centres):
        covering = range(max(0, m - k + 1), min(m, n - 1) + 1)
        assert masked[list(covering)].all(), (k, n, m)
    hidden = np.array([masked[max(0, x - k + 1) : min(x, n - 1) + 1].all() for x in range(n + k - 1)])
    idx = np.flatnonzero(masked)
    for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []:
        a, b = run[0], run[-1]
        assert hidden[a : b + k].any(), (k, n, a, b)  # some base covered only by this run


@pytest.mark.parametrize("k", [3, 6])
def test_mask_rate_is_about_fifteen_percent(k):
    rng = np.random.default_rng(0)
    rates = [span_mask(510, k=k, rate=0.15, rng=rng)[0].mean() for _ in range(400)]
    expected = 1 - (1 - 0.15 / k) ** k  # overlapping spans: slightly under 15%
    assert abs(np.mean(rates) - expected) < 0.005
    assert 0.13 < np.mean(rates) < 0.151


def test_batch_layout_and_80_10_10_replacement():
    tok = get_tokenizer("dnabert-6")
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 515))
    ids = tok.encode(seq).astype(np.uint16)  # 510 k-mers
    builder = BertSampleBuilder(tokenizer=tok, max_seq_len=512)
    batches = [
        builder(
            [
                Sample(key="u000000-000000", ids=ids, meta={}),
                Sample(key="u000000-000001", ids=ids[:20], meta={}),
            ],
            np.random.default_rng(s),
        )
        for s in range(30)
    ]
    b = batches[0]
    assert b["input_ids"].shape == (2, 512)
    assert b["input_ids"][0, 0] == tok.cls_id and b["input_ids"][0, 511] == tok.sep_id
    assert b["input_ids"][1, 21] == tok.sep_id and (b["input_ids"][1, 22:] == tok.pad_id).all()
    assert b["attention_mask"][1].sum() == 22 and not b["attention_mask"][1, 22:].any()
    assert (b["mlm_labels"][:, 0] == IGNORE).all()  # [CLS] is never a target
    originals = torch.from_numpy(ids.astype(np.int64))
    counts = np.zeros(3)
    for b in batches:
        target = b["mlm_labels"][0, 1:511] != IGNORE
        assert (b["mlm_labels"][0, 1:511][target] == originals[target]).all()
        got = b["input_ids"][0, 1:511][target]
        counts += [
            (got == tok.mask_id).sum(),
            ((got != tok.mask_id) & (got != originals[target])).sum(),
            (got == originals[target]).sum(),
        ]
    share = counts / counts.sum()
    assert abs(share[0] - 0.8) < 0.04 and abs(share[1] - 0.1) < 0.03 and abs(share[2] - 0.1) < 0.03


def test_late_mask_rate_switches_by_batch_index():
    cfg = MaskingConfig(mask_rate=0.15, late_mask_rate=0.2, late_after_batches=100)
    assert cfg.rate_at(99) == 0.15 and cfg.rate_at(100) == 0.2
    assert MaskingConfig().rate_at(10**9) == 0.15


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_tokenization_end_to_end_through_the_model(k):
    tok = get_tokenizer(f"dnabert-{k}")
    model = DNABERT(
        BertConfig(
            vocab_size=tok.vocab_size, max_seq_len=64, n_layer=1, n_head=2, d_model=16, d_ff=32, dropout=0.0
        )
    ).eval()
    builder = BertSampleBuilder(tokenizer=tok, max_seq_len=64)
    samples = [
        Sample(key=f"u000000-{i:06d}", ids=tok.encode("ACGTTGCAAGGCTTAN" * 3).astype(np.uint16), meta={})
        for i in range(2)
    ]
    batch = builder(samples, np.random.default_rng(0))
    with torch.no_grad():
        hidden = model(batch["input_ids"], batch["attention_mask"])
    assert hidden.shape == (2, 48 - k + 1 + 2, 16)
    assert model.mlm_logits(hidden).shape[-1] == tok.vocab_size
    assert model.classify(hidden).shape == (2, 2)


def test_padding_does_not_change_real_tokens():
    model = DNABERT(
        BertConfig(vocab_size=69, max_seq_len=32, n_layer=2, n_head=2, d_model=16, d_ff=32, dropout=0.0)
    ).eval()
    ids = torch.randint(5, 69, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], 1).bool()
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask)[:, :10], model(ids)[:, :10], rtol=1e-5, atol=1e-5)


def test_init_std_sets_the_weight_scale_and_survives_hugging_face_export(tmp_path):
    from datapipe.common.errors import ConfigError
    from trainer.models.hf_bert import load_hf_bert, save_hf_bert

    small = dict(vocab_size=4101, max_seq_len=32, n_layer=1, n_head=2, d_model=64, d_ff=64)
    torch.manual_seed(0)
    for std in (0.02, 0.1):
        model = DNABERT(BertConfig(**small, init_std=std))
        # 262k word-embedding entries: the sample std is within 1% of the asked one
        assert abs(model.word.weight.std().item() - std) < 0.01 * std
        assert abs(model.layers[0].query.weight.std().item() - std) < 0.05 * std
    save_hf_bert(model, tmp_path / "hf")
    assert load_hf_bert(tmp_path / "hf")[1].init_std == 0.1
    with pytest.raises(ConfigError, match="init_std"):
        BertConfig(**small, init_std=0.0)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hugging_face_round_trip(tmp_path, fmt):
    transformers = pytest.importorskip("transformers")
    from trainer.models.hf_bert import load_hf_bert, save_hf_bert

    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=4101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_act="gelu",
    )
    hf = transformers.BertForMaskedLM(hf_cfg).eval()
    with torch.no_grad():  # non-trivial values everywhere, biases included
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=fmt == "safetensors")
    ids = torch.randint(5, 4101, (2, 40))
    ids[:, 0] = 2
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 25:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        ours, cfg = load_hf_bert(tmp_path / "hf")
        got = ours.mlm_logits(ours(ids, mask.bool()))
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-4, atol=1e-4)
    # and back: our export loads in transformers and gives the same logits
    from datapipe.tokenizers import VOCAB_DIR

    save_hf_bert(ours, tmp_path / "ours", vocab_file=VOCAB_DIR / "vocab_kmer6.txt")
    assert (tmp_path / "ours" / "vocab.txt").read_text().split()[:5] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    again = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, attention_mask=mask).logits[keep], want[keep], rtol=1e-4, atol=1e-4
        )


@pytest.mark.slow
def test_two_rank_dnabert_run_resumes_exactly(tmp_path):
    """tiny-dnabert on 2 CPU ranks (torchrun, ZeRO-1); resuming from the step-3 checkpoint reproduces steps 4-6."""
    import json

    from tests.helpers import chr20_shards, curve, run_cut_at, torchrun

    data = chr20_shards(tmp_path / "data", bases=150_000, window_tokens=100, tokenizer="dnabert-6")
    args = [
        "--recipe",
        "tiny-dnabert",
        "--no-mlflow",
        "--data",
        str(data),
        "--steps",
        "6",
        "--set",
        "train.log_every=1",
        "--set",
        "train.ckpt_every=3",
        "--set",
        "loader.micro_batch_size=4",
    ]
    full = tmp_path / "full"
    proc = torchrun(2, *args, "--out", str(full))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    metrics = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert {"train/mlm_acc", "train/mask_rate"} <= set(metrics[0])
    assert all(0.08 < m["train/mask_rate"] < 0.22 for m in metrics)
    part = run_cut_at(full, tmp_path / "part", 3)
    proc = torchrun(2, *args, "--out", str(part), "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert curve(part) == curve(full)


def test_loader_hands_the_batch_index_to_schedules(tmp_path):
    """The mask-rate switch needs each batch's index; the loader passes it (same on every rank)."""
    from datapipe.loader import LoaderConfig, ShardLoader
    from tests.helpers import chr20_shards

    data = chr20_shards(tmp_path, bases=60_000, window_tokens=100, tokenizer="dnabert-6")

    class Spy:
        wants_batch_index = True

        def __call__(self, samples, rng, batch_index):
            return {"index": torch.tensor(batch_index)}

    for rank in (0, 1):
        loader = ShardLoader(
            data, LoaderConfig(micro_batch_size=2, num_workers=0), collate=Spy(), rank=rank, world_size=2
        )
        assert [int(next(loader)["index"]) for _ in range(5)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("head", "hf_class"), [("mlm", "BertForMaskedLM"), ("classifier", "BertForSequenceClassification")]
)
def test_hugging_face_export_loads_cleanly_and_its_tokenizer_gives_our_ids(tmp_path, head, hf_class):
    """The folder a user gets: the class named by `head` loads every weight and no other, and AutoTokenizer
    (no lower-casing) gives our ids for space-separated k-mers."""
    transformers = pytest.importorskip("transformers")
    from datapipe.tokenizers import VOCAB_DIR
    from trainer.models.hf_bert import save_hf_bert

    torch.manual_seed(0)
    model = DNABERT(
        BertConfig(
            vocab_size=4101, max_seq_len=64, n_layer=2, n_head=4, d_model=32, d_ff=64, attention="torch"
        )
    ).eval()
    save_hf_bert(model, tmp_path / "hf", vocab_file=VOCAB_DIR / "vocab_kmer6.txt", head=head)
    hf, info = getattr(transformers, hf_class).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    tok = get_tokenizer("dnabert-6")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert auto("ACGTAC GTACGG TACGGA")["input_ids"] == [
        2,
        *map(tok.token_to_id, ["ACGTAC", "GTACGG", "TACGGA"]),
        3,
    ]
    seq = "ACGTACGGATTACCATGNAAGCTTGG"
    ids = auto(" ".join(seq[i : i + 6] for i in range(len(seq) - 5)))["input_ids"]
    assert ids == [tok.cls_id, *tok.encode(seq).tolist(), tok.sep_id]
    assert 1 in ids  # the k-mers over N are [UNK] in both
    batch = torch.tensor([ids])
    with torch.no_grad():
        hidden = model(batch)
        want = model.mlm_logits(hidden) if head == "mlm" else model.classify(hidden)
        torch.testing.assert_close(hf.eval()(input_ids=batch).logits, want, rtol=1e-4, atol=1e-4)


def test_export_and_import_cli_round_trip_a_dnabert(tmp_path):
    """`dnafm export --format hf` of a DNABERT export folder, and `dnafm import --format hf-bert` of that folder
    back into an export folder (as for a released DNABERT): the same MLM logits all the way."""
    transformers = pytest.importorskip("transformers")
    from tests.conftest import run_cli
    from tests.helpers import untrained_export
    from trainer.models.export import load_export

    exp = untrained_export("tiny-dnabert", tmp_path / "exp")
    proc = run_cli("export", "--checkpoint", str(exp), "--out", str(tmp_path / "hf"), "--format", "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("import", "--format", "hf-bert", str(tmp_path / "hf"), "--out", str(tmp_path / "back"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ours, _, _ = load_export(exp)
    back, cfg, tok = load_export(tmp_path / "back")
    assert (cfg.family, cfg.tokenizer) == ("dnabert", "dnabert-6")
    ids = torch.from_numpy(np.concatenate([[2], tok.encode("ACGTACGGATTACCATGAAGCTTGG"), [3]])).long()[None]
    with torch.no_grad():
        want = ours.mlm_logits(ours(ids))
        torch.testing.assert_close(hf(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(back.mlm_logits(back(ids)), want, rtol=0, atol=0)
