"""Sampling (trainer.generate) and `dnafm generate`."""

from __future__ import annotations

import pytest
import torch

from datapipe.tokenizers import get_tokenizer
from trainer.generate import SamplingConfig, filter_logits, generate, sample_next
from trainer.models.gpt import DNAGPT, GPTConfig

TOK = get_tokenizer("dnagpt-6mer")


def model() -> DNAGPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=TOK.vocab_size, max_seq_len=48, n_layer=2, n_head=2, d_model=32)
    return DNAGPT(cfg).eval()


def prompt(b: int = 3) -> torch.Tensor:
    return torch.from_numpy(TOK.encode("<R>ACGTACGGATTACCATGA")).long().expand(b, -1)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 20, 0.9)])
def test_cache_and_recompute_draw_the_same_tokens(temperature, top_k, top_p):
    m = model()
    cfg = SamplingConfig(max_new_tokens=30, temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    cached = generate(m, prompt(), cfg, show_progress=False)
    full = generate(m, prompt(), SamplingConfig(**{**cfg.to_dict(), "use_cache": False}), show_progress=False)
    assert torch.equal(cached.ids, full.ids)
    assert cached.ids.shape == (3, 4 + 30)
    assert torch.equal(cached.ids[:, :4], prompt())


def test_seed_makes_samples_reproducible_and_rows_differ():
    m = model()
    a = generate(m, prompt(4), SamplingConfig(max_new_tokens=20, seed=1), show_progress=False).ids
    b = generate(m, prompt(4), SamplingConfig(max_new_tokens=20, seed=1), show_progress=False).ids
    c = generate(m, prompt(4), SamplingConfig(max_new_tokens=20, seed=2), show_progress=False).ids
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(r) for r in a[:, 4:].tolist()}) == 4  # an untrained model's rows are all different


def test_top_k_one_is_greedy():
    m = model()
    greedy = generate(m, prompt(), SamplingConfig(max_new_tokens=10, temperature=0), show_progress=False)
    top1 = generate(m, prompt(), SamplingConfig(max_new_tokens=10, top_k=1, seed=9), show_progress=False)
    assert torch.equal(greedy.ids, top1.ids)


def test_filters_keep_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # 0.5 + 0.3 = 0.8 < 0.85: the third token is needed to reach top_p, the fourth is not
    assert torch.isfinite(filter_logits(logits, top_p=0.85)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]  # the filter follows the values, not the columns
    assert torch.isfinite(filter_logits(shuffled, top_p=0.85)).tolist() == [[True, True, False, True]]


def test_temperature_shapes_the_sampled_distribution():
    """20,000 draws from fixed logits match softmax(logits / T) to within 4 standard errors."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20_000, -1)
    gen = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 2.0):
        draws = sample_next(logits, SamplingConfig(temperature=temperature), gen)
        freq = torch.bincount(draws, minlength=4).float() / len(draws)
        expect = torch.softmax(logits[0] / temperature, -1)
        assert torch.all((freq - expect).abs() < 4 * (expect * (1 - expect) / len(draws)).sqrt() + 1e-3)


def test_allowed_ids_and_stop_tokens():
    m = model()
    allowed = [0, 1]  # <0> <1>
    stop = TOK.reserved_id("=")
    out = generate(
        m,
        prompt(16),
        SamplingConfig(max_new_tokens=40 - 4, seed=0),
        allowed_ids=allowed,
        stop_ids=[stop],
        show_progress=False,
    )
    new = out.ids[:, 4:]
    for row, length, stopped in zip(out.ids, out.lengths.tolist(), out.stopped.tolist(), strict=True):
        body = row[4:length].tolist()
        if stopped:
            assert body[-1] == stop and set(body[:-1]) <= {0, 1}
            assert set(row[length:].tolist()) <= {20}  # padding after the stop
        else:
            assert length == out.ids.shape[1] and set(body) <= {0, 1}
    assert out.stopped.any(), "with 3 choices and 36 draws some row draws the stop token"
    assert set(new.unique().tolist()) <= {0, 1, stop, 20}


@pytest.mark.parametrize("head", ["tied", "mlp"])
def test_allowed_ids_read_the_models_own_lm_head(head):
    """The restricted softmax uses the logits of the model's head, tied or the released DNAGPT's MLP head
    (``dnafm import --format dnagpt-release``): greedy decoding over allowed ids picks the argmax of the full
    logits' allowed columns, with the cache and without."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=TOK.vocab_size, max_seq_len=48, n_layer=2, n_head=2, d_model=32, lm_head=head)
    m = DNAGPT(cfg).eval()
    allowed = torch.tensor([0, 1, 25, 400])
    hidden = torch.randn(3, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.lm_logits(hidden, allowed), m.lm_logits(hidden)[..., allowed])
        expect = allowed[m.lm_logits(m(prompt())[:, -1])[:, allowed].argmax(-1)]
    for use_cache in (True, False):
        sampling = SamplingConfig(max_new_tokens=3, temperature=0, use_cache=use_cache)
        out = generate(m, prompt(), sampling, allowed_ids=allowed.tolist(), show_progress=False)
        assert torch.equal(out.ids[:, 4], expect)


def test_all_rows_stopped_ends_the_loop():
    m = model()
    stop = TOK.reserved_id("=")
    out = generate(
        m, prompt(2), SamplingConfig(max_new_tokens=30), allowed_ids=[], stop_ids=[stop], show_progress=False
    )
    assert out.ids.shape == (2, 5) and out.stopped.all() and out.lengths.tolist() == [5, 5]


def test_context_overflow_is_refused():
    with pytest.raises(ValueError, match="context of 48"):
        generate(model(), prompt(), SamplingConfig(max_new_tokens=45), show_progress=False)


@pytest.mark.parametrize(
    "field, value", [("temperature", -1), ("top_k", -2), ("top_p", 0), ("top_p", 1.5), ("max_new_tokens", 0)]
)
def test_bad_sampling_values_name_the_field(field, value):
    from datapipe.common.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        SamplingConfig(**{field: value})


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from tests.helpers import untrained_export

    return untrained_export("tiny-dnagpt", tmp_path_factory.mktemp("gen") / "export")


def read_fasta_text(path):
    records, name = {}, None
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:]
            records[name] = ""
        else:
            assert len(line) <= 80
            records[name] += line
    return records


def test_generate_command_writes_fasta(tiny_export, tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "sub" / "gen.fa"
    args = ["generate", "--checkpoint", str(tiny_export), "--prompt", "<R>ACGTACGGATTA", "-n", "5"]
    proc = run_cli(*args, "--max-new-tokens", "20", "--top-k", "50", "--batch-size", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_fasta_text(out)
    assert len(records) == 5
    for header, seq in records.items():
        assert header.endswith("prompt=<R>ACGTACGGATTA new_tokens=20 end=max_new_tokens")
        assert seq.startswith("ACGTACGGATTA") and len(seq) == 12 + 20 * 6
        assert set(seq) <= set("ACGTN")
    again = tmp_path / "again.fa"
    proc = run_cli(*args, "--max-new-tokens", "20", "--top-k", "50", "--batch-size", "2", "--out", str(again))
    assert again.read_text() == out.read_text()  # same seed and batch size: same samples


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-new-tokens", "200"], "exceed the model's context of 128 tokens"),
        (["--prompt", "<R>AC<Q"], "unclosed '<'"),
        (["--stop", "<Hello>"], "not a DNAGPT reserved token"),
        (["--set", "sampling.top_p=2"], "sampling.top_p"),
    ],
)
def test_generate_bad_input_is_one_line_and_writes_nothing(tiny_export, tmp_path, capsys, extra, message):
    from cluster.cli import main

    out = tmp_path / "gen.fa"
    assert main(["generate", "--checkpoint", str(tiny_export), "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
