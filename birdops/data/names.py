"""Invented but plausible names for the synthetic corpus: species, recordists, places.

Everything is drawn from a caller's ``numpy.random.Generator``, so names are deterministic under a seed
and never collide within one corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_GENUS_HEADS = (
    "Acro",
    "Alau",
    "Anthi",
    "Caly",
    "Cardu",
    "Cettio",
    "Cisti",
    "Corvi",
    "Cyano",
    "Dendro",
    "Emberi",
    "Erytho",
    "Ficedu",
    "Fringi",
    "Garru",
    "Hippo",
    "Hylo",
    "Locu",
    "Luscin",
    "Melano",
    "Motaci",
    "Myio",
    "Oeno",
    "Ortho",
    "Pachy",
    "Parvi",
    "Phyllo",
    "Pipi",
    "Ploce",
    "Psitta",
    "Pyrrhu",
    "Regu",
    "Saxi",
    "Seri",
    "Sitti",
    "Sylvi",
    "Tacha",
    "Thamno",
    "Troglo",
    "Turdi",
    "Xeno",
    "Zono",
)
_GENUS_TAILS = ("cola", "phila", "ornis", "ptila", "cichla", "thraupis", "spiza", "lestes", "ramphus", "ura")
_EPITHETS = (
    "albiventris",
    "alpestris",
    "arboreus",
    "ater",
    "aurifrons",
    "borealis",
    "brunneus",
    "caeruleus",
    "cantans",
    "cinereus",
    "collaris",
    "crassirostris",
    "elegans",
    "flavigula",
    "fuscatus",
    "griseus",
    "hortensis",
    "leucophrys",
    "longicauda",
    "maculatus",
    "melodus",
    "minor",
    "montanus",
    "nigriceps",
    "notatus",
    "olivaceus",
    "palustris",
    "pectoralis",
    "rufescens",
    "rupestris",
    "sibilans",
    "sylvaticus",
    "tenuirostris",
    "torquatus",
    "trochilus",
    "undulatus",
    "varius",
    "virens",
    "vociferus",
    "zonatus",
)
_EN_ADJECTIVES = (
    "Ashy",
    "Bar-tailed",
    "Black-capped",
    "Buff-throated",
    "Chestnut",
    "Cinnamon",
    "Dusky",
    "Golden",
    "Grey-headed",
    "Lesser",
    "Marsh",
    "Montane",
    "Olive",
    "Pale-bellied",
    "Rufous",
    "Scaly",
    "Slaty",
    "Spotted",
    "Streaked",
    "Tawny",
    "White-browed",
    "Yellow-rumped",
    "Rusty",
    "Striped",
    "Greater",
)
_EN_NOUNS = (
    "Warbler",
    "Thrush",
    "Wren",
    "Finch",
    "Bunting",
    "Flycatcher",
    "Tanager",
    "Pipit",
    "Lark",
    "Robin",
    "Chat",
    "Babbler",
    "Vireo",
    "Sparrow",
    "Antbird",
    "Greenlet",
    "Whistler",
    "Treecreeper",
    "Tit",
)
_FIRST_NAMES = (
    "Anna",
    "Bart",
    "Carlos",
    "Dana",
    "Elif",
    "Femke",
    "Goran",
    "Hana",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Otto",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tomás",
    "Uma",
    "Viktor",
    "Wen",
    "Yusuf",
    "Zofia",
    "Alba",
    "Bram",
    "Chiara",
    "Diego",
    "Emma",
    "Felix",
    "Greta",
    "Hugo",
    "Ida",
)
_LAST_NAMES = (
    "Andersen",
    "Bakker",
    "Costa",
    "Dubois",
    "Eriksson",
    "Fischer",
    "García",
    "Hoffmann",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nowak",
    "Oliveira",
    "Petrov",
    "Quispe",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Uribe",
    "Visser",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zeller",
    "Mensah",
    "Okafor",
)
# (country, region, centre latitude, centre longitude)
REGIONS: tuple[tuple[str, str, float, float], ...] = (
    ("Netherlands", "Gelderland", 52.1, 5.9),
    ("Spain", "Extremadura", 39.3, -6.2),
    ("Sweden", "Uppland", 59.9, 17.6),
    ("Poland", "Podlaskie", 53.1, 23.2),
    ("France", "Occitanie", 43.6, 2.2),
    ("Germany", "Brandenburg", 52.4, 13.1),
    ("Brazil", "Minas Gerais", -19.9, -43.9),
    ("Peru", "Cusco", -13.5, -71.9),
    ("Colombia", "Antioquia", 6.2, -75.6),
    ("Kenya", "Rift Valley", -0.3, 36.1),
    ("India", "Kerala", 10.1, 76.7),
    ("United States", "Arizona", 32.2, -110.9),
    ("Canada", "Ontario", 45.4, -78.3),
    ("Australia", "Queensland", -17.3, 145.6),
)
PLACE_WORDS = ("Ridge", "Marsh", "Forest", "Valley", "Reserve", "Lake", "Hills", "Park", "Creek", "Heath")
DEVICES = ("Zoom H5", "Tascam DR-40X", "Sony PCM-D100", "Olympus LS-P4", "Marantz PMD661", "Song Meter Mini")
MICROPHONES = ("Telinga Pro 7", "Sennheiser ME66", "Rode NTG2", "Wildtronics parabolic", "built-in")
LICENSES = (
    "//creativecommons.org/licenses/by-nc-sa/4.0/",
    "//creativecommons.org/licenses/by-nc-nd/4.0/",
    "//creativecommons.org/licenses/by-sa/4.0/",
    "//creativecommons.org/licenses/by/4.0/",
)


@dataclass(frozen=True)
class SpeciesName:
    """Names of one invented species."""

    genus: str
    epithet: str
    english: str

    @property
    def scientific(self) -> str:
        """``"Genus epithet"``, the label."""
        return f"{self.genus} {self.epithet}"


def invent_genera(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct genus names (``"Phylloornis"``...)."""
    pool = sorted({head + tail for head in _GENUS_HEADS for tail in _GENUS_TAILS})
    if count > len(pool):
        raise ValueError(f"cannot invent more than {len(pool)} genera")
    return [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]


def invent_species(rng: np.random.Generator, genera: list[str]) -> list[SpeciesName]:
    """One species per entry of ``genera`` (a genus may repeat); scientific and English names unique."""
    epithets: dict[str, set[str]] = {}
    english: set[str] = set()
    names = []
    for genus in genera:
        taken = epithets.setdefault(genus, set())
        epithet = _draw_unique(rng, _EPITHETS, taken)
        common = _draw_english(rng, english)
        taken.add(epithet)
        english.add(common)
        names.append(SpeciesName(genus, epithet, common))
    return names


def invent_recordists(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct recordist names; a numeric suffix keeps them unique beyond the name pool."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
        if name in seen:
            name = f"{name} {len(names)}"
        seen.add(name)
        names.append(name)
    return names


def _draw_unique(rng: np.random.Generator, pool: tuple[str, ...], taken: set[str]) -> str:
    free = [word for word in pool if word not in taken]
    if free:
        return str(free[rng.integers(len(free))])
    return f"{pool[rng.integers(len(pool))]}{len(taken)}"  # pool exhausted: still unique


def _draw_english(rng: np.random.Generator, taken: set[str]) -> str:
    for _ in range(1000):
        name = f"{rng.choice(_EN_ADJECTIVES)} {rng.choice(_EN_NOUNS)}"
        if name not in taken:
            return name
    return f"{rng.choice(_EN_ADJECTIVES)} {rng.choice(_EN_NOUNS)} {len(taken)}"
