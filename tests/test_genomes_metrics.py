"""The artificial-genome measures (eval.genomes_metrics) and the haplotype template and windows
(eval.genomes_model), on small sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from eval.genomes_metrics import aats, allele_freq, copies, decay_edges, hamming, ld_decay, ld_r2
from eval.genomes_model import (
    ALLELE_IDS,
    PREFIX,
    HaplotypeLM,
    generate_haplotypes,
    plan_windows,
    show_template,
    window_tokens,
)
from eval.haplotypes import SnpTable
from trainer.generate import SamplingConfig
from trainer.models.gpt import DNAGPT, GPTConfig


def rand(h, s, seed=0, p=0.5):
    return (np.random.default_rng(seed).random((h, s)) < p).astype(np.uint8)


def test_hamming_matches_scipy():
    a, b = rand(37, 101, 1), rand(23, 101, 2)
    assert np.array_equal(hamming(a, b), np.rint(cdist(a, b, "hamming") * 101).astype(int))


def test_ld_r2_matches_numpy_and_flags_monomorphic_snps():
    x = rand(200, 12, 3)
    x[:, 5] = 1  # monomorphic: r undefined
    r2 = ld_r2(x)
    keep = [i for i in range(12) if i != 5]
    np.testing.assert_allclose(r2[np.ix_(keep, keep)], np.corrcoef(x[:, keep].T) ** 2, atol=1e-12)
    assert np.isnan(r2[5]).all() and np.isnan(r2[:, 5]).all()


def test_aats_copies_fresh_draws_and_strangers():
    """A copy of the real set sits nearer to it than real haplotypes do to each other (AATS 0); a fresh draw
    from the same distribution is indistinguishable (about 0.5); a set from elsewhere is told apart (1)."""
    real = rand(300, 200, 4, p=0.3)
    assert aats(real, real.copy()) == 0.0
    # Hamming distances are integers: ties count as 'not greater', which pulls a fresh draw a little below 0.5
    assert 0.4 < aats(real, rand(300, 200, 5, p=0.3)) <= 0.5
    assert aats(real, rand(300, 200, 6, p=0.7)) == 1.0


def test_aats_privacy_loss_sign():
    """A set that copies part of the training haplotypes is nearer to them than to held-out ones."""
    train, test = rand(200, 150, 7), rand(200, 150, 8)
    leaky = np.concatenate([train[:100], rand(100, 150, 9)])
    assert aats(test, leaky) - aats(train, leaky) > 0.2


def test_copies_and_allele_freq():
    ref = rand(50, 40, 10)
    ag = np.concatenate([ref[[3, 7, 7]], rand(5, 40, 11)])
    assert copies(ag, ref) == 3
    np.testing.assert_allclose(allele_freq(ref), ref.mean(0))


def test_ld_decay_bins_same_chromosome_pairs_only():
    snps = SnpTable(
        chrom=np.array(["1"] * 6 + ["2"] * 6),
        pos=np.array([10, 20, 40, 80, 160, 320] * 2),
        ids=[str(i) for i in range(12)],
        a0=["A"] * 12,
        a1=["G"] * 12,
    )
    edges = decay_edges(snps)
    x = rand(400, 12, 12)
    x[:, 1] = x[:, 0]  # SNPs 0 and 1 (10 bp apart) in perfect LD
    means, counts = ld_decay(x, snps, edges)
    assert counts.sum() == 2 * 15  # C(6, 2) pairs per chromosome, none across
    assert means[0] > 0.45  # the shortest bin holds the 10-bp pairs, one of them r^2 = 1
    assert (
        decay_edges(SnpTable(chrom=np.array(list("abcdef")), pos=np.arange(6), ids=[], a0=[], a1=[])) is None
    )


@pytest.mark.parametrize("n_snps, context", [(805, 128), (10_000, 4096), (50, 128), (126, 128), (127, 128)])
def test_windows_cover_the_panel_and_fit_the_context(n_snps, context):
    plan = plan_windows(n_snps, context)
    assert PREFIX + plan.width <= context
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.width == n_snps
    new = plan.new_from
    for k in range(1, len(plan.starts)):
        assert plan.starts[k] < new[k] <= plan.starts[k] + plan.width  # overlaps, then adds SNPs
        if k < len(plan.starts) - 1:
            assert new[k] - plan.starts[k] == plan.width - (plan.starts[k] - plan.starts[k - 1])
    if n_snps == 10_000:
        assert len(plan.starts) == 4  # the README's figure: 10,000 SNPs, 4,096 tokens


def test_template_tokens():
    x = np.array([[1, 0, 0, 1, 1]], np.uint8)
    plan = plan_windows(5, 6)  # 4 SNPs a window: starts 0 and 1
    assert plan.starts == (0, 1)
    ids, values = window_tokens(x, plan, 1)
    assert ids.tolist() == [[21, 18, 0, 0, 1, 1]] and values.tolist() == [pytest.approx(0.2)]
    assert [t for t, _ in show_template(x[0], plan, 0)] == ["<R>", "<M>", "<1>", "<0>", "<0>", "<1>"]


def tiny_gpt(ctx=24):
    torch.manual_seed(0)
    return DNAGPT(GPTConfig(vocab_size=40, max_seq_len=ctx, n_layer=1, n_head=2, d_model=16)).eval()


def test_the_loss_reads_the_two_allele_logits():
    """The loss is the 2-way cross-entropy of <0>/<1> at every allele position (log 2 for equal logits)."""
    m = HaplotypeLM(tiny_gpt())
    with torch.no_grad():
        m.gpt.wte.weight[list(ALLELE_IDS)] = 0.0  # both allele logits 0 everywhere
    ids = torch.from_numpy(window_tokens(rand(3, 22, 13), plan_windows(22, 24), 0)[0])
    with torch.no_grad():
        loss = m(ids, torch.zeros(3))
    assert float(loss) == pytest.approx(np.log(2), abs=1e-6)


def test_generation_in_windows_carries_the_haplotype_across_windows():
    """Train on haplotypes that are all 0 or all 1 over 40 SNPs, with 10 SNPs a window (7 windows): the
    generated haplotypes must stay constant from window to window, which only conditioning on the overlap
    can give (windows sampled independently would give a constant haplotype with probability 2^-6)."""
    x = np.repeat(np.array([[0], [1]], np.uint8), 32, axis=0).repeat(40, axis=1)  # (64, 40)
    m = HaplotypeLM(tiny_gpt(ctx=12))
    plan = plan_windows(40, 12)
    assert len(plan.starts) == 7
    ids = np.concatenate([window_tokens(x, plan, k)[0] for k in range(len(plan.starts))])
    values = np.concatenate([window_tokens(x, plan, k)[1] for k in range(len(plan.starts))])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    gen = np.random.default_rng(0)
    m.train()
    for _ in range(150):
        b = gen.choice(len(ids), 32)
        loss = m(torch.from_numpy(ids[b]), torch.from_numpy(values[b]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.1  # floor: log 2 / 10 for the first SNP of each window, unknowable
    out = generate_haplotypes(m.gpt.eval(), 40, 40, sampling=SamplingConfig(batch_size=16, seed=0))
    assert (out.min(axis=1) == out.max(axis=1)).mean() >= 0.8  # (sampling may still flip an allele rarely)
    assert 5 < out[:, 0].sum() < 35  # and both kinds drawn
    greedy = [
        generate_haplotypes(m.gpt, 5, 40, sampling=SamplingConfig(batch_size=b, temperature=0))
        for b in (5, 2)
    ]
    assert np.array_equal(*greedy)  # greedy: the batch size changes nothing


def test_a_10000_snp_panel_with_a_4096_token_model():
    """4 windows: one fine-tuning step on them, then generation of the whole panel (an untrained 1-layer model:
    what is under test is that every window fits and the panel comes out whole)."""
    torch.manual_seed(0)
    gpt = DNAGPT(GPTConfig(vocab_size=40, max_seq_len=4096, n_layer=1, n_head=2, d_model=16))
    x = rand(4, 10_000, 14)
    plan = plan_windows(10_000, 4096)
    ids = np.concatenate([window_tokens(x[:1], plan, k)[0] for k in range(4)])
    values = np.concatenate([window_tokens(x[:1], plan, k)[1] for k in range(4)])
    HaplotypeLM(gpt)(torch.from_numpy(ids), torch.from_numpy(values)).backward()
    assert gpt.wpe.weight.grad[4094].abs().sum() > 0  # the last position that predicts an allele
    out = generate_haplotypes(gpt.eval(), 2, 10_000, sampling=SamplingConfig(batch_size=2))
    assert out.shape == (2, 10_000) and 0.3 < out.mean() < 0.7
