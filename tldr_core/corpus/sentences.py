"""English sentences from our own templates and word lists, so the corpus text is ours to ship.

The mix covers what a voice model must read aloud: statements, questions, exclamations, lists,
numbers, dates, money and times in their raw written form ("$3.50", "7:45"), very short replies and
long multi-clause sentences. The same seed always gives the same sentences in the same order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

NAMES = [
    "Anna", "Ben", "Chloe", "David", "Elena", "Felix", "Grace", "Hugo", "Isabel", "Jack", "Kira", "Liam",
    "Maya", "Noah", "Olivia", "Peter", "Quinn", "Rosa", "Samuel", "Tara", "Umar", "Vera", "William", "Yusuf",
    "Zoe", "Martha", "Oscar", "Priya", "Daniel", "Fiona", "George", "Helen", "Ivan", "Julia", "Kevin", "Laura",
]
PLACES = [
    "the library", "the station", "the old market", "the harbour", "the museum", "the kitchen", "the garden",
    "the hospital", "the school", "the bakery", "the airport", "the park", "the office", "the river bank",
    "the village hall", "the bus stop", "the beach", "the hotel lobby", "the cinema", "the farm", "the bridge",
    "the bookshop", "the post office", "the mountain hut", "the town square", "the back yard", "the laboratory",
]
CITIES = [
    "London", "Boston", "Dublin", "Chicago", "Sydney", "Toronto", "Edinburgh", "Denver", "Seattle", "Cardiff",
    "Atlanta", "Glasgow", "Portland", "Houston", "Leeds", "Austin", "Madrid", "Vienna", "Oslo", "Lisbon",
]
OBJECTS = [
    "umbrella", "bicycle", "letter", "camera", "kettle", "ladder", "notebook", "guitar", "blanket", "suitcase",
    "lamp", "map", "key", "basket", "clock", "jacket", "radio", "bottle", "ticket", "envelope", "hammer",
    "telescope", "painting", "candle", "wallet", "computer", "phone", "chair", "window", "mirror", "parcel",
]
FOODS = [
    "apples", "bread", "cheese", "eggs", "flour", "sugar", "lemons", "carrots", "rice", "butter", "tomatoes",
    "onions", "coffee", "tea", "honey", "potatoes", "milk", "oranges", "pasta", "beans", "grapes", "soup",
]
ANIMALS = [
    "dog", "cat", "horse", "fox", "owl", "rabbit", "goat", "duck", "sheep", "parrot", "squirrel", "hedgehog",
    "donkey", "swan", "turtle", "badger", "pony", "crow", "goose", "mouse",
]
ADJECTIVES = [
    "quiet", "bright", "heavy", "strange", "lovely", "narrow", "ancient", "shiny", "broken", "tiny", "enormous",
    "careful", "cheerful", "dusty", "gentle", "noisy", "patient", "rusty", "simple", "warm", "cold", "clever",
    "wooden", "golden", "muddy", "crowded", "empty", "famous", "fragile", "yellow", "green", "purple",
]
PAST_VERBS = [
    "found", "painted", "carried", "repaired", "opened", "borrowed", "dropped", "bought", "sold", "cleaned",
    "wrapped", "lost", "noticed", "moved", "checked", "delivered", "forgot", "described", "measured", "hid",
]
BASE_VERBS = [
    "find", "paint", "carry", "repair", "open", "borrow", "bring", "buy", "sell", "clean", "wrap", "move",
    "check", "deliver", "describe", "measure", "hide", "share", "fetch", "return",
]
ADVERBS = [
    "slowly", "quickly", "carefully", "quietly", "happily", "suddenly", "finally", "gently", "proudly",
    "nervously", "eagerly", "calmly", "loudly", "early", "late", "again", "together", "politely",
]
TIMES_OF_DAY = ["this morning", "last night", "on Sunday", "yesterday", "after lunch", "before dawn",
                "every Tuesday", "in the evening", "at noon", "last winter", "next week", "tomorrow"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
JOBS = ["teacher", "doctor", "baker", "pilot", "gardener", "engineer", "nurse", "farmer", "writer", "chef",
        "painter", "driver", "librarian", "musician", "carpenter", "scientist"]
FEELINGS = ["wonderful", "amazing", "terrible", "fantastic", "unbelievable", "brilliant", "awful", "perfect"]
SHORT = [
    "Thank you.", "Come in.", "Not yet.", "Well done!", "Good morning.", "See you soon.", "Why not?",
    "Hold on.", "Be careful!", "Of course.", "Right away.", "Not today.", "Listen carefully.", "Try again.",
    "Who called?", "Sounds good.", "Absolutely not!", "Good night.", "Over here!", "What happened?",
    "I agree.", "Maybe later.", "Stop there!", "Keep going.", "How lovely!", "Please sit down.",
]
CONNECTORS = ["and", "but", "because", "while", "so", "although", "until", "after", "before"]


class SentenceMaker:
    """Draws sentences of every kind from one random stream."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def pick(self, words: list[str]) -> str:
        return self.r.choice(words)

    def clause(self) -> str:
        """A past-tense clause without final punctuation: the building block of most kinds."""
        r, p = self.r, self.pick
        forms = [
            lambda: f"{p(NAMES)} {p(PAST_VERBS)} the {p(ADJECTIVES)} {p(OBJECTS)} near {p(PLACES)}",
            lambda: f"the {p(ANIMALS)} waited {p(ADVERBS)} outside {p(PLACES)} {p(TIMES_OF_DAY)}",
            lambda: f"my {p(['brother', 'sister', 'neighbour', 'friend', 'aunt', 'uncle', 'cousin'])} "
                    f"{p(PAST_VERBS)} {with_article(p(ADJECTIVES))} {p(OBJECTS)} {p(TIMES_OF_DAY)}",
            lambda: f"the {p(JOBS)} from {p(CITIES)} {p(PAST_VERBS)} the {p(OBJECTS)} {p(ADVERBS)}",
            lambda: "{} and {} walked to {} {}".format(*r.sample(NAMES, 2), p(PLACES), p(ADVERBS)),
            lambda: f"nobody knew why the {p(OBJECTS)} was so {p(ADJECTIVES)}",
            lambda: f"we {p(PAST_VERBS)} {r.choice(['some', 'the', 'fresh'])} {p(FOODS)} at {p(PLACES)}",
            lambda: f"the {p(ADJECTIVES)} {p(ANIMALS)} slept beside the {p(OBJECTS)}",
        ]
        return r.choice(forms)()

    def statement(self) -> str:
        return cap(self.clause()) + "."

    def question(self) -> str:
        p = self.pick
        forms = [
            lambda: f"Did {p(NAMES)} {p(BASE_VERBS)} the {p(OBJECTS)} {p(TIMES_OF_DAY)}?",
            lambda: f"Where did you {p(BASE_VERBS)} the {p(ADJECTIVES)} {p(OBJECTS)}?",
            lambda: f"Why was the {p(ANIMALS)} so {p(ADJECTIVES)} {p(TIMES_OF_DAY)}?",
            lambda: f"Could you {p(BASE_VERBS)} my {p(OBJECTS)} before {p(WEEKDAYS)}?",
            lambda: "How long does it take to get from {} to {}?".format(*self.r.sample(CITIES, 2)),
            lambda: f"Have you ever seen {with_article(p(ADJECTIVES))} {p(ANIMALS)} in {p(PLACES)}?",
            lambda: f"Who left the {p(FOODS)} on the {p(OBJECTS)}?",
            lambda: f"Is {p(NAMES)} still working as {with_article(p(JOBS))} in {p(CITIES)}?",
            lambda: f"What time does {p(PLACES)} open on {p(WEEKDAYS)}?",
            lambda: f"{cap(self.clause())}, right?",
            lambda: f"Is it true that {self.clause()}?",
        ]
        return self.r.choice(forms)()

    def exclamation(self) -> str:
        p = self.pick
        forms = [
            lambda: f"What {with_article(p(ADJECTIVES))} {p(OBJECTS)} that is!",
            lambda: f"That was {p(FEELINGS)}!",
            lambda: f"Watch out for the {p(ANIMALS)}!",
            lambda: f"I can't believe {p(NAMES)} {p(PAST_VERBS)} the {p(OBJECTS)}!",
            lambda: f"How {p(ADJECTIVES)} {p(PLACES)} looks {p(TIMES_OF_DAY)}!",
            lambda: f"{p(NAMES)}, {p(['come back', 'wait for me', 'look at this', 'stop right there'])}!",
        ]
        return self.r.choice(forms)()

    def listing(self) -> str:
        r, p = self.r, self.pick
        items = r.sample(FOODS if r.random() < 0.5 else [with_article(o) for o in OBJECTS], r.randint(3, 5))
        listed = ", ".join(items[:-1]) + " and " + items[-1]
        forms = [
            f"We still need {listed}.",
            f"{p(NAMES)} packed {listed} for the trip to {p(CITIES)}.",
            f"Please bring {listed} to {p(PLACES)}.",
            f"Did anyone remember {listed}?",
        ]
        return r.choice(forms)

    def numbers(self) -> str:
        r, p = self.r, self.pick
        money = f"${r.randint(1, 99)}.{r.randint(0, 99):02d}"
        big = f"{r.randint(1, 99)},{r.randint(0, 999):03d}"
        clock = f"{r.randint(1, 12)}:{r.choice(['00', '15', '30', '45', '05', '20', '50'])}"
        date = f"{p(MONTHS)} {r.randint(1, 28)}, {r.randint(1950, 2030)}"
        day = r.randint(1, 28)
        ordinal = f"{day}{ordinal_suffix(day)}"
        forms = [
            f"The {p(OBJECTS)} cost {money} at {p(PLACES)}.",
            f"The train to {p(CITIES)} leaves at {clock} {r.choice(['am', 'pm'])}.",
            f"{p(NAMES)} was born on {date}.",
            f"About {big} people visited {p(PLACES)} last year.",
            f"Prices rose by {r.randint(2, 60)}% in {r.randint(1990, 2029)}.",
            f"The meeting moved to the {ordinal} of {p(MONTHS)} at {clock}.",
            f"Room {r.randint(100, 999)} is on floor {r.randint(2, 40)}.",
            f"Is it true that {r.randint(2, 12)} {plural(p(ANIMALS))} cost {money}?",
            f"Add {r.randint(2, 9)}.{r.randint(1, 9)} kilograms of {p(FOODS)} and stir for {r.randint(2, 30)} minutes.",
            f"We paid {money} for {r.randint(2, 20)} {plural(p(OBJECTS))}!",
        ]
        return r.choice(forms)

    def short(self) -> str:
        p = self.pick
        forms = [
            lambda: p(SHORT),
            lambda: f"{p(NAMES)} is here.",
            lambda: f"{cap(p(ADJECTIVES))} {p(ANIMALS)}!",
            lambda: f"Where is {p(NAMES)}?",
            lambda: f"Call {p(NAMES)} {p(['now', 'later', 'today', 'back'])}.",
        ]
        return self.r.choice(forms)()

    def long(self) -> str:
        """Three or four clauses joined with connectors: 30 words or more."""
        r = self.r
        clauses = [self.clause()]
        while sum(len(c.split()) + 1 for c in clauses) < 31:
            clauses.append(self.clause())
        text = clauses[0]
        for i, clause in enumerate(clauses[1:], start=2):
            comma = "," if i == len(clauses) and r.random() < 0.5 else ""  # as people write before the last
            text += f"{comma} {r.choice(CONNECTORS)} {clause}"
        return cap(text) + r.choice([".", ".", ".", "!"])

    def sentence(self) -> str:
        kinds = [self.statement, self.question, self.exclamation, self.listing, self.numbers, self.short,
                 self.long]
        weights = [30, 16, 8, 8, 16, 8, 14]
        return self.r.choices(kinds, weights)[0]()


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def plural(noun: str) -> str:
    irregular = {"mouse": "mice", "goose": "geese", "sheep": "sheep"}
    return irregular.get(noun) or noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def sentence_stream(seed: int) -> Iterator[str]:
    """Distinct sentences forever (well, until the templates run dry, far beyond any corpus size)."""
    maker = SentenceMaker(random.Random(f"tldr-sentences-{seed}"))  # str seeds hash with sha512: stable
    seen: set[str] = set()
    while True:
        s = maker.sentence()
        if s not in seen:
            seen.add(s)
            yield s


def make_sentences(seed: int, count: int) -> list[str]:
    stream = sentence_stream(seed)
    return [next(stream) for _ in range(count)]
