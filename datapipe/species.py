"""Species -> DNAGPT species token, as the released DNAGPT models use them (SPEC.md)."""

from __future__ import annotations

# Names users type (lower case, no spaces) -> reserved-token letter.
SPECIES_TOKENS: dict[str, str] = {
    "human": "R",
    "mouse": "S",
    "bovine": "V",
    "zebrafish": "L",
    "fruitfly": "O",
    "ecoli": "Q",
    "arabidopsis": "I",
    "celegans": "K",
    "yeast": "U",
}
# Letters the vocabulary reserves for species; W Y X Z are unassigned in the released models.
SPECIES_LETTERS = "RIKLOQSUVWYXZ"


def species_token(species: str) -> str:
    """Resolve a species name (``human``) or an explicit token (``<W>`` / ``W``) to its letter.

    An unknown species is an error unless a token is given: silently sharing a token between
    species would make the species conditioning meaningless.
    """
    key = species.strip().lower().replace(" ", "").replace("_", "").replace("-", "").replace(".", "")
    if key in SPECIES_TOKENS:
        return SPECIES_TOKENS[key]
    raw = species.strip().removeprefix("<").removesuffix(">")
    if len(raw) == 1 and raw.upper() in SPECIES_LETTERS:
        return raw.upper()
    known = ", ".join(f"{k} (<{v}>)" for k, v in SPECIES_TOKENS.items())
    raise ValueError(
        f"unknown species '{species}': known species are {known}; for another species give a "
        f"free token explicitly, e.g. '<W>' (free letters: W Y X Z)"
    )
