"""Species -> DNAGPT species token, as the released DNAGPT models use them (the species letters of the token
language in the DNAGPT model code released with arXiv:2307.05628)."""

from __future__ import annotations

from datapipe.common.errors import MissingError, UsageError

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
# The species of a DNABERT input given none: DNABERT samples carry no species token, so it is metadata only.
UNSPECIFIED = "unspecified"
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
    raise UsageError(
        f"unknown species '{species}': known species are {known}; for another species give a "
        f"free token explicitly, e.g. '<W>' (free letters: W Y X Z)"
    )


def read_species_table(path: str) -> dict[str, list[str]]:
    """A species table: ``NAME SPECIES [TOKEN]`` per line (whitespace-separated, '#' comments).

    NAME is an input file (its path, file name or assembly name, e.g. ``GRCh38`` for
    ``GRCh38.fa.gz``) or a MAF source prefix (``hg19`` of ``hg19.chr22``). SPECIES is a DNAGPT
    species name or any name with an explicit TOKEN (``chimp <W>``). Returns NAME -> [SPECIES, LETTER].
    """
    import fsspec

    table: dict[str, list[str]] = {}
    try:
        with fsspec.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise MissingError(f"{path}: no such species table; --species-table takes a text file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; --species-table takes a text file") from None
    for number, data in enumerate(raw.splitlines(), 1):
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"{path}:{number}: not UTF-8 text ({err}); is this a binary file?") from None
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise UsageError(
                f"{path}:{number}: expected 'NAME SPECIES [TOKEN]' (2 or 3 fields), got {len(fields)}"
            )
        name, species = fields[0], fields[1]
        if name in table:
            raise UsageError(f"{path}:{number}: {name!r} is listed twice")
        try:
            letter = species_token(fields[2] if len(fields) == 3 else species)
        except ValueError as err:
            raise UsageError(f"{path}:{number}: {err}") from None
        table[name] = [species, letter]
    if not table:
        raise UsageError(f"{path}: the species table is empty; add lines 'NAME SPECIES [TOKEN]'")
    return table
