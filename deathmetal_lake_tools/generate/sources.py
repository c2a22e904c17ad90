"""The three full source files: rows drawn from the source's distributions, with its quirks.

`deathmetal_lake_tools.generate` describes the shapes and oddities; this module draws them.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deathmetal_lake.datasets import DATASETS_BY_NAME

BASE_ROWS = {"bands": 37_000, "albums": 45_000, "reviews": 22_000}
DUPLICATE_RATE = 0.001
ORPHAN_RATE = 0.001
INVALID_RATE = 0.0005
CHUNK_ROWS = 10_000
# Pools are sampled once per dataset and then drawn from with `choices`, which is far cheaper per
# row than composing every value from words.
_POOL_SIZE = 4096

Row = list[str | int]

# (column, bad value) pairs a rule-breaking row may carry.
_INVALID: dict[str, tuple[tuple[str, str | int], ...]] = {
    "bands": (("name", ""), ("formed_in", "1850")),
    "albums": (("year", "1850"), ("year", "unknown"), ("title", "")),
    "reviews": (("score", 105), ("score", -3), ("score", "")),
}

_COUNTRIES = {
    "United States": 20.0, "Germany": 8.5, "Sweden": 6.0, "Brazil": 5.8, "Finland": 4.5,
    "Italy": 4.2, "United Kingdom": 3.8, "Canada": 3.5, "Poland": 3.2, "France": 3.0,
    "Spain": 2.5, "Russia": 2.5, "Mexico": 2.2, "Netherlands": 2.0, "Greece": 1.8,
    "Australia": 1.7, "Chile": 1.5, "Colombia": 1.5, "Argentina": 1.4, "Norway": 1.3,
    "Portugal": 1.2, "Japan": 1.2, "Czechia": 1.1, "Indonesia": 1.0, "Belgium": 1.0,
    "Denmark": 1.0, "Ukraine": 1.0, "Austria": 0.9, "Switzerland": 0.8, "Peru": 0.8,
    "Turkey": 0.5, "Slovakia": 0.5, "Hungary": 0.5, "Romania": 0.5, "Philippines": 0.5,
    "Serbia": 0.4, "Ireland": 0.4, "New Zealand": 0.4, "Venezuela": 0.4, "Malaysia": 0.4,
    "Croatia": 0.3, "Costa Rica": 0.3, "Ecuador": 0.3, "Israel": 0.3, "Belarus": 0.3,
    "China": 0.3, "Bolivia": 0.2, "Guatemala": 0.2, "Lithuania": 0.2, "Estonia": 0.2,
    "Latvia": 0.2, "South Africa": 0.2, "Singapore": 0.2, "Thailand": 0.2, "South Korea": 0.2,
    "Slovenia": 0.2, "Iceland": 0.1, "Iran": 0.1, "Faroe Islands": 0.03, "International": 0.3,
    "N/A": 1.0,
}  # fmt: skip
_STATUSES = {"Active": 44, "Split-up": 38, "Unknown": 9, "On hold": 5, "Changed name": 4}
_GENRES = {
    "Death Metal": 30, "Brutal Death Metal": 10, "Melodic Death Metal": 8, "Death/Thrash Metal": 6,
    "Death/Black Metal": 5, "Technical Death Metal": 4, "Death/Doom Metal": 4,
    "Death Metal|Grindcore": 4, "Blackened Death Metal": 2, "Progressive Death Metal": 2,
    "Thrash Metal (early)|Death Metal (later)": 2, "Slam/Brutal Death Metal": 1.5,
    "Deathcore": 1.5, "Melodic Death/Black Metal": 1.5, "Goregrind|Death Metal": 1,
    "Death Metal (early)|Melodic Death Metal (later)": 1, "Death Metal|Crust Punk": 0.5,
    "Death Metal|Hardcore": 0.5, "Melodic Death Metal|Metalcore": 0.5,
}  # fmt: skip
_SECOND_GENRES = ("Grindcore", "Thrash Metal", "Black Metal", "Doom Metal", "Heavy Metal",
                  "Crust Punk", "Industrial", "Groove Metal", "Progressive Metal")  # fmt: skip
_THEMES = ("Death", "Gore", "Horror", "Violence", "War", "Satanism", "Anti-religion", "Darkness",
           "Occultism", "Misanthropy", "Mythology", "Society", "Politics", "Insanity", "Decay",
           "Torture", "Murder", "Suffering", "Hatred", "Evil", "Hell", "H.P. Lovecraft",
           "Science fiction", "Serial killers", "Disease", "Pain", "Chaos", "Destruction",
           "Human nature", "Personal struggles", "Apocalypse", "Nihilism", "Zombies", "Anatomy",
           "Cosmic horror", "Religion", "Pathology", "Mutilation")  # fmt: skip
_ADJECTIVES = ("Morbid", "Rotting", "Putrid", "Necrotic", "Infernal", "Brutal", "Grave",
               "Cryptic", "Dismal", "Festering", "Malevolent", "Abhorrent", "Vile", "Obscene",
               "Carnal", "Sepulchral", "Blasphemous", "Unholy", "Decrepit", "Ghastly", "Rancid",
               "Savage", "Cursed", "Eternal", "Funeral", "Bloody", "Ancient", "Torn", "Mangled",
               "Severed", "Godless", "Black", "Cold", "Hideous", "Defiled", "Dead", "Crimson",
               "Vicious", "Visceral", "Lurid")  # fmt: skip
_NOUNS = ("Angel", "Corpse", "Flesh", "Tomb", "Crypt", "Grave", "Carnage", "Torment", "Decay",
          "Abyss", "Cadaver", "Entrails", "Sepulchre", "Coffin", "Skull", "Bones", "Plague",
          "Ritual", "Altar", "Chalice", "Serpent", "Horde", "Legion", "Demise", "Cremation",
          "Rot", "Gore", "Slaughter", "Butchery", "Vomit", "Remains", "Ossuary", "Catacomb",
          "Necropolis", "Infestation", "Disgorge", "Malignancy", "Dismemberment", "Viscera",
          "Affliction", "Atrocity", "Desecration", "Pestilence", "Nebula", "Void")  # fmt: skip
_SINGLE_NAMES = ("Necrosis", "Putrefaction", "Abominator", "Cadaveric", "Morgue", "Exhumation",
                 "Deathbed", "Gutted", "Interment", "Dissection", "Embalmed", "Excoriate",
                 "Incantation", "Mortician", "Pyrexia", "Revocation", "Sinister", "Suffocate",
                 "Vomitory", "Wombbath", "Cerebral", "Entrapment", "Funebrarum", "Grotesque",
                 "Hypoxia", "Lividity", "Maceration", "Necrophagia", "Obliteration",
                 "Repulsion")  # fmt: skip
_GERUNDS = ("Devouring", "Summoning", "Exhuming", "Dissecting", "Burning", "Consuming",
            "Awakening", "Desecrating", "Mutilating", "Embracing", "Worshipping",
            "Severing")  # fmt: skip
_CITIES = ("Tampa", "Stockholm", "Gothenburg", "Leipzig", "São Paulo", "Helsinki", "Kraków",
           "Tokyo", "Montréal", "Birmingham", "Bogotá", "Milano")  # fmt: skip
_UTF8_NAMES = ("Dödsfall", "Förgjord", "Likfärd", "Blodsrit", "Ødeleggelse", "Dødsengel",
               "Sangue Podre", "Decomposição", "Carniçaria", "Nécrophage", "Mortuaire Éternel",
               "Śmiertelny Pył", "Gnijące Zwłoki", "Гниль", "Могильный Червь", "Трупный Яд",
               "死体解剖", "腐敗", "屍の王", "Kärsimys", "Verwüstung", "Höllenfäule",
               "Mâchoire Brisée", "Putrefação Cósmica")  # fmt: skip
_REVIEW_TITLES = ("Masterpiece", "Utterly forgettable", "Not bad, but not great",
                  "Heavy, fast, and evil", 'A true "classic"', "Brütal as hell",
                  "Mediocre at best", "Essential", "Crushing!", "A grower", "Overrated",
                  "Pure filth, in the best way", 'The "Reign in Blood" of death metal',
                  "Decent debut", "A step down", "Solid but unremarkable", "Death metal done right",
                  "Why does this exist?", "Riffs, riffs, riffs", "Ten out of ten",
                  "An underground gem", "Sloppy, but charming", "Flawless", "Boring",
                  'Not so "brutal" after all', "Old school worship")  # fmt: skip
_VERDICTS = ("slab of death metal", "lesson in brutality", "descent into madness",
             "exercise in tedium", "underground classic", "mess", "beast")  # fmt: skip
_PRAISE = ("crushing", "devastating", "relentless", "punishing", "suffocating", "sloppy",
           "generic", "tight", "murky", "thin", "cavernous", "monolithic", "chaotic")  # fmt: skip
_SENTENCES = (
    'The riffs on "{song}" are {p1}, {p2} and utterly relentless.',
    "This is {p1} death metal, plain and simple.",
    'The production is {p1}, which makes the drums sound like "{noun} in a tin can".',
    "Fans of the {country} scene will find plenty to enjoy here, though the second half drags.",
    "The vocals are {p1}; the guttural growls recall the best of the {year}s.",
    "Honestly, I expected more from a band with this pedigree.",
    'Tracks like "{song}" and "{song2}" show the band at their most {p1}.',
    "The bass is buried in the mix, sadly, and the guitars sound {p2}.",
    'Whoever called this "{p1}" must have heard a different album.',
    "Every song blurs into the next: blast beat, breakdown, solo, repeat.",
    "The lyrics deal with {theme} and {theme2}, as you would expect.",
    'The drummer\'s work on "{song}" alone is worth the price of admission.',
    "It is not perfect, but it is {p1}, {p2} and honest, and that counts for a lot.",
    "Decades later, it still sounds {p1}.",
    "If you only buy one {noun}-themed record this year, make it this one.",
    "The solos are {p2} and tasteful, never overstaying their welcome.",
)  # fmt: skip
_SENTENCE_COUNTS = dict(zip(range(1, 16), (4, 8, 12, 12, 11, 9, 7, 5, 4, 3, 2, 1, 1, 1, 1),
                            strict=True))  # fmt: skip
_PARAGRAPH_BREAKS = {"": 35, "\n\n": 30, "\r\n\r\n": 25, "\n": 5, "\r\n": 5}


@dataclass(frozen=True)
class _Weighted:
    """A population with cumulative weights, which `Random.choices` bisects instead of summing."""

    population: list
    cum_weights: list[float]

    @classmethod
    def of(cls, weights: dict) -> _Weighted:
        return cls(list(weights), list(itertools.accumulate(weights.values())))

    def draw(self, rng: random.Random, k: int) -> list:
        return rng.choices(self.population, cum_weights=self.cum_weights, k=k)


def _year_weights(bumps: tuple[tuple[float, float, float], ...]) -> dict[str, float]:
    """Years 1970..2024 weighted by Gaussian bumps (centre, width, height) over a low floor."""
    return {
        str(y): 0.02 + sum(h * math.exp(-(((y - c) / w) ** 2) / 2) for c, w, h in bumps)
        for y in range(1970, 2025)
    }


def _score_weights() -> _Weighted:
    """A left-skewed Beta(4, 1.22) shape with reviewers' love of round numbers and perfect 100s.

    Tuned to a mean near 78 and a median of 81, as Metal-Archives' review scores.
    """
    weights = {}
    for s in range(101):
        x = (s + 0.5) / 101
        weights[s] = x**3 * (1 - x) ** 0.22 * (2.5 if s % 10 == 0 else 1.8 if s % 5 == 0 else 1)
    total = sum(weights.values())
    weights[100] += 0.04 * total
    weights[0] += 0.003 * total
    return _Weighted.of(weights)


_FORMED_YEARS = _year_weights(((1991, 3, 1.0), (2008, 6, 1.3)))
_FORMED = _Weighted.of(_FORMED_YEARS | {"N/A": 0.03 * sum(_FORMED_YEARS.values())})
_RELEASED = _Weighted.of(_year_weights(((1993, 3, 0.8), (2011, 6, 1.5))))
_SCORES = _score_weights()
_COUNTRY = _Weighted.of(_COUNTRIES)
_STATUS = _Weighted.of(_STATUSES)
_GENRE = _Weighted.of(_GENRES)
_LENGTHS = _Weighted.of(_SENTENCE_COUNTS)
_BREAKS = _Weighted.of(_PARAGRAPH_BREAKS)


@dataclass(frozen=True)
class _Oddities:
    """0-based row indices of one file that get a deliberate oddity."""

    duplicates: frozenset[int]
    orphans: frozenset[int]
    invalid: frozenset[int]

    @classmethod
    def pick(cls, rng: random.Random, n: int) -> _Oddities:
        def sample(rate: float) -> frozenset[int]:
            return frozenset(rng.sample(range(n), min(n, max(1, round(n * rate)))))

        return cls(sample(DUPLICATE_RATE), sample(ORPHAN_RATE), sample(INVALID_RATE))


def _row_counts(scale: float) -> dict[str, int]:
    return {name: max(1, round(base * scale)) for name, base in BASE_ROWS.items()}


def _pool(rng: random.Random, make: Callable[[random.Random], str]) -> list[str]:
    return [make(rng) for _ in range(_POOL_SIZE)]


def _band_name(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.05:
        return rng.choice(_UTF8_NAMES)
    if r < 0.06:
        return f"{rng.choice(_NOUNS)}| {rng.choice(_NOUNS)} and {rng.choice(_NOUNS)}"
    if r < 0.30:
        return rng.choice(_SINGLE_NAMES)
    if r < 0.40:
        return f"{rng.choice(_NOUNS)} of {rng.choice(_NOUNS)}"
    if r < 0.45:
        return f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"


def _song(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        return f"{rng.choice(_NOUNS)} of the {rng.choice(_NOUNS)}"
    if r < 0.45:
        return f"{rng.choice(_GERUNDS)} the {rng.choice(_NOUNS)}"
    if r < 0.55:
        return rng.choice(_NOUNS)
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"


def _album_title(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.03:
        return rng.choice(_UTF8_NAMES)
    if r < 0.06:
        return f"{rng.choice(_NOUNS)}| {rng.choice(_NOUNS)} and {rng.choice(_NOUNS)}"
    if r < 0.08:
        return f"Live in {rng.choice(_CITIES)}| {rng.randint(1988, 2023)}"
    if r < 0.18:
        return f"{rng.choice(('Demo', 'Promo', 'Rehearsal'))} {rng.randint(1986, 2023)}"
    return _song(rng)


def _genre(rng: random.Random) -> str:
    genre = _GENRE.draw(rng, 1)[0]
    if rng.random() < 0.2:
        genre = f"{genre}|{rng.choice(_SECOND_GENRES)}"
    return genre


def _theme(rng: random.Random) -> str:
    if rng.random() < 0.08:
        return "N/A"
    return "|".join(rng.sample(_THEMES, rng.choice((1, 2, 2, 3, 3, 3, 4))))


def _review_title(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(_REVIEW_TITLES)
    return f"A {rng.choice(_PRAISE)} {rng.choice(_VERDICTS)}"


def _sentence(rng: random.Random) -> str:
    return rng.choice(_SENTENCES).format(
        song=_song(rng),
        song2=_song(rng),
        p1=rng.choice(_PRAISE),
        p2=rng.choice(_PRAISE),
        noun=rng.choice(_NOUNS).lower(),
        country=_COUNTRY.draw(rng, 1)[0],
        year=rng.choice((1980, 1990, 2000)),
        theme=rng.choice(_THEMES).lower(),
        theme2=rng.choice(_THEMES).lower(),
    )


def _active(rng: random.Random, status: str, formed: str) -> str:
    """Years active as Metal-Archives prints them, consistent with status and formed_in."""
    start = int(formed) if formed != "N/A" else rng.randint(1985, 2015)
    shown = formed if formed != "N/A" else "?"
    end = rng.randint(min(start + 1, 2024), 2024)
    r = rng.random()
    if status == "Active":
        if r < 0.10:
            return f"{shown}-{end}|{rng.randint(end, 2024)}-present"
        if r < 0.14:
            return f"{shown}-{end} (as {rng.choice(_SINGLE_NAMES)})|{end}-present"
        return "N/A" if r < 0.16 else f"{shown}-present"
    if status in ("Split-up", "Changed name"):
        if r < 0.08:
            return f"{shown}-{end}|{rng.randint(end, 2024)}-{rng.randint(end, 2024)}"
        if r < 0.15:
            return f"?-{end}"
        return "N/A" if r < 0.20 else f"{shown}-{end}"
    if status == "On hold":
        return f"{shown}-?" if r < 0.5 else f"{shown}-{end}"
    return f"{shown}-?" if r < 0.5 else "N/A" if r < 0.8 else f"?-{end}"


def _bands(rng: random.Random, counts: dict[str, int]) -> Iterator[list[Row]]:
    n = counts["bands"]
    odd = _Oddities.pick(rng, n)
    names, genres, themes = (_pool(rng, f) for f in (_band_name, _genre, _theme))
    choices = rng.choices
    for start in range(0, n, CHUNK_ROWS):
        k = min(CHUNK_ROWS, n - start)
        columns = zip(
            choices(names, k=k),
            _COUNTRY.draw(rng, k),
            _STATUS.draw(rng, k),
            _FORMED.draw(rng, k),
            choices(genres, k=k),
            choices(themes, k=k),
            strict=True,
        )
        rows: list[Row] = []
        for i, (name, country, status, formed_in, genre, theme) in enumerate(columns, start):
            active = _active(rng, status, formed_in)
            row: Row = [i + 1, name, country, status, formed_in, genre, theme, active]
            _emit(rows, row, i, odd, rng, "bands")
        yield rows


def _albums(rng: random.Random, counts: dict[str, int]) -> Iterator[list[Row]]:
    n, n_bands = counts["albums"], counts["bands"]
    odd = _Oddities.pick(rng, n)
    titles = _pool(rng, _album_title)
    choices, rand = rng.choices, rng.random
    for start in range(0, n, CHUNK_ROWS):
        k = min(CHUNK_ROWS, n - start)
        rows: list[Row] = []
        columns = zip(choices(titles, k=k), _RELEASED.draw(rng, k), strict=True)
        for i, (title, year) in enumerate(columns, start):
            band = 1 + int(rand() * n_bands)
            if i in odd.orphans:
                band += n_bands
            _emit(rows, [i + 1, band, title, year], i, odd, rng, "albums")
        yield rows


def _reviews(rng: random.Random, counts: dict[str, int]) -> Iterator[list[Row]]:
    n, n_albums = counts["reviews"], counts["albums"]
    odd = _Oddities.pick(rng, n)
    titles, sentences = _pool(rng, _review_title), _pool(rng, _sentence)
    choices, rand = rng.choices, rng.random
    for start in range(0, n, CHUNK_ROWS):
        k = min(CHUNK_ROWS, n - start)
        rows: list[Row] = []
        columns = zip(
            choices(titles, k=k),
            _SCORES.draw(rng, k),
            _LENGTHS.draw(rng, k),
            _BREAKS.draw(rng, k),
            strict=True,
        )
        for i, (title, score, length, brk) in enumerate(columns, start):
            # Early albums (low ids) collect most reviews, as classics do.
            album = 1 + int(n_albums * rand() ** 1.5)
            if i in odd.orphans:
                album += n_albums
            content = _content(choices(sentences, k=length), brk)
            _emit(rows, [i + 1, album, title, score, content], i, odd, rng, "reviews")
        yield rows


def _content(sentences: list[str], paragraph_break: str) -> str:
    """A review's text: its sentences in paragraphs of three, or one paragraph if no break."""
    if not paragraph_break:
        return " ".join(sentences)
    return paragraph_break.join(" ".join(sentences[j : j + 3]) for j in range(0, len(sentences), 3))


def _emit(rows: list[Row], row: Row, i: int, odd: _Oddities, rng: random.Random, name: str) -> None:
    """Append a row, breaking a rule or doubling it when its index was picked for that."""
    if i in odd.invalid:
        column, value = rng.choice(_INVALID[name])
        row[DATASETS_BY_NAME[name].columns.index(column)] = value
    rows.append(row)
    if i in odd.duplicates:
        rows.append(row)


_GENERATORS: dict[str, Callable[[random.Random, dict[str, int]], Iterator[list[Row]]]] = {
    "albums": _albums,
    "bands": _bands,
    "reviews": _reviews,
}


def generate(out_dir: Path, scale: float, seed: int) -> dict[str, int]:
    """Write the three source CSVs into `out_dir`; returns data rows written per dataset."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = _row_counts(scale)
    written: dict[str, int] = {}
    for name, rows_of in _GENERATORS.items():
        # One generator per file, so each file depends only on the seed and scale.
        rng = random.Random(f"{seed}/{name}")
        path = out_dir / f"{name}.csv"
        partial = path.with_name(f"{path.name}.partial")
        written[name] = 0
        with partial.open("w", encoding="utf-8", newline="", buffering=1 << 20) as f:
            writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writerow(DATASETS_BY_NAME[name].columns)
            for chunk in rows_of(rng, counts):
                writer.writerows(chunk)
                written[name] += len(chunk)
        os.replace(partial, path)
    return written
