"""Tokenizers: hand-computed ids, the shipped DNABERT vocabularies, round trips, a pure-Python reference."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from datapipe import tokenizers
from datapipe.tokenizers import (
    TOKENIZER_NAMES,
    DnaBertTokenizer,
    DnaGptTokenizer,
    get_tokenizer,
    load_tokenizer,
)
from tests.helpers import DATA_ROOT

SHARED_VOCAB = DATA_ROOT / "vocab"
SHIPPED_VOCAB = Path(tokenizers.__file__).parent / "vocab"
VOCAB_SHA256 = {  # DNABERT's files (jerryji1993/DNABERT @ b6da04e), recorded when they were copied in
    3: "868b0b1ca9c6dfe72771d7c98b406c21ab712d70b0df65216a19868149934b7d",
    4: "a78f8d49dfd18288b2838dacb207dc71932c078f1c5083df2c4465658ae39c34",
    5: "3d422649f2193de4cb8af321b42dd5b4a98151138ad68653649638fa5aa91101",
    6: "d8f61c247fc10f9b8c7f6baf4d31876f30076d4aaf9f31ff47b9e68badd62e61",
}
DNAGPT = ("dnagpt-6mer", "dnagpt-1to6mer")
DNABERT = ("dnabert-3", "dnabert-4", "dnabert-5", "dnabert-6")
# 1-mer .. 6-mer offsets in dnagpt-1to6mer: 34, 34+5, 34+5+25, ...
DEFAULT_CHUNK = tokenizers._CHUNK_BYTES
OFF = {1: 34, 2: 39, 3: 64, 4: 189, 5: 814, 6: 3939}


def ref_encode(name: str, seq: bytes) -> list[int]:
    """The spec, written the slow obvious way: upper-case ASCII, slice, look the k-mer up."""
    tok = get_tokenizer(name)
    kmers = {t: i for i, t in enumerate(tok.vocab) if t[0] not in "<["}  # k-mers only, no markup
    text = seq.upper().decode("latin-1")  # bytes.upper touches a-z only; latin-1 keeps 1 char per byte
    if tok.family == "dnagpt":
        return [kmers.get(text[i : i + 6], 0) for i in range(0, len(text), 6)]
    return [kmers.get(text[i : i + tok.k], 1) for i in range(len(text) - tok.k + 1)]


def random_bases(rng: np.random.Generator, n: int, alphabet: bytes) -> bytes:
    return bytes(np.frombuffer(alphabet, np.uint8)[rng.integers(0, len(alphabet), n)])


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name, size", zip(TOKENIZER_NAMES, (15659, 19564, 69, 261, 1029, 4101), strict=True))
def test_vocab_sizes(name, size):
    tok = get_tokenizer(name)
    assert tok.vocab_size == len(tok.vocab) == size
    assert tok.name == name and tok.family == name.split("-")[0]
    assert len(set(tok.vocab)) == size


def test_get_tokenizer_caches_and_rejects_unknown_names():
    assert get_tokenizer("dnabert-6") is get_tokenizer("dnabert-6")
    with pytest.raises(ValueError, match="dnagpt-1to6mer, dnabert-3"):
        get_tokenizer("dnabert-7")


# ---------------------------------------------------------------- DNAGPT


def test_dnagpt_reserved_tokens_in_released_order():
    order = "0123456789+-*/=&|!MBPRIKLOQSUVWYXZ"
    for name in DNAGPT:
        tok = get_tokenizer(name)
        assert tok.vocab[:34] == [f"<{c}>" for c in order]
        assert [tok.token_to_id(t) for t in ("<R>", "<P>", "<=>", "<M>", "<B>", "<0>", "<Z>")] == [
            21,
            20,
            14,
            18,
            19,
            0,
            33,
        ]
        assert (tok.reserved_id("R"), tok.reserved_id("<S>"), tok.reserved_id("=")) == (21, 27, 14)
        assert (tok.M_ID, tok.B_ID, tok.P_ID, tok.EQ_ID) == (18, 19, 20, 14)
        assert (tok.pad_id, tok.unk_id, tok.k) == (20, 0, 6)
        with pytest.raises(KeyError, match="not a DNAGPT reserved token"):
            tok.reserved_id("Q2")


@pytest.mark.parametrize(
    "name, seq, ids",
    [
        ("dnagpt-6mer", "NNNNNN", [34]),
        ("dnagpt-6mer", "NNNNNA", [35]),
        ("dnagpt-6mer", "AAAAAA", [34 + 3906]),  # A = digit 1: 5^5+5^4+5^3+5^2+5+1 = 3906
        ("dnagpt-6mer", "AAGCTT", [34 + 3125 + 625 + 2 * 125 + 3 * 25 + 4 * 5 + 4]),
        ("dnagpt-6mer", "TTTTTT", [15658]),  # 34 + 4 * 3906, the last id
        ("dnagpt-6mer", "ACGTACGG", [34 + 5358, 0]),  # ACGTAC = 1,3,2,4,1,3 -> 5358; 2-base tail unknown
        ("dnagpt-6mer", "ACGTACGGATC", [34 + 5358, 0]),
        ("dnagpt-1to6mer", "N", [34]),
        ("dnagpt-1to6mer", "T", [38]),
        ("dnagpt-1to6mer", "NN", [39]),
        ("dnagpt-1to6mer", "AAAAAA", [OFF[6] + 3906]),
        ("dnagpt-1to6mer", "TTTTTT", [19563]),
        ("dnagpt-1to6mer", "ACGTACGG", [OFF[6] + 5358, OFF[2] + 2 * 5 + 2]),
        ("dnagpt-1to6mer", "ACGTACGGATC", [OFF[6] + 5358, OFF[5] + 2 * 625 + 2 * 125 + 25 + 4 * 5 + 3]),
        ("dnagpt-6mer", "", []),
        ("dnagpt-1to6mer", "", []),
    ],
)
def test_dnagpt_hand_computed_ids(name, seq, ids):
    out = get_tokenizer(name).encode(seq)
    assert out.dtype == np.int32 and out.ndim == 1
    assert out.tolist() == ids


@pytest.mark.parametrize("name", DNAGPT)
def test_dnagpt_unknown_pieces_map_to_zero(name):
    tok = get_tokenizer(name)
    # R / Y (IUPAC), a digit, a NUL and a 0xff byte each spoil exactly their own 6-mer
    seq = b"ACGTAC" + b"ACRTAC" + b"AAAAAA" + b"YYYYYY" + b"AC1TAC" + b"\x00CGTAC" + b"ACGTA\xff" + b"ACGTAC"
    ids = tok.encode(seq).tolist()
    good, aaaaaa = tok.token_to_id("ACGTAC"), tok.token_to_id("AAAAAA")
    assert ids == [good, 0, aaaaaa, 0, 0, 0, 0, good]
    assert tok.encode("AC").tolist() == ([0] if name == "dnagpt-6mer" else [OFF[2] + 5 + 3])
    assert tok.encode("AR").tolist() == [0]


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_lowercase_equals_uppercase(name):
    seq = "acgtnACGTNaacgttgcaNNngattaca"
    tok = get_tokenizer(name)
    np.testing.assert_array_equal(tok.encode(seq), tok.encode(seq.upper()))


@pytest.mark.parametrize(
    "name, text, ids",
    [
        ("dnagpt-6mer", "<R>ACGTACGGG<=><1>", [21, 34 + 5358, 0, 14, 1]),
        ("dnagpt-1to6mer", "<R>ACGTACGGG<=><1>", [21, OFF[6] + 5358, OFF[3] + 62, 14, 1]),
        # each stretch is cut from its own left end: ACG | TAC, not ACGTAC
        ("dnagpt-1to6mer", "ACG<R>TAC", [OFF[3] + 25 + 15 + 2, 21, OFF[3] + 100 + 5 + 3]),
        ("dnagpt-1to6mer", "<B><M><P>", [19, 18, 20]),
        ("dnagpt-6mer", "<+><M>", [10, 18]),
    ],
)
def test_dnagpt_markup(name, text, ids):
    assert get_tokenizer(name).encode(text).tolist() == ids


@pytest.mark.parametrize(
    "text, message",
    [
        ("<Q2>ACGT", "unknown reserved token '<Q2>' at position 0"),
        ("ACGTAC<r>", "unknown reserved token '<r>' at position 6"),
        ("AC<>", "unknown reserved token '<>' at position 2"),
        ("<R>ACGT<R", "unclosed '<' at position 7"),
        ("ACGT<<R>", "unclosed '<' at position 4"),
        ("AC>GT", "'>' without '<' at position 2"),
    ],
)
def test_dnagpt_bad_markup_names_the_position(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        get_tokenizer("dnagpt-1to6mer").encode(text)


def test_dnagpt_bytes_input_has_no_markup():
    # the fast path takes raw bases: '<R>' is three garbage bytes, one unknown piece
    assert get_tokenizer("dnagpt-1to6mer").encode(b"ACGTAC<R>").tolist() == [OFF[6] + 5358, 0]


def test_dnagpt_decode_writes_reserved_tokens_and_unknown_as_zero():
    tok = get_tokenizer("dnagpt-6mer")
    assert tok.decode([21, 34 + 5358, 0, 14, 1]) == "<R>ACGTAC<0><=><1>"
    assert tok.decode(tok.encode("ACGTACGG")) == "ACGTAC<0>"  # tail lost, as in the release


# ---------------------------------------------------------------- DNABERT


@pytest.mark.parametrize("k", (3, 4, 5, 6))
def test_dnabert_shipped_vocab_is_dnabert_files(k):
    shipped = SHIPPED_VOCAB / f"vocab_kmer{k}.txt"
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == VOCAB_SHA256[k]
    shared = SHARED_VOCAB / f"vocab_kmer{k}.txt"
    if shared.exists():
        assert shipped.read_bytes() == shared.read_bytes()
    tok = get_tokenizer(f"dnabert-{k}")
    assert tok.vocab == shipped.read_text().splitlines()
    lines = shipped.read_text().splitlines()
    for line_no in (0, 4, 5, 6, 17, len(lines) - 1):  # token on line i (0-based) has id i
        assert tok.token_to_id(lines[line_no]) == line_no


@pytest.mark.parametrize(
    "k, kmer, token_id",  # ids read by hand from DNABERT's files (line number - 1)
    [
        (3, "AAA", 5),
        (3, "ACG", 16),
        (3, "CAT", 38),
        (3, "GGG", 68),
        (4, "ACGT", 50),
        (5, "ACGTA", 185),
        (6, "AAAAAA", 5),
        (6, "ACGTAC", 727),
        (6, "TTTTTT", 1370),
        (6, "GGGGGG", 4100),
    ],
)
def test_dnabert_ids_from_files(k, kmer, token_id):
    tok = get_tokenizer(f"dnabert-{k}")
    assert tok.token_to_id(kmer) == token_id
    assert tok.encode(kmer).tolist() == [token_id]


def test_dnabert_special_ids_and_kmer_ids():
    for name in DNABERT:
        tok = get_tokenizer(name)
        assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
        assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(tok.kmer_ids, np.arange(5, tok.vocab_size))
        assert all(len(tok.vocab[i]) == tok.k and set(tok.vocab[i]) <= set("ACGT") for i in tok.kmer_ids)


def test_dnabert_overlapping_kmers():
    tok = get_tokenizer("dnabert-3")
    assert tok.encode("ACGTA").tolist() == [16, 50, 57]  # ACG, CGT, GTA
    assert tok.encode("AC").tolist() == [] and tok.encode("AC").dtype == np.int32
    assert tok.encode("ACG").tolist() == [16]


@pytest.mark.parametrize("name", DNABERT)
@pytest.mark.parametrize("pos", (0, 1, 9, 18, 19))
def test_dnabert_unk_exactly_at_windows_covering_n(name, pos):
    tok = get_tokenizer(name)
    seq = bytearray(random_bases(np.random.default_rng(pos), 20, b"ACGT"))
    seq[pos] = ord("N")
    ids = tok.encode(bytes(seq))
    assert ids.shape == (20 - tok.k + 1,)
    expected = [i for i in range(ids.shape[0]) if i <= pos < i + tok.k]
    assert np.flatnonzero(ids == tok.unk_id).tolist() == expected


def test_dnabert_decode_specials_and_n():
    tok = get_tokenizer("dnabert-3")
    ids = [tok.cls_id, *tok.encode("ACGT").tolist(), tok.sep_id, tok.pad_id]
    assert tok.decode(ids) == "[CLS]ACGT[SEP][PAD]"
    assert tok.decode(tok.encode("ACGTNACGTAC")) == "ACGTNACGTAC"  # every other base is in a known k-mer
    assert tok.decode(tok.encode("ANA")) == "NNN"  # only k-mer is [UNK]: its bases are lost
    assert tok.decode([tok.mask_id]) == "[MASK]"
    # ids that do not overlap consistently: first k-mer, then the last base of each next one
    assert tok.decode([tok.token_to_id("AAA"), tok.token_to_id("CCC"), tok.token_to_id("GGT")]) == "AAACT"


def test_constructors_reject_unreleased_settings():
    with pytest.raises(ValueError, match="DNABERT k must be 3, 4, 5 or 6"):
        DnaBertTokenizer(k=7)
    with pytest.raises(ValueError, match="min_k must be 1"):
        DnaGptTokenizer(name="dnagpt-3to6mer", min_k=3)


# ---------------------------------------------------------------- round trips and reference


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
@pytest.mark.parametrize("length", (0, 1, 5, 6, 7, 601))
def test_round_trip(name, length):
    tok = get_tokenizer(name)
    alphabet = "NAGCT" if tok.family == "dnagpt" else "ACGT"
    seq = random_bases(np.random.default_rng(length), length, alphabet.encode()).decode()
    ids = tok.encode(seq)
    if name == "dnagpt-6mer" and length % 6:  # round trip not defined: the tail is unknown
        assert tok.decode(ids) == seq[: length - length % 6] + "<0>"
    elif tok.family == "dnabert" and length < tok.k:  # no k-mer at all
        assert ids.size == 0 and tok.decode(ids) == ""
    else:
        assert tok.decode(ids) == seq


@pytest.mark.parametrize("name", DNAGPT)
def test_dnagpt_markup_round_trip(name):
    seq = random_bases(np.random.default_rng(7), 600, b"NAGCT").decode()
    text = f"<R>{seq}<=><R><+><M>{seq[:60]}<=><M><P><P>"
    assert get_tokenizer(name).decode(get_tokenizer(name).encode(text)) == text


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
@pytest.mark.parametrize("chunk_bytes", (12, DEFAULT_CHUNK))
def test_vectorised_equals_pure_python(name, chunk_bytes, monkeypatch):
    # a tiny chunk makes short inputs cross many chunk boundaries
    monkeypatch.setattr(tokenizers, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(TOKENIZER_NAMES.index(name))
    alphabet = b"ACGTNacgtnRYKM-*\x00\xff<>"  # bases, soft-masking, IUPAC, gaps, garbage
    tok = get_tokenizer(name)
    for length in (0, 1, 2, 3, 5, 6, 7, 11, 12, 13, 35, 36, 37, 601, 2000):
        seq = random_bases(rng, length, alphabet)
        assert tok.encode(seq).tolist() == ref_encode(name, seq), (name, length)
    if chunk_bytes == DEFAULT_CHUNK:  # the shipped chunk size, on a sequence longer than one chunk
        long = random_bases(rng, DEFAULT_CHUNK + 30_001, b"ACGTNacgt")
        assert tok.encode(long).tolist() == ref_encode(name, long)


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_input_types_agree_and_encode_batch(name):
    tok = get_tokenizer(name)
    seqs = [
        random_bases(np.random.default_rng(i), n, b"ACGTNacgtX") for i, n in enumerate((0, 4, 6, 13, 600))
    ]
    for seq in seqs:
        expected = tok.encode(seq)
        for variant in (seq.decode(), bytearray(seq), memoryview(seq), np.frombuffer(seq, np.uint8)):
            np.testing.assert_array_equal(tok.encode(variant), expected)
    batch = tok.encode_batch(seqs)
    assert len(batch) == len(seqs)
    for got, seq in zip(batch, seqs, strict=True):
        np.testing.assert_array_equal(got, tok.encode(seq))
    with pytest.raises(TypeError, match="uint8"):
        tok.encode(np.zeros(12, np.int64))
    with pytest.raises(TypeError, match="str, bytes"):
        tok.encode(12)


@pytest.mark.parametrize("name", ("dnagpt-1to6mer", "dnabert-6"))
def test_decode_accepts_lists_arrays_tensors_and_rejects_bad_ids(name):
    tok = get_tokenizer(name)
    ids = tok.encode("ACGTACGTAC")
    text = tok.decode(ids)
    assert tok.decode(ids.tolist()) == tok.decode(ids.astype(np.int64)) == text
    torch = pytest.importorskip("torch")
    assert tok.decode(torch.from_numpy(ids.astype(np.int64))) == text
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size} is outside"):
        tok.decode([5, tok.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="1-D sequence of integer ids"):
        tok.decode(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="1-D sequence of integer ids"):
        tok.decode([1.0, 2.0])


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_token_to_id_unknown_is_a_clear_key_error(name):
    with pytest.raises(KeyError, match=f"'ACGTX' is not in the {name} vocabulary"):
        get_tokenizer(name).token_to_id("ACGTX")


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_save_load_round_trip(name, tmp_path):
    tok = get_tokenizer(name)
    tok.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "vocab.txt"]
    config = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert config == {
        "name": name,
        "family": tok.family,
        "k": tok.k,
        "vocab_size": tok.vocab_size,
        "format_version": 1,
    }
    assert (tmp_path / "tok" / "vocab.txt").read_text().splitlines() == tok.vocab
    assert load_tokenizer(tmp_path / "tok") is tok


def _saved(tmp_path: Path, name: str = "dnabert-4") -> Path:
    get_tokenizer(name).save(tmp_path)
    return tmp_path


def test_load_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tokenizer.json"))):
        load_tokenizer(tmp_path)
    (_saved(tmp_path) / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "vocab.txt"))):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "config_text, message",
    [
        ('{"name": "dnabert-4", "family"', "not a readable tokenizer config"),
        ("[]", "format_version must be 1"),
        (
            '{"name": "dnabert-4", "family": "dnabert", "k": 4, "vocab_size": 261, "format_version": 2}',
            "format_version must be 1",
        ),
        (
            '{"name": "dnabert-9", "family": "dnabert", "k": 9, "vocab_size": 261, "format_version": 1}',
            "name 'dnabert-9' is not one of",
        ),
        (
            '{"name": "dnabert-4", "family": "dnabert", "k": 5, "vocab_size": 261, "format_version": 1}',
            "k is 5 but dnabert-4 has 4",
        ),
    ],
)
def test_load_corrupt_config_names_the_file(tmp_path, config_text, message):
    (_saved(tmp_path) / "tokenizer.json").write_text(config_text)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(err.value)


def test_load_inconsistent_vocab_names_file_and_line(tmp_path):
    vocab = _saved(tmp_path) / "vocab.txt"
    lines = vocab.read_text().splitlines()
    vocab.write_text("\n".join([*lines[:6], lines[7], lines[6], *lines[8:]]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{vocab}: vocabulary differs from dnabert-4 (line 7")):
        load_tokenizer(tmp_path)
    vocab.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="260 lines, expected 261"):
        load_tokenizer(tmp_path)


def test_bad_dnabert_vocab_file_is_named(tmp_path):
    bad = tmp_path / "vocab_kmer3.txt"
    lines = (SHIPPED_VOCAB / "vocab_kmer3.txt").read_text().splitlines()
    bad.write_text("\n".join(lines[:-1] + [lines[-2]]))  # one k-mer twice, one missing
    with pytest.raises(ValueError, match=re.escape(f"{bad}: not a DNABERT k=3 vocabulary")):
        DnaBertTokenizer(k=3, vocab_path=bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        DnaBertTokenizer(k=3, vocab_path=tmp_path / "missing.txt")
