"""Population: the agents of a simulation, made from templates.

A :class:`PopulationSpec` says how many agents there are, or which file of profiles
describes them, and how to write each one's persona and human blocks.
:func:`build_population` fills the templates from a seeded generator (names, age,
occupation, trait, town and any extra categorical fields) or from the profile rows.
The same spec and seed always give the same population.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from letta_ray.errors import InvalidInputError

DEFAULT_PERSONA = (
    "I am {name}, a {age}-year-old {occupation} living in {town}. People say I am {trait}. "
    "I talk with the people I know, share news and remember what they tell me."
)
DEFAULT_HUMAN = "The people who message me are my neighbours in {town}. I know little about them yet."

# The generator's word lists. They are part of the project, not of a library, so a seed
# names the same people on every install. 160 x 160 names give 25,600 distinct pairs;
# a larger population repeats pairs with a number after them ("Ada Moreau 2").
FIRST_NAMES = """
Abel Adele Agnes Akira Alma Amos Anya Arlo Bea Cyrus Della
Ada Aiden Aisha Alan Alba Alice Amara Amir Ana Anders Andre Anika Anton Arjun Astrid Aurora Ayla Beatriz Ben Bianca
Boris Bruno Camila Carlos Carmen Chen Chiara Chloe Clara Colin Dalia Daniel Dara Diego Dmitri Elena Eli Elif Elsa
Emeka Emil Emma Enzo Erik Esme Eva Farah Felix Fiona Freya Gabriel Gemma Grace Hana Hannah Hassan Hugo Ian Ibrahim
Ida Ines Ingrid Isaac Isla Ivan Jade Jamal Jana Javier Jonas Jorge Julia Kai Kamal Kenji Kiara Kofi Lara Laszlo Leah
Leo Lena Liam Lila Lina Luca Lucia Luis Maya Mateo Mei Mila Milan Mina Miro Nadia Naomi Nia Nico Nina Noah Nora Olga
Omar Oscar Paolo Pavel Pia Priya Rafael Rania Ravi Rosa Ruby Rui Sam Sara Selin Sena Sofia Sven Tariq Tess Theo Tomas
Uma Vera Victor Vida Wen Yara Yusuf Zara Zoe Ali Beth Cole Dina Ezra Gia Hal Iris Jon Kira Lars Mara Ned Otto Rhea
""".split()
LAST_NAMES = """
Alvarez Bishop Crane Dunn Engel Finch Glass Holm Ikeda
Abbott Adeyemi Ahmed Almeida Andersen Aoki Bakker Baptiste Barros Bauer Becker Bell Berg Bianchi Blake Bose Brandt
Brooks Castro Chavez Chen Cohen Costa Cruz Dahl Das Delgado Dubois Duarte Eriksen Evans Farouk Ferreira Fischer Fontaine
Garcia Gill Gomez Grant Gray Greco Haas Hale Hansen Hayes Herrera Horvat Hughes Ibsen Ito Jensen Jovanovic Kane Kaur
Keller Khan Kim Koch Kowalski Kraus Lang Larsen Laurent Lee Lima Lopez Lund Maier Marin Meyer Mendes Mills Molina Moreau
Moreno Muller Murphy Nagy Nakamura Navarro Novak Nunez Obi Okafor Olsen Ortiz Owens Park Patel Perez Petrov Pham Quinn
Rahman Ramos Reyes Rossi Ruiz Russo Saito Santos Sato Schmidt Schulz Silva Singh Sokolov Stone Suzuki Tan Tanaka Torres
Tran Varga Vogel Walsh Weber Wong Wu Yamada Yang Young Zhang Ziegler Adler Baker Carter Dixon Ellis Foster Gordon Hart
Irwin Jordan Knight Lowe Mason Nash Oakley Price Reed Shaw Turner Vance Webb Wolfe Yates Acosta Bravo Conti Esposito
""".split()
OCCUPATIONS = """
baker teacher nurse farmer carpenter librarian mechanic pharmacist electrician fisher painter postal-worker doctor
chef barista student retiree shopkeeper journalist engineer programmer musician plumber accountant lawyer gardener
firefighter police-officer bus-driver tailor potter veterinarian dentist architect florist butcher brewer photographer
translator social-worker historian priest midwife beekeeper blacksmith bookseller
""".split()
TRAITS = """
curious cautious cheerful grumpy generous gossipy shy talkative skeptical optimistic pessimistic stubborn kind
ambitious patient impatient witty serious nostalgic adventurous practical dreamy loyal suspicious helpful proud humble
anxious calm meticulous forgetful
""".split()
TOWNS = """
Millbrook Ashford Riverton Oakdale Fairhaven Brightwater Stonebridge Maplewood Elmstead Willowby Hollowmere Kingsport
Greenfield Harborview Lakeside Pinecrest
""".split()
MIN_AGE, MAX_AGE = 18, 85


@dataclass(frozen=True, slots=True)
class Profile:
    """One agent of a population: its name, template fields and rendered blocks."""

    index: int
    name: str
    fields: dict[str, str]
    persona: str
    human: str


class PopulationSpec(BaseModel):
    """How many agents, or which profiles file, and the templates of their blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int | None = Field(default=None, ge=1, description="agents to make; with profiles, the first `count` rows")
    profiles: str | None = Field(
        default=None, description="a CSV or Parquet file, one row per agent; columns become template fields"
    )
    persona: str = Field(default=DEFAULT_PERSONA, description="the persona block, a str.format template")
    human: str = Field(default=DEFAULT_HUMAN, description="the human block, a str.format template")
    fields: dict[str, list[str]] = Field(
        default_factory=dict, description="extra fields, each drawn uniformly from its choices"
    )
    name_prefix: str | None = Field(
        default=None, description="name agents `<prefix><index>` (e.g. agent-7) instead of generated person names"
    )

    @model_validator(mode="after")
    def _source(self) -> PopulationSpec:
        if self.count is None and self.profiles is None:
            raise ValueError("a population needs count or profiles")
        empty = sorted(key for key, choices in self.fields.items() if not choices)
        if empty:
            raise ValueError(f"fields need at least one choice each; empty: {', '.join(empty)}")
        for label, template in (("persona", self.persona), ("human", self.human)):
            try:
                template_fields(template)
            except ValueError as exc:
                raise ValueError(f"{label} template is not a valid format string: {exc}") from exc
        return self


def build_population(spec: PopulationSpec, seed: int) -> list[Profile]:
    """The agents of ``spec``: the same spec and seed give the same list, names all distinct."""
    rng = random.Random(seed)
    if spec.profiles is None:
        rows: list[dict[str, str]] = [{} for _ in range(spec.count or 0)]
    else:
        rows = _profile_rows(Path(spec.profiles), spec.count)
    names = _names(rows, spec.name_prefix, rng)
    records = []
    for i, (row, name) in enumerate(zip(rows, names, strict=True)):
        fields = {"index": str(i), "name": name}
        if spec.profiles is None:
            if spec.name_prefix is None:
                first, _, last = name.partition(" ")
                fields |= {"first_name": first, "last_name": last}
            fields |= {
                "age": str(rng.randint(MIN_AGE, MAX_AGE)),
                "occupation": rng.choice(OCCUPATIONS).replace("-", " "),
                "trait": rng.choice(TRAITS),
                "town": rng.choice(TOWNS),
            }
        fields |= {key: rng.choice(choices) for key, choices in spec.fields.items()}
        fields |= row
        fields["name"] = name
        records.append(fields)
    if records:
        _check_templates(spec, records[0].keys())
    return [
        Profile(
            index=i,
            name=fields["name"],
            fields=fields,
            persona=_render("persona", spec.persona, fields),
            human=_render("human", spec.human, fields),
        )
        for i, fields in enumerate(records)
    ]


def template_fields(template: str) -> set[str]:
    """The field names a str.format template uses (``{town}``, ``{name.upper}`` -> town, name)."""
    found = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(f"use named fields like {{name}}, not {{{field}}}")
        found.add(root)
    return found


def read_table(path: Path) -> pa.Table:
    """A CSV or Parquet file (by its suffix) as a table of strings; nulls become ""."""
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Every column as text, so a value like "007" keeps its zeros.
        header = pacsv.open_csv(path).schema.names
        table = pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()))
        )
    elif suffix in (".parquet", ".pq"):
        table = pq.read_table(path)
    else:
        raise InvalidInputError(f"{path}: expected a .csv or .parquet file")
    columns = [pc.fill_null(pc.cast(column, pa.string()), "") for column in table.columns]
    return pa.table(columns, names=[name.strip() for name in table.column_names])


# --------------------------------------------------------------------------- helpers


def _check_templates(spec: PopulationSpec, available: Any) -> None:
    known = sorted(available)
    for label, template in (("persona", spec.persona), ("human", spec.human)):
        missing = sorted(template_fields(template) - set(known))
        if missing:
            raise InvalidInputError(
                f"the {label} template uses {', '.join('{' + m + '}' for m in missing)}, "
                f"which no agent has; available fields: {', '.join(known)}"
            )


def _render(label: str, template: str, fields: dict[str, str]) -> str:
    try:
        return template.format(**fields)
    except (ValueError, IndexError, AttributeError, KeyError) as exc:
        raise InvalidInputError(f"the {label} template fails for agent {fields['name']!r}: {exc}") from exc


def _profile_rows(path: Path, count: int | None) -> list[dict[str, str]]:
    table = read_table(path)
    if count is not None:
        table = table.slice(0, count)
    if table.num_rows == 0:
        raise InvalidInputError(f"profiles file {path} has no rows")
    if count is not None and table.num_rows < count:
        raise InvalidInputError(f"count is {count} but profiles file {path} has only {table.num_rows} rows")
    if "name" in table.column_names:
        named = [name for name in table.column("name").to_pylist() if name]
        seen: set[str] = set()
        duplicates = sorted({name for name in named if name in seen or seen.add(name)})
        if duplicates:
            raise InvalidInputError(
                f"profiles file {path} names several agents the same: {', '.join(map(repr, duplicates[:10]))}"
            )
    return table.to_pylist()


def _names(rows: list[dict[str, str]], prefix: str | None, rng: random.Random) -> list[str]:
    """A distinct name per row: the row's own ``name``, else a generated one no row uses."""
    given = {row["name"] for row in rows if row.get("name")}
    if prefix is not None:
        candidates = (f"{prefix}{i}" for i in range(len(rows) + len(given)))
    else:
        candidates = _person_names(len(rows) + len(given), rng)
    fresh = (name for name in candidates if name not in given)
    return [row["name"] if row.get("name") else next(fresh) for row in rows]


def _person_names(n: int, rng: random.Random) -> list[str]:
    pairs = len(FIRST_NAMES) * len(LAST_NAMES)
    names: list[str] = []
    lap = 0
    while len(names) < n:
        lap += 1
        suffix = "" if lap == 1 else f" {lap}"
        for k in rng.sample(range(pairs), min(pairs, n - len(names))):
            first, last = divmod(k, len(LAST_NAMES))
            names.append(f"{FIRST_NAMES[first]} {LAST_NAMES[last]}{suffix}")
    return names
