"""DNAGPT as a Hugging Face folder: transformers loads it (remote code we ship), with our logits, numbers,
generate() and tokenizer ids."""

from __future__ import annotations

import pytest
import torch

from datapipe.tokenizers import get_tokenizer
from tests.conftest import run_cli
from tests.helpers import untrained_export
from trainer.models.gpt import DNAGPT, GPTConfig
from trainer.models.hf_gpt import load_hf_gpt, save_hf_gpt

transformers = pytest.importorskip("transformers")

HEADS = {"tied": dict(lm_head="tied", gelu="exact"), "released": dict(lm_head="mlp", gelu="tanh")}


def ours(tokenizer: str = "dnagpt-6mer", *, head: str = "tied", seed: int = 0) -> DNAGPT:
    """A small DNAGPT with non-trivial values everywhere (the number MLPs' biases included)."""
    torch.manual_seed(seed)
    tok = get_tokenizer(tokenizer)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size,
        max_seq_len=40,
        n_layer=3,
        n_head=4,
        d_model=48,
        attention="torch",
        **HEADS[head],
    )
    model = DNAGPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def load(folder):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True
    )
    return model.eval(), info


@pytest.fixture(scope="module", params=sorted(HEADS))
def pair(request, tmp_path_factory):
    """(our model, transformers' model loaded from our export)."""
    model = ours(head=request.param)
    folder = save_hf_gpt(
        model,
        tmp_path_factory.mktemp("hf") / f"dnagpt-{request.param}",
        tokenizer=get_tokenizer("dnagpt-6mer"),
    )
    hf, info = load(folder)
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched weights
    return model, hf


def test_logits_and_numbers_equal_ours(pair):
    model, hf = pair
    assert type(hf).__name__ == "DnaGptForCausalLM"
    ids = torch.randint(34, model.cfg.vocab_size, (3, 29))
    values = torch.randn(3, 29)
    slots = torch.zeros(3, 29, dtype=torch.bool)
    slots[:, [7, 20]] = True
    ids[slots] = 18  # <M>
    with torch.no_grad():
        hidden = model(ids, values, slots)
        out = hf(input_ids=ids, num_values=values, num_in_mask=slots)
        plain = hf(input_ids=ids).logits
    torch.testing.assert_close(out.logits, model.lm_logits(hidden), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.numbers, model.regress(hidden), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain[:, 7:], out.logits[:, 7:])  # the numbers did enter
    torch.testing.assert_close(
        plain[:, :7], out.logits[:, :7], rtol=1e-4, atol=1e-4
    )  # ... only from their slot on


def test_loss_is_the_shifted_next_token_cross_entropy(pair):
    model, hf = pair
    ids = torch.randint(34, model.cfg.vocab_size, (2, 17))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        logits = model.lm_logits(model(ids))
        want = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
        got = hf(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def greedy(model: DNAGPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with our model, recomputing the whole sequence each step (no cache)."""
    ids = prompt
    with torch.no_grad():
        for _ in range(n):
            nxt = model.lm_logits(model(ids)[:, -1]).argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    return ids


def test_generate_with_and_without_cache_is_our_greedy_decoding(pair):
    model, hf = pair
    prompt = torch.randint(34, model.cfg.vocab_size, (2, 6))
    want = greedy(model, prompt, 12)
    assert not torch.isin(want, torch.tensor([0, 20])).any()  # no stop id: generate must run all 12 steps
    for use_cache in (True, False):
        got = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=12,
            do_sample=False,
            use_cache=use_cache,
            eos_token_id=None,  # run all 12 steps, whatever comes out
        )
        assert torch.equal(got, want), f"use_cache={use_cache}"


def test_left_padded_rows_give_the_unpadded_logits_and_generations(pair):
    model, hf = pair
    short = torch.randint(34, model.cfg.vocab_size, (1, 5))
    long = torch.randint(34, model.cfg.vocab_size, (1, 9))
    batch = torch.cat([torch.cat([torch.full((1, 4), 20), short], 1), long])  # <P> padding on the left
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    with torch.no_grad():
        logits = hf(input_ids=batch, attention_mask=mask).logits
        alone = hf(input_ids=short).logits
    torch.testing.assert_close(logits[0, 4:], alone[0], rtol=1e-4, atol=1e-4)
    want_short, want_long = greedy(model, short, 8)[0], greedy(model, long, 8)[0]
    assert not torch.isin(torch.cat([want_short, want_long]), torch.tensor([0, 20])).any()
    got = hf.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(got[0, 4:], want_short)
    assert torch.equal(got[1], want_long)


def test_sampling_runs_and_stops_at_the_released_stop_ids(pair):
    _, hf = pair
    assert hf.generation_config.eos_token_id == [
        0,
        20,
    ]  # <0> (unknown) and <P>, as the released generate stops
    torch.manual_seed(1)
    out = hf.generate(torch.tensor([[21, 40, 41]]), max_new_tokens=10, do_sample=True, top_k=50)
    assert out.shape[0] == 1 and 4 <= out.shape[1] <= 13


TEXTS = [
    "<R>ACGTACGGATTACCATGAAGCTTA<=>",
    "ACGTA",  # a 5-base tail only
    "acgtacNNAGCT<M><+><M><=><M>",
    "<W>ACGTXXACGTAC GTACGG\nTT<0><9><|>",
    "<R><=>",
    "",
]


@pytest.mark.parametrize("name", ["dnagpt-6mer", "dnagpt-1to6mer"])
def test_tokenizer_ids_through_auto_tokenizer_equal_ours(tmp_path, name):
    tok = get_tokenizer(name)
    save_hf_gpt(ours(name), tmp_path / "hf", tokenizer=tok)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")  # the class the folder names
    for text in TEXTS:
        want = tok.encode(text).tolist()
        assert auto(text)["input_ids"] == want, text
        assert fast(text)["input_ids"] == want, text
    ids = tok.encode(TEXTS[0])
    assert auto.decode(ids) == tok.decode(ids) == TEXTS[0]
    assert (auto.pad_token_id, auto.unk_token_id) == (tok.pad_id, tok.unk_id) == (20, 0)


def test_our_reader_round_trips_the_folder(tmp_path):
    model = ours(head="released", seed=3)
    save_hf_gpt(model, tmp_path / "hf", tokenizer=get_tokenizer("dnagpt-6mer"))
    back, cfg = load_hf_gpt(tmp_path / "hf")
    assert {**cfg.to_dict(), "attention": "torch"} == model.cfg.to_dict()
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_export_cli_writes_a_loadable_folder_for_a_dnagpt_run(tmp_path):
    exp = untrained_export("tiny-dnagpt", tmp_path / "exp")
    proc = run_cli("export", "--checkpoint", str(exp), "--out", str(tmp_path / "hf"), "--format", "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf, info = load(tmp_path / "hf")
    assert {k: v for k, v in info.items() if v} == {}
    from trainer.models.export import load_export

    model, _, tok = load_export(exp)
    ids = torch.from_numpy(tok.encode("<R>ACGTACGGATTACCATGAAGCTTGGA<=>")).long()[None]
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=ids).logits, model.lm_logits(model(ids)), rtol=1e-4, atol=1e-4
        )
