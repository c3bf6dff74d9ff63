"""`dnafm motifs`: motif discovery from a `dnafm attention` folder, matched against JASPAR, as files.

Output (written atomically into --out):

    motifs.tsv / motifs.md / motifs.html   one row per motif: instances, p and q of its key candidate,
                                           the best JASPAR matches with their TOMTOM q-values, the logo
    motifs.meme                            the position probability matrices, MEME format
    logos/motif_NN.png                     information-content logo, the best JASPAR match aligned below
    instances.tsv                          every window: motif, sequence id, start, window bases
    candidates.tsv                         every high-attention region with its enrichment test
    motifs_config.json                     the resolved config, the scores folder and the data file
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datapipe.common.config import Config, check
from datapipe.common.errors import InputError, MissingError, UsageError
from eval.interpret.jaspar import Match
from eval.interpret.motifs import BASES, Motif, MotifConfig, background, find_motifs, write_meme

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class JasparConfig(Config):
    enabled: bool = True
    """Match the motifs against JASPAR (the offline copy shipped by pyjaspar)."""
    release: str = "JASPAR2026"
    collection: str = "CORE"
    tax_group: str = "vertebrates"
    top: int = 5
    """Matches reported per motif (the lowest TOMTOM p-values)."""
    min_ic: float = 0.5
    """Flanking query columns below this information content (bits) are left out of the comparison."""

    def __post_init__(self) -> None:
        check(self.top >= 1, "top", "must be >= 1")
        check(0.0 <= self.min_ic < 2.0, "min_ic", "must be in [0, 2) bits")


@dataclass(kw_only=True)
class MotifsRunConfig(Config):
    motifs: MotifConfig = field(default_factory=MotifConfig)
    jaspar: JasparConfig = field(default_factory=JasparConfig)


def load_scores(scores_dir: Path, data) -> list[np.ndarray]:
    """Per-sequence scores from a `dnafm attention` folder, checked against the sequences of ``data``."""
    from eval.interpret.attention import META, SCORES

    for name in (META, SCORES):
        if not (scores_dir / name).is_file():
            raise MissingError(
                f"{scores_dir / name}: not found; --scores takes the --out folder of `dnafm attention`"
            )
    meta = json.loads((scores_dir / META).read_text())
    if meta["data_sha256"] != data.sha256():
        raise InputError(
            data.path,
            None,
            f"these sequences are not the ones the scores in {scores_dir} were computed from "
            f"({meta['data']}); pass the same --data file to `dnafm attention` and `dnafm motifs`",
        )
    padded = np.load(scores_dir / SCORES, allow_pickle=False)
    return [padded[i, : len(s)] for i, s in enumerate(data.sequences)]


def run_motifs(
    cfg: MotifsRunConfig, *, scores_dir: Path, data_path: Path, out_dir: Path
) -> list[dict[str, Any]]:
    from datapipe.common.files import atomic_dir
    from eval.interpret.inputs import read_sequences

    data = read_sequences(data_path)
    if data.labels is None:
        raise InputError(
            data_path,
            None,
            "no labels: motif discovery compares positives with negatives (add a label column)",
        )
    scores = load_scores(scores_dir, data)
    mc = cfg.motifs
    is_pos = data.labels == mc.positive_class
    if is_pos.all() or not is_pos.any():
        raise UsageError(
            f"{data_path}: {int(is_pos.sum())} of {len(data)} sequences are class {mc.positive_class}; "
            "motifs need both positives and negatives (--set motifs.positive_class=C picks the class)"
        )
    pos = np.flatnonzero(is_pos)
    pos_seqs = [data.sequences[i] for i in pos]
    neg_seqs = [data.sequences[i] for i in np.flatnonzero(~is_pos)]
    motifs, cands = find_motifs(pos_seqs, [scores[i] for i in pos], neg_seqs, mc)
    matches: list[list[Match]] = [[] for _ in motifs]
    if cfg.jaspar.enabled and motifs:
        from eval.interpret.jaspar import load_jaspar, tomtom_matches

        j = cfg.jaspar
        targets = load_jaspar(j.release, j.collection, j.tax_group)
        matches = tomtom_matches([m.pwm for m in motifs], targets, top=j.top, min_ic=j.min_ic)
    names = [f"motif_{i + 1:02d}" for i in range(len(motifs))]
    rows = [_row(n, m, ms) for n, m, ms in zip(names, motifs, matches, strict=True)]
    with atomic_dir(out_dir) as tmp:
        (tmp / "logos").mkdir()
        for name, m, ms, row in zip(names, motifs, matches, rows, strict=True):
            row["logo"] = f"logos/{name}.png"
            _logo(m, ms, name, tmp / row["logo"])
        (tmp / "motifs.meme").write_text(write_meme(motifs, names, background(pos_seqs)) + "\n")
        _write_tsv(tmp / "motifs.tsv", rows)
        (tmp / "motifs.md").write_text(_markdown(rows))
        (tmp / "motifs.html").write_text(_html(rows, cfg, data_path, scores_dir))
        _write_tsv(tmp / "instances.tsv", _instances(names, motifs, pos, data))
        _write_tsv(tmp / "candidates.tsv", [_cand_row(c) for c in cands])
        record = {
            "config": cfg.to_dict(),
            "scores": str(scores_dir),
            "data": str(data_path),
            "motifs": len(rows),
        }
        (tmp / "motifs_config.json").write_text(json.dumps(record, indent=2) + "\n")
    return rows


def consensus(pwm: np.ndarray, min_ic: float = 0.5) -> str:
    """The most frequent base of each column; lower case where the column carries < ``min_ic`` bits."""
    p = np.clip(pwm, 1e-9, 1.0)
    ic = 2.0 + (p * np.log2(p)).sum(1)
    return "".join(
        BASES[j] if c >= min_ic else BASES[j].lower() for j, c in zip(pwm.argmax(1), ic, strict=True)
    )


def _row(name: str, m: Motif, ms: list[Match]) -> dict[str, Any]:
    best = ms[0] if ms else None
    return {
        "motif": name,
        "key": m.key.seq,
        "consensus": consensus(m.pwm),
        "instances": len(m.instances),
        "merged": len(m.members),
        "key_pos_with": m.key.n_pos,
        "key_all_with": m.key.n_all,
        "p": f"{m.key.p:.3g}",
        "q": f"{m.key.q:.3g}",
        "best_match": f"{best.target.matrix_id} {best.target.name}" if best else "",
        "best_family": best.target.family if best else "",
        "best_q": f"{best.q:.3g}" if best else "",
        "matches": "; ".join(
            f"{x.target.matrix_id} {x.target.name} ({x.target.family}) p={x.p:.2g} q={x.q:.2g}" for x in ms
        ),
    }


def _logo(m: Motif, ms: list[Match], name: str, path: Path) -> None:
    from eval.interpret.plots import logo

    title = f"{name}: {len(m.instances)} windows, key {m.key.seq} (q={m.key.q:.2g})"
    if ms:
        best = ms[0]
        strand = "-" if best.rc else "+"
        sub = (
            f"best JASPAR match {best.target.matrix_id} {best.target.name} ({strand} strand), q={best.q:.2g}"
        )
        logo(m.pwm, path, title=title, match=best.aligned(len(m.pwm)), match_title=sub)
    else:
        logo(m.pwm, path, title=title)


def _instances(names: list[str], motifs: list[Motif], pos: np.ndarray, data) -> list[dict[str, Any]]:
    return [
        {"motif": n, "id": data.ids[pos[i]], "start": s, "end": s + len(w), "window": w}
        for n, m in zip(names, motifs, strict=True)
        for (i, s), w in zip(m.instances, m.windows, strict=True)
    ]


def _cand_row(c) -> dict[str, Any]:
    return {
        "region": c.seq,
        "found_in": len(c.hits),
        "pos_with": c.n_pos,
        "all_with": c.n_all,
        "p": f"{c.p:.4g}",
        "q": f"{c.q:.4g}",
    }


def _write_tsv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    path.write_text(buf.getvalue())


_MD_COLUMNS = ("motif", "consensus", "instances", "p", "q", "matches", "logo")


def _markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return (
            "No motif passed the filters (see candidates.tsv for every high-attention region and its test).\n"
        )
    lines = ["| " + " | ".join(_MD_COLUMNS) + " |", "|" + "---|" * len(_MD_COLUMNS)]
    for r in rows:
        cells = [*(str(r[c]) for c in _MD_COLUMNS[:-1]), f"![{r['motif']}]({r['logo']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html(rows: list[dict[str, Any]], cfg: MotifsRunConfig, data_path: Path, scores_dir: Path) -> str:
    e = html.escape
    head = "".join(
        f"<th>{e(c)}</th>"
        for c in ("motif", "consensus", "windows", "key p", "key q", "JASPAR matches", "logo")
    )
    body = []
    for r in rows:
        matches = (
            "<br>".join(e(m) for m in r["matches"].split("; ")) if r["matches"] else "(JASPAR matching off)"
        )
        body.append(
            f"<tr><td>{e(r['motif'])}</td><td><code>{e(r['consensus'])}</code><br><small>key {e(r['key'])}, "
            f"{r['merged']} merged</small></td><td>{r['instances']}</td><td>{e(r['p'])}</td><td>{e(r['q'])}</td>"
            f'<td><small>{matches}</small></td><td><img src="{e(r["logo"])}" height="150"></td></tr>'
        )
    empty = (
        "" if rows else "<p>No motif passed the filters; candidates.tsv lists every region and its test.</p>"
    )
    j = cfg.jaspar
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>dnafm motifs</title><style>'
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}</style></head><body>"
        f"<h2>Motifs from attention</h2><p>scores: {e(str(scores_dir))}<br>sequences: {e(str(data_path))}<br>"
        f"JASPAR {e(j.release)} {e(j.collection)} {e(j.tax_group)}, TOMTOM (memelite); q-values over all targets"
        f" of a motif</p>{empty}<table><tr>{head}</tr>{''.join(body)}</table></body></html>\n"
    )
