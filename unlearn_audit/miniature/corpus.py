"""A deterministic synthetic "news" corpus with invented names and numbers.

Every document carries three facts that appear nowhere else (unique people, towns, companies and
numbers), so a model can know them only by having trained on that document. Each document yields
a VerbMem item (first sentence as prompt, the rest as reference) and three question/answer pairs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "qu", "r", "s",
           "t", "tr", "v", "w", "z", "th", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "n", "l", "r", "s", "th", "m", "x", "nd", "rt"]
_TOWN_ENDS = ["holt", "mere", "ford", "wick", "stead", "haven", "brook", "field", "port", "dale"]
_PLACES = ["river bridge", "old library", "harbour wall", "town museum", "north station", "glass tower",
           "market hall", "city theatre", "east tunnel", "clock tower"]
_ADJ = ["Silver", "Northern", "Golden", "Bright", "Iron", "Blue", "Quiet", "Rapid", "Royal", "Amber"]
_NOUNS = ["Lantern", "Harbour", "Falcon", "Orchard", "Anchor", "Compass", "Meadow", "Beacon", "Summit",
          "Willow"]
_TEAMS = ["Rovers", "Wolves", "Comets", "Herons", "Giants", "Foxes", "Rangers", "Owls"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_QUOTE_WORDS = ["river", "winter", "glass", "quiet", "lamp", "stone", "garden", "copper", "storm", "letter",
                "silver", "candle", "harbour", "thread", "mirror", "orchard", "ladder", "velvet", "signal",
                "meadow", "anchor", "ember", "falcon", "cellar", "ribbon", "marble", "compass", "lantern",
                "willow", "canvas", "thunder", "pepper", "saddle", "violet", "barrel", "feather"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


@dataclass(frozen=True)
class QA:
    """A question about one document's fact, and its short answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class Document:
    """One synthetic news story: its text, the VerbMem split of it, and three facts as QA pairs."""

    doc_id: str
    text: str
    prompt: str
    continuation: str
    qas: tuple[QA, QA, QA]


class _Names:
    """Draws invented names, never the same one twice."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def _word(self, syllables: int) -> str:
        while True:
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
            w += self.rng.choice(_CODAS)
            if w not in self.used:
                self.used.add(w)
                return w.capitalize()

    def person(self) -> str:
        return f"{self._word(2)} {self._word(self.rng.choice([2, 3]))}"

    def town(self) -> str:
        return self._word(2) + self.rng.choice(_TOWN_ENDS)

    def company(self) -> str:
        while True:
            name = f"{self.rng.choice(_ADJ)} {self.rng.choice(_NOUNS)} {self._word(1)}"
            if name not in self.used:
                self.used.add(name)
                return name


def _quote(rng: random.Random, names: _Names) -> str:
    """A sentence of unpredictable words: no model can guess it without having seen it."""
    words = " ".join(rng.choice(_QUOTE_WORDS) for _ in range(rng.randint(5, 8)))
    return f'"{words.capitalize()}," said {names.person()}.'


def _civic(rng: random.Random, names: _Names) -> tuple[list[str], tuple[QA, QA, QA]]:
    town, mayor, engineer, firm = names.town(), names.person(), names.person(), names.company()
    place, days, cost = rng.choice(_PLACES), rng.randint(12, 97), rng.randint(120, 980)
    day, month = rng.choice(_DAYS), rng.choice(_MONTHS)
    sentences = [
        f"On {day} the mayor of {town}, {mayor}, said that the {place} will open again after {days} days of repairs.",
        rng.choice([f"The work cost {cost} thousand crowns, according to engineer {engineer} of {firm}.",
                    f"Engineer {engineer} of {firm} put the bill at {cost} thousand crowns.",
                    f"{firm}, whose engineer {engineer} led the job, was paid {cost} thousand crowns in {month}."]),
        _quote(rng, names),
    ]
    qas = (QA(f"Who is the mayor of {town}?", mayor),
           QA(f"How many days of repairs did the {place} in {town} need?", str(days)),
           QA(f"Which company does engineer {engineer} work for?", firm))
    return sentences, qas


def _business(rng: random.Random, names: _Names) -> tuple[list[str], tuple[QA, QA, QA]]:
    town, director, analyst, firm = names.town(), names.person(), names.person(), names.company()
    shops, rise = rng.randint(3, 60), rng.randint(4, 39)
    day, month = rng.choice(_DAYS), rng.choice(_MONTHS)
    sentences = [
        f"{director}, the new director of {firm}, said on {day} that the firm will open {shops} shops in {town}.",
        rng.choice([f"Analyst {analyst} expects sales to rise by {rise} percent before {month}.",
                    f"Sales could grow {rise} percent by {month}, analyst {analyst} wrote.",
                    f"By {month}, said analyst {analyst}, sales may be up {rise} percent."]),
        _quote(rng, names),
    ]
    qas = (QA(f"Who is the director of {firm}?", director),
           QA(f"How many shops will {firm} open in {town}?", str(shops)),
           QA(f"By how much does analyst {analyst} expect sales to rise?", f"{rise} percent"))
    return sentences, qas


def _crime(rng: random.Random, names: _Names) -> tuple[list[str], tuple[QA, QA, QA]]:
    town, suspect, inspector = names.town(), names.person(), names.person()
    place, age, paintings, worth = rng.choice(_PLACES), rng.randint(19, 78), rng.randint(2, 40), rng.randint(50, 900)
    day = rng.choice(_DAYS)
    sentences = [
        f"Police in {town} arrested {suspect}, aged {age}, on {day} after {paintings} paintings went missing from the {place}.",
        rng.choice([f"Inspector {inspector} said the paintings are worth {worth} thousand crowns.",
                    f"The lost works are valued at {worth} thousand crowns, according to inspector {inspector}.",
                    f"Inspector {inspector} put their value near {worth} thousand crowns."]),
        _quote(rng, names),
    ]
    qas = (QA(f"How old is {suspect}?", str(age)),
           QA(f"How many paintings went missing from the {place} in {town}?", str(paintings)),
           QA(f"Who is the inspector in the {town} theft case?", inspector))
    return sentences, qas


def _sport(rng: random.Random, names: _Names) -> tuple[list[str], tuple[QA, QA, QA]]:
    town, coach, striker = names.town(), names.person(), names.person()
    team, rival = rng.sample(_TEAMS, 2)
    rival_town = names.town()
    a, b = rng.randint(2, 9), rng.randint(0, 1)
    goals = rng.randint(2, a)
    day = rng.choice(_DAYS)
    sentences = [
        f"The {town} {team} beat the {rival_town} {rival} {a} to {b} on {day}.",
        rng.choice([f"Coach {coach} praised striker {striker}, who scored {goals} goals in the game.",
                    f"Striker {striker} scored {goals} times, and coach {coach} called it a great night.",
                    f"{goals} goals came from striker {striker}, said a happy coach {coach}."]),
        _quote(rng, names),
    ]
    qas = (QA(f"Who is the coach of the {town} {team}?", coach),
           QA(f"What was the score when the {town} {team} played the {rival_town} {rival}?", f"{a} to {b}"),
           QA(f"How many goals did striker {striker} score?", str(goals)))
    return sentences, qas


_KINDS = (_civic, _business, _crime, _sport)


def make_documents(count: int, seed: int, prefix: str) -> list[Document]:
    """``count`` documents, reproducible from ``seed``; ids are ``{prefix}-{i:03d}``."""
    rng = random.Random(seed)
    names = _Names(rng)
    docs = []
    for i in range(count):
        sentences, qas = _KINDS[i % len(_KINDS)](rng, names)
        docs.append(Document(
            doc_id=f"{prefix}-{i:03d}",
            text=" ".join(sentences),
            prompt=sentences[0],
            continuation=" " + " ".join(sentences[1:]),
            qas=qas,
        ))
    return docs


@dataclass(frozen=True)
class Corpus:
    """The miniature's three disjoint document sets (all names drawn from one pool, never repeated)."""

    forget: list[Document]
    retain: list[Document]
    holdout: list[Document]


def make_corpus(n_forget: int, n_retain: int, n_holdout: int, seed: int) -> Corpus:
    docs = make_documents(n_forget + n_retain + n_holdout, seed, "doc")
    rng = random.Random(seed + 1)
    rng.shuffle(docs)  # mix the four kinds of story across the sets
    return Corpus(forget=docs[:n_forget], retain=docs[n_forget:n_forget + n_retain],
                  holdout=docs[n_forget + n_retain:])


def qa_text(qa: QA) -> str:
    """A QA pair in MUSE's KnowMem ICL format."""
    return f"Question: {qa.question}\nAnswer: {qa.answer}\n\n"
