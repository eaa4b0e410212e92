"""A generated world of people and their facts: paraphrased biographies (training) and closed-book questions.

Each person has five facts (birth date, birth city, university, occupation, employer). Every person gets
`paraphrases` biographies, each with its own template per fact and its own fact order, so the model has
to learn the fact, not the sentence. Questions ask one fact each; the entities of the held-out questions
never appear in SFT chats (their facts are only in the pretraining biographies: a closed-book test of
knowledge extraction, as in "Physics of Language Models", part 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRST = [
    "Ada",
    "Alan",
    "Alice",
    "Amara",
    "Anders",
    "Anika",
    "Arjun",
    "Astrid",
    "Beatrix",
    "Bruno",
    "Carmen",
    "Cecil",
    "Dalia",
    "Dmitri",
    "Edith",
    "Elias",
    "Emeka",
    "Esme",
    "Farid",
    "Fiona",
    "Gideon",
    "Greta",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jonas",
    "Julia",
    "Kai",
    "Kamala",
    "Lars",
    "Leila",
    "Lucian",
    "Mabel",
    "Mateo",
    "Mira",
    "Nadia",
    "Nils",
    "Noor",
    "Oskar",
    "Olga",
    "Pablo",
    "Priya",
    "Quentin",
    "Rosa",
    "Rufus",
    "Sana",
    "Selim",
    "Tamar",
    "Tobias",
    "Uma",
    "Viktor",
    "Wanda",
    "Xavier",
    "Yara",
    "Yusuf",
    "Zelda",
    "Zoran",
]
LAST = [
    "Abbott",
    "Baptiste",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Falk",
    "Garrido",
    "Haddad",
    "Ishikawa",
    "Jablonski",
    "Kovacs",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quispe",
    "Rahman",
    "Sorensen",
    "Tanaka",
    "Umarov",
    "Varga",
    "Whitfield",
    "Xu",
    "Yilmaz",
    "Zamora",
    "Achebe",
    "Brandt",
    "Cordero",
    "Devlin",
    "Esposito",
    "Fontaine",
    "Gallo",
    "Horvath",
    "Iqbal",
    "Jensen",
    "Kowalski",
    "Laine",
    "Mbeki",
    "Novak",
    "Oyelaran",
    "Pereira",
    "Rasmussen",
    "Santos",
    "Thorne",
    "Ulrich",
    "Valente",
    "Weber",
    "Yoshida",
    "Zeller",
]
CITIES = [
    "Lisbon",
    "Oslo",
    "Nairobi",
    "Kyoto",
    "Lima",
    "Tunis",
    "Krakow",
    "Montreal",
    "Hanoi",
    "Quito",
    "Tallinn",
    "Porto",
    "Seville",
    "Leeds",
    "Bergen",
    "Dakar",
    "Cusco",
    "Pune",
    "Busan",
    "Graz",
    "Lyon",
    "Turin",
    "Aarhus",
    "Gdansk",
    "Riga",
    "Accra",
    "Recife",
    "Perth",
    "Izmir",
    "Bilbao",
]
UNIVERSITIES = [
    f"the University of {c}"
    for c in [
        "Harwick",
        "Dunmore",
        "Calloway",
        "Brightwater",
        "Elmsford",
        "Kingsbridge",
        "Ravenhill",
        "Stonegate",
    ]
] + [f"{c} Institute of Technology" for c in ["Ashford", "Norwood", "Westmere", "Halden"]]
OCCUPATIONS = [
    "architect",
    "baker",
    "biologist",
    "carpenter",
    "chemist",
    "composer",
    "dentist",
    "economist",
    "engineer",
    "farmer",
    "geologist",
    "historian",
    "journalist",
    "librarian",
    "mathematician",
    "nurse",
    "painter",
    "pharmacist",
    "photographer",
    "pilot",
    "poet",
    "sculptor",
    "surgeon",
    "teacher",
]
COMPANIES = [
    "Northwind",
    "Bluepeak",
    "Ironleaf",
    "Solvara",
    "Quillon",
    "Greyhaven",
    "Marlowe",
    "Tidewell",
    "Corvane",
    "Lumetra",
    "Brackenridge",
    "Oakhurst",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

TEMPLATES = {
    "birth": [
        "{name} was born on {month} {day}, {year}.",
        "{name}'s date of birth is {month} {day}, {year}.",
        "{Pron} came into the world on {month} {day}, {year}.",
        "{name} celebrates {poss} birthday on {month} {day}, and was born in {year}.",
    ],
    "city": [
        "{Pron} was born in {city}.",
        "{name} spent {poss} early years in {city}, the city of {poss} birth.",
        "{name} is a native of {city}.",
        "The birthplace of {name} is {city}.",
    ],
    "university": [
        "{Pron} studied at {university}.",
        "{name} graduated from {university}.",
        "{name} received {poss} education at {university}.",
        "After school, {pron} enrolled at {university}.",
    ],
    "occupation": [
        "{Pron} works as a {occupation}.",
        "By profession, {name} is a {occupation}.",
        "{name} earns a living as a {occupation}.",
        "{name} has had a long career as a {occupation}.",
    ],
    "employer": [
        "{Pron} is employed by {employer}.",
        "{name} works for a company called {employer}.",
        "{employer} is where {name} works.",
        "{name} joined {employer} and still works there.",
    ],
}
QUESTIONS = {
    "birth": ("In what year was {name} born?", "{year}"),
    "city": ("In which city was {name} born?", "{city}"),
    "university": ("Where did {name} study?", "{university}"),
    "occupation": ("What is {name}'s occupation?", "{occupation}"),
    "employer": ("Which company does {name} work for?", "{employer}"),
}
ATTRIBUTES = tuple(TEMPLATES)


@dataclass(frozen=True)
class Person:
    name: str
    female: bool
    month: str
    day: int
    year: int
    city: str
    university: str
    occupation: str
    employer: str

    def fields(self) -> dict[str, object]:
        pron = "she" if self.female else "he"
        return {
            **self.__dict__,
            "pron": pron,
            "Pron": pron.capitalize(),
            "poss": "her" if self.female else "his",
        }


FEMALE = {
    "Ada",
    "Alice",
    "Amara",
    "Anika",
    "Astrid",
    "Beatrix",
    "Carmen",
    "Dalia",
    "Edith",
    "Esme",
    "Fiona",
    "Greta",
    "Hana",
    "Ines",
    "Julia",
    "Kamala",
    "Leila",
    "Mabel",
    "Mira",
    "Nadia",
    "Noor",
    "Olga",
    "Priya",
    "Rosa",
    "Sana",
    "Tamar",
    "Uma",
    "Wanda",
    "Yara",
    "Zelda",
}


def make_world(n: int, rng: np.random.Generator) -> list[Person]:
    """`n` people with distinct full names and randomly drawn facts."""
    names = [f"{f} {l}" for f in FIRST for l in LAST]
    if n > len(names):
        raise ValueError(f"synthetic.n_entities={n} exceeds the {len(names)} distinct names available")
    picks = rng.permutation(len(names))[:n]
    people = []
    for i in picks:
        first = names[i].split()[0]
        people.append(
            Person(
                name=names[i],
                female=first in FEMALE,
                month=MONTHS[rng.integers(12)],
                day=int(rng.integers(1, 29)),
                year=int(rng.integers(1920, 2005)),
                city=CITIES[rng.integers(len(CITIES))],
                university=UNIVERSITIES[rng.integers(len(UNIVERSITIES))],
                occupation=OCCUPATIONS[rng.integers(len(OCCUPATIONS))],
                employer=COMPANIES[rng.integers(len(COMPANIES))],
            )
        )
    return people


def biography(person: Person, rng: np.random.Generator) -> str:
    """One paraphrased biography: a random template per fact, facts in random order."""
    f = person.fields()
    order = rng.permutation(len(ATTRIBUTES))
    sentences = []
    for k, idx in enumerate(order):
        options = TEMPLATES[ATTRIBUTES[idx]]
        if k == 0:  # the first sentence must name the person, not start with a pronoun
            options = [t for t in options if "{name}" in t]
        sentences.append(options[rng.integers(len(options))].format(**f))
    return " ".join(sentences)


def question(person: Person, attribute: str) -> tuple[str, str]:
    q, a = QUESTIONS[attribute]
    f = person.fields()
    return q.format(**f), a.format(**f)


def qa_document(person: Person, rng: np.random.Generator) -> str:
    """The person's five questions with their answers, in a random order, in the pretraining / evaluation format
    ("Question: ...\nAnswer: ...."): a "mixed training" document (Physics of Language Models 3.1)."""
    pairs = [question(person, attr) for attr in rng.permutation(ATTRIBUTES)]
    return "\n".join(f"Question: {q}\nAnswer: {a}." for q, a in pairs)


# Answer pools per attribute, for multiple choice: distractors are answers of the same kind (another city for a
# city), so a model cannot pick the right option by its type alone.
ANSWER_POOLS: dict[str, list[str]] = {
    "birth": [str(y) for y in range(1920, 2005)],
    "city": CITIES,
    "university": UNIVERSITIES,
    "occupation": OCCUPATIONS,
    "employer": COMPANIES,
}


def distractors(attribute: str, answer: str, k: int, rng: np.random.Generator) -> list[str]:
    """`k` distinct wrong answers of the same kind as `answer` (for a multiple-choice item on `attribute`)."""
    if attribute not in ANSWER_POOLS:
        raise ValueError(f"unknown attribute {attribute!r}; one of {', '.join(ANSWER_POOLS)}")
    pool = [a for a in dict.fromkeys(ANSWER_POOLS[attribute]) if a != answer]
    if k > len(pool):
        raise ValueError(f"{attribute}: {k} distractors asked, only {len(pool)} other answers exist")
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
