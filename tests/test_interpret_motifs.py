"""Motif discovery from attention scores (DNABERT-viz), MEME output, JASPAR matching, `dnafm motifs`."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_cli

MOTIF = "TTCCCGGAA"  # a STAT-like palindrome (TTCnnnGAA)


def planted_set(n: int = 120, length: int = 60, seed: int = 0):
    """Positives carry MOTIF at a random place (its bases score high), negatives are random with random
    scores: the situation motif discovery is meant to find."""
    rng = np.random.default_rng(seed)
    seqs, labels, scores = [], [], []
    for i in range(2 * n):
        s = list(rng.choice(list("ACGT"), size=length))
        sc = rng.uniform(0.5, 1.0, size=length)
        if i % 2 == 0:
            at = int(rng.integers(12, length - 12 - len(MOTIF)))
            s[at : at + len(MOTIF)] = MOTIF
            sc[at : at + len(MOTIF)] = rng.uniform(20.0, 30.0, size=len(MOTIF))
        else:
            sc[rng.integers(length)] = 0.01  # a low minimum, so "10 x the minimum" is below the mean
        seqs.append("".join(s))
        labels.append(1 - i % 2)
        scores.append(sc / np.linalg.norm(sc))
    return seqs, np.array(labels), scores


def test_high_attention_regions():
    from eval.interpret.motifs import high_attention_regions

    score = np.array([0.5, 1, 9, 9, 9, 9, 9, 1, 9, 9, 1, 9, 9, 9, 9, 9, 9])  # 10 x the minimum = 5
    assert high_attention_regions(score, min_len=5, min_factor=10) == [(2, 7), (11, 17)]
    # above the mean but not above 10 x the minimum (0.5 x 10 = 5): nothing
    low = np.array([0.5, 4, 4, 4, 4, 4, 4, 0.5, 0.5, 0.5])
    assert high_attention_regions(low, min_len=5, min_factor=10) == []
    assert high_attention_regions(low, min_len=5, min_factor=1) == [(1, 7)]


def test_enrichment_is_the_hypergeometric_test_with_bh():
    from scipy.stats import hypergeom

    from eval.interpret.motifs import Candidate, enrichment

    pos = ["AAAAACCCCC", "CCCCCAAAAA", "GGGGGCCCCC", "TTTTTAAAAA"]
    neg = ["GGGGGTTTTT", "AAAAATTTTT", "CGCGCGCGCG"]
    cands = {s: Candidate(s) for s in ("AAAAA", "CCCCC", "GGGGG")}
    enrichment(cands, pos, neg)
    a = cands["AAAAA"]
    assert (a.n_pos, a.n_all) == (3, 4)
    assert a.p == pytest.approx(hypergeom.sf(3 - 1, 7, 4, 4))
    ps = [cands[s].p for s in ("AAAAA", "CCCCC", "GGGGG")]
    order = np.argsort(ps)  # Benjamini-Hochberg by hand: q_(i) = min_{j >= i} p_(j) m / j
    m = len(ps)
    q_sorted = np.minimum.accumulate([ps[order[i]] * m / (i + 1) for i in range(m)][::-1])[::-1]
    for rank, i in enumerate(order):
        assert cands[("AAAAA", "CCCCC", "GGGGG")[i]].q == pytest.approx(min(q_sorted[rank], 1.0))


def test_merge_moves_instances_into_the_key_frame():
    from eval.interpret.motifs import Candidate, MotifConfig, merge

    key = Candidate("TTCCCGGAA", hits=[(0, 10), (1, 20), (2, 5)])
    # the same site seen one base later and shorter: candidate position 0 is key position 1
    shifted = Candidate("TCCCGGA", hits=[(3, 31)])
    other = Candidate("GGGGGGG", hits=[(4, 2)])
    motifs = merge([shifted, other, key], MotifConfig())
    assert [m.key.seq for m in motifs] == ["TTCCCGGAA", "GGGGGGG"]
    assert motifs[0].instances[-1] == (3, 30)  # key frame starts one base before the shorter hit
    assert len(motifs[0].members) == 2


def test_planted_motif_is_found():
    from eval.interpret.motifs import MotifConfig, find_motifs

    seqs, labels, scores = planted_set()
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    motifs, cands = find_motifs(
        [seqs[i] for i in pos], [scores[i] for i in pos], [seqs[i] for i in neg], MotifConfig()
    )
    assert len(motifs) >= 1
    top = motifs[0]
    assert MOTIF in top.key.seq or top.key.seq in MOTIF
    assert len(top.instances) >= 100  # nearly every positive; windows past the ends are dropped
    assert top.pwm.shape == (24, 4)
    np.testing.assert_allclose(top.pwm.sum(1), 1.0)
    cons = "".join("ACGT"[j] for j in top.pwm.argmax(1))
    assert MOTIF in cons
    assert all(len(w) == 24 for w in top.windows)
    assert min(c.q for c in cands) < 1e-10


def test_meme_file_reads_back():
    from Bio import motifs as bio_motifs
    from memelite.io import read_meme

    from eval.interpret.motifs import Candidate, Motif, write_meme

    pwm = np.random.default_rng(0).dirichlet(np.ones(4), size=24)
    m = Motif(key=Candidate("ACGTA", q=1e-5), members=[], instances=[(0, 0)] * 7, pwm=pwm)
    text = write_meme([m], ["motif_01"], np.array([0.3, 0.2, 0.2, 0.3]))
    path = __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "m.meme"
    path.write_text(text + "\n")
    got = read_meme(str(path))
    np.testing.assert_allclose(got["motif_01 ACGTA"].T, pwm, atol=1e-6)
    with open(path) as f:
        record = bio_motifs.parse(f, "minimal")
    assert record[0].name == "motif_01" and record[0].num_occurrences == 7


@pytest.fixture(scope="module")
def jaspar_targets():
    from eval.interpret.jaspar import load_jaspar

    return load_jaspar("JASPAR2026", "CORE", "vertebrates")


@pytest.mark.slow  # memelite compiles its numba kernels on first use (~1.5 min of CPU, cached afterwards)
def test_tomtom_finds_the_jaspar_motif_a_query_was_drawn_from(jaspar_targets):
    from eval.interpret.jaspar import tomtom_matches

    stat3 = next(t for t in jaspar_targets if t.name == "STAT3")
    rng = np.random.default_rng(0)
    # 40 sites drawn from the STAT3 matrix, on the reverse strand, inside uniform random flanks
    draws = np.stack([[rng.choice(4, p=row) for row in stat3.pwm] for _ in range(40)])
    draws = 3 - draws[:, ::-1]
    flank = rng.integers(0, 4, size=(40, 6))
    sites = np.concatenate([flank, draws, flank[:, ::-1]], axis=1)
    query = np.stack([(sites == b).mean(0) for b in range(4)], axis=1)
    (matches,) = tomtom_matches([query], jaspar_targets, top=5, min_ic=0.5)
    assert "STAT factors" in matches[0].target.family
    assert matches[0].q < 0.05 and matches[0].rc
    assert matches[0].p <= matches[-1].p
    aligned = matches[0].aligned(len(query))
    cols = ~np.isnan(aligned[:, 0])
    assert cols.sum() == len(stat3.pwm) or matches[0].target.name != "STAT3"


def write_scores(folder, seqs, labels, scores):
    """A `dnafm attention` folder for these scores, without a model."""
    from types import SimpleNamespace

    from eval.interpret.attention import AttentionConfig, AttentionResult, write_attention
    from eval.interpret.inputs import read_sequences

    data_file = folder / "set.csv"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_text(
        "sequence,label\n" + "".join(f"{s},{y}\n" for s, y in zip(seqs, labels, strict=True))
    )
    data = read_sequences(data_file)
    loaded = SimpleNamespace(path=folder, family="dnabert", tokenizer=SimpleNamespace(k=6), classifier=None)
    result = AttentionResult(scores=[np.asarray(s, np.float32) for s in scores], prob=None)
    write_attention(folder / "att", result, data, loaded, AttentionConfig())
    return data_file, folder / "att"


@pytest.mark.slow  # JASPAR matching: see above
def test_motifs_command(tmp_path):
    seqs, labels, scores = planted_set()
    data, att = write_scores(tmp_path, seqs, labels, scores)
    out = tmp_path / "motifs"
    proc = run_cli("motifs", "--scores", str(att), "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (out / "motifs.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    first = dict(zip(header, rows[1].split("\t"), strict=True))
    assert MOTIF in first["consensus"].upper() and int(first["instances"]) >= 100
    assert first["best_match"] and first["matches"].count("q=") == 5
    assert (out / first["logo"]).read_bytes()[:4] == b"\x89PNG"
    assert "motif_01" in (out / "motifs.meme").read_text()
    assert "<img" in (out / "motifs.html").read_text()
    assert len((out / "instances.tsv").read_text().splitlines()) - 1 >= int(first["instances"])
    assert (out / "candidates.tsv").exists()


def test_motifs_command_refuses_scores_of_other_sequences(tmp_path):
    seqs, labels, scores = planted_set(n=10)
    _, att = write_scores(tmp_path / "a", seqs, labels, scores)
    other = tmp_path / "other.csv"
    other.write_text(
        "sequence,label\n" + "".join(f"{s[::-1]},{y}\n" for s, y in zip(seqs, labels, strict=True))
    )
    proc = run_cli(
        "motifs", "--scores", str(att), "--data", str(other), "--out", str(tmp_path / "o"), "--no-jaspar"
    )
    assert proc.returncode == 1 and "not the ones the scores" in proc.stderr
    assert not (tmp_path / "o").exists()
    unlabelled = tmp_path / "u.csv"
    unlabelled.write_text("sequence\n" + "".join(f"{s}\n" for s in seqs))
    proc = run_cli("motifs", "--scores", str(att), "--data", str(unlabelled), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "no labels" in proc.stderr
