"""The text front end: what a person types becomes the phoneme ids the TTS model reads.

Three stages, each usable on its own:
  normalize_text  raw text -> lowercase spoken words plus , . ? ! ; : - for prosody ("$3.50" -> "three
                  dollars and fifty cents"). A capital single letter is spelled, i.e. read by its name
                  ("9am" -> "nine A M"), because lowercase "a" is the article.
  phonemize       words -> IPA phones from gruut (MIT, offline, en-us) with stress marks as their own
                  symbols, "_" between words and the punctuation kept. gruut silently returns nothing for
                  some words, so every such word is spelled letter by letter instead of being lost.
  phoneme_ids     phones -> integer ids for the model's embedding table.
split_sentences cuts long raw text into sentence-sized chunks for synthesis one at a time (streaming).

Only English (en-US reading) is supported; other scripts are transliterated to Latin letters (anyascii, ISC licence),
which is a guess at their sound, not a translation.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
import unicodedata
from typing import Callable

from gruut.lang import get_settings
from gruut.phonemize import SqlitePhonemizer
from gruut.text_processor import TextProcessor
from num2words import num2words
from anyascii import anyascii

from tldr_core.errors import TextInputError

MAX_TEXT_CHARS = 20_000  # a long chapter; more than this is better synthesised in several goes
MAX_SENTENCE_CHARS = 200  # raw characters per chunk: ~13 s of speech, well inside the model's context

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# The symbol inventory. Ids are 4 + index, and the model's embedding table is laid out by them, so this
# tuple may only ever grow at its end. The phones are exactly those gruut's en-us lexicon and its
# grapheme-to-phoneme model produce; gruut writes stress on the vowel ("ˈoʊ"), here it is split off
# ("ˈ", "oʊ") so 16 vowels and 2 stress marks stand for gruut's 46 vowel variants.
WORD_BOUNDARY = "_"
STRESS = ("ˈ", "ˌ")
PHONEMES: tuple[str, ...] = (
    "_", ",", ".", "?", "!", ";", ":", "-", "ˈ", "ˌ",
    # vowels and diphthongs
    "ɑ", "æ", "ʌ", "ɔ", "aʊ", "ə", "ɚ", "aɪ", "ɛ", "eɪ", "ɪ", "i", "oʊ", "ɔɪ", "ʊ", "u",
    # consonants
    "b", "t͡ʃ", "d", "ð", "f", "ɡ", "h", "d͡ʒ", "k", "l", "m", "n", "ŋ", "p", "ɹ", "s", "ʃ", "t", "θ",
    "v", "w", "j", "z", "ʒ",
)
MARKS = frozenset({WORD_BOUNDARY, *STRESS, ",", ".", "?", "!", ";", ":", "-"})  # no sound segment of their own
PHONES: tuple[str, ...] = tuple(p for p in PHONEMES if p not in MARKS)
VOCAB_SIZE = 4 + len(PHONEMES)  # rows of the model's embedding table
_ID_OF = {symbol: 4 + index for index, symbol in enumerate(PHONEMES)}


def _check_text(text: str) -> None:
    """Reject input that cannot be spoken before any work is done on it."""
    if not isinstance(text, str):
        raise TextInputError(f"Expected text to speak, got {type(text).__name__}. Pass the text as a string.")
    if len(text) > MAX_TEXT_CHARS:
        raise TextInputError(f"The text is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}. "
                             f"Split it into smaller parts and synthesise them one after another.")
    if not text.strip():
        raise TextInputError("The text is empty. Type some words to speak.")


def _nothing_to_say() -> TextInputError:
    return TextInputError("The text has nothing pronounceable in it (only symbols, emoji or punctuation). "
                          "Type some words or numbers to speak.")


# ----------------------------------------------------------------------------------------------------------
# Unicode -> plain ASCII

_TYPOGRAPHY = str.maketrans({
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'", "´": "'",
    "“": '"', "”": '"', "„": '"', "‟": '"', "″": '"', "«": '"', "»": '"',
    "‐": "-", "‑": "-", "‒": "-", "−": "-",  # hyphens and the minus sign
    "–": " - ", "—": " - ", "―": " - ",  # en/em dashes: a pause ("5–10" is fixed up below)
    "¡": "", "¿": "",  # Spanish opening marks; the closing one carries the prosody
})
_KEEP = frozenset("°€£¥×÷±")  # non-ASCII symbols the rules below read out


def _to_ascii(text: str) -> str:
    """NFKC, typographic punctuation to ASCII, other scripts transliterated; emoji and control chars dropped."""
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY)
    text = re.sub(r"(?<=\d) - (?=\d)", "-", text)  # "5–10" is a range, not a pause
    out = []
    for char in text:
        if char.isspace():
            out.append(" ")
        elif char.isascii():
            out.append(char if char.isprintable() else "")
        elif char in _KEEP:
            out.append(char)
        else:
            category = unicodedata.category(char)
            if category in ("So", "Sk") or category.startswith("C"):  # emoji, pictographs, control, format
                out.append(" " if category[0] == "S" else "")
            else:  # letters, digits, marks, punctuation, maths and currency signs
                out.append(anyascii(char))
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------
# Number words (num2words, en-US reading: no "and" inside numbers, no hyphens or commas)

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPELL = "\0"  # marks a letter to be read by its name; control characters never survive _to_ascii


def _words(number_words: str) -> str:
    return re.sub(r"\s+", " ", number_words.replace(" and ", " ").replace(",", " ").replace("-", " ")).strip()


def _digits(digits: str) -> str:
    return " ".join(_DIGIT_WORDS[int(d)] for d in digits)


def _cardinal(digits: str) -> str:
    """Whole number words; digit by digit for leading zeros ("007") and for numbers too long to say."""
    if len(digits) > 15 or (len(digits) > 1 and digits[0] == "0"):
        return _digits(digits)
    return _words(num2words(int(digits)))


def _ordinal(digits: str) -> str:
    return _words(num2words(int(digits), to="ordinal")) if len(digits) <= 15 else _digits(digits)


def _year(digits: str) -> str:
    return _words(num2words(int(digits), to="year"))


def _number(text: str) -> str:
    """ "-1,234.56" -> "minus one thousand two hundred thirty four point five six"."""
    sign = "minus " if text.startswith("-") else ""
    whole, _, fraction = text.lstrip("-").replace(",", "").partition(".")
    words = _cardinal(whole) if whole else "zero"
    return sign + words + (f" point {_digits(fraction)}" if fraction else "")


def _plural(words: str) -> str:
    """Plural of the last number word: "nineteen ninety" -> "nineteen nineties"."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _spell(letters: str) -> str:
    return " ".join(_SPELL + letter for letter in letters if letter.isalpha())


# ----------------------------------------------------------------------------------------------------------
# Normalisation rules, applied in order to ASCII text. Each is (pattern, replacement); later rules see the
# words earlier ones wrote, so anything with digits inside (dates, money, times) goes before plain numbers.

_UNSIGNED = r"(?<!\d)(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)"  # "1,234,567.89"
_NUM = r"(?:(?<![\w.-])-)?" + _UNSIGNED  # a minus sign only where it cannot be a hyphen ("5-10")

_URL_SYMBOLS = {".": "dot", "/": "slash", "-": "dash", "_": "underscore", "@": "at", ":": "colon",
                "?": "question mark", "=": "equals", "&": "and", "#": "hash", "%": "percent", "~": "tilde",
                "+": "plus"}


def _read_url(match: re.Match) -> str:
    """ "https://www.example.com/docs." -> "W W W dot example dot com slash docs." (scheme not read)."""
    url = match[0]
    tail = re.search(r"[.,;:!?)\]}'\"]*$", url)[0]  # sentence punctuation after the address
    url = re.sub(r"^[a-z]+://", "", url[:len(url) - len(tail)], flags=re.I)
    spoken = []
    for piece in re.findall(r"[A-Za-z]+|\d+|.", url):
        if piece.isdigit():
            spoken.append(_cardinal(piece))
        elif piece.isalpha():
            spoken.append(_spell(piece) if not re.search(r"[aeiouy]", piece, re.I) else piece.lower())
        elif piece in _URL_SYMBOLS:
            spoken.append(_URL_SYMBOLS[piece])
    return " ".join(spoken) + tail


_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "", "")}
_SCALES = {"thousand": "thousand", "k": "thousand", "million": "million", "m": "million", "mn": "million",
           "billion": "billion", "bn": "billion", "b": "billion", "trillion": "trillion"}


def _read_money(match: re.Match) -> str:
    """ "$3.50" -> "three dollars and fifty cents", "$3.5 million" -> "three point five million dollars"."""
    found = match.groupdict()
    one, many, one_minor, many_minor = _CURRENCIES[found.get("before") or found["after"]]
    amount, scale = found["amount"], found.get("scale")
    if scale:
        return f"{_number(amount)} {_SCALES[scale.lower()]} {many}"
    whole, _, cents = amount.replace(",", "").partition(".")
    if cents and (len(cents) > 2 or not one_minor):  # "$0.125", "¥1.5": read as a plain decimal
        return f"{_number(amount)} {many}"
    cents = int(cents.ljust(2, "0")) if cents else 0
    parts = []
    if int(whole or "0") or not cents:
        parts.append(f"{_cardinal(whole or '0')} {one if whole.lstrip('0') == '1' else many}")
    if cents:
        parts.append(f"{_cardinal(str(cents))} {one_minor if cents == 1 else many_minor}")
    return " and ".join(parts)


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_MONTH_NAME = (r"(?P<month>Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
               r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")


def _month(name: str) -> int:
    return next(number for number, month in enumerate(_MONTHS, 1) if month.startswith(name.lower()[:3]))


def _date_words(month: int, day: int, year: str | None, match: re.Match, day_first: bool = False) -> str:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return match[0]  # not a date after all; later rules read the numbers
    words = f"the {_ordinal(str(day))} of {_MONTHS[month - 1]}" if day_first else \
        f"{_MONTHS[month - 1]} {_ordinal(str(day))}"
    if year:
        words += ", " + (_year(year) if len(year) == 4 else _two_digit_year(year))
    return words


def _two_digit_year(digits: str) -> str:
    return f"oh {_DIGIT_WORDS[int(digits[1])]}" if digits[0] == "0" else _cardinal(digits)


def _read_time(match: re.Match) -> str:
    """ "3:30 pm" -> "three thirty P M", "14:05" -> "fourteen oh five", "9am" -> "nine A M"."""
    found = match.groupdict()
    hour, minute, second, meridiem = found["hour"], found.get("minute"), found.get("second"), found["meridiem"]
    words = [_cardinal(str(int(hour)))]
    if minute == "00" and not second:
        if not meridiem:
            words.append("o'clock" if 1 <= int(hour) <= 12 else "hundred")
    elif minute:
        words.append(f"oh {_DIGIT_WORDS[int(minute[1])]}" if minute[0] == "0" else _cardinal(minute))
    if second:
        words.append(f"and {_cardinal(str(int(second)))} seconds")
    if meridiem:
        words.append(_spell(meridiem + "m"))
    return " ".join(words)


def _read_decade(match: re.Match) -> str:
    """ "1990s" -> "nineteen nineties", "'80s" -> "eighties"."""
    digits = match["decade"]
    return _plural(_year(digits) if len(digits) == 4 else _cardinal(digits))


_UNITS = {  # symbol: (singular, plural); case matters ("mb" is not "MB")
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "ft": ("foot", "feet"), "mi": ("mile", "miles"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"), "ml": ("milliliter", "milliliters"),
    "l": ("liter", "liters"), "L": ("liter", "liters"), "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"), "°": ("degree", "degrees"),
    "KB": ("kilobyte", "kilobytes"), "kB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"), "Hz": ("hertz", "hertz"),
    "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"), "GHz": ("gigahertz", "gigahertz"),
    "ms": ("millisecond", "milliseconds"), "sec": ("second", "seconds"), "min": ("minute", "minutes"),
    "hr": ("hour", "hours"), "hrs": ("hour", "hours"), "kW": ("kilowatt", "kilowatts"),
    "W": ("watt", "watts"), "V": ("volt", "volts"),
}
_UNIT_PATTERN = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))


def _read_unit(match: re.Match) -> str:
    singular, plural = _UNITS[match["unit"]]
    return f"{_number(match['amount'])} {singular if match['amount'] == '1' else plural}"


_DENOMINATORS = {2: ("half", "halves"), 4: ("quarter", "quarters")}


def _read_fraction(match: re.Match) -> str:
    """Proper fractions with small denominators ("3/4" -> "three quarters"); other a/b read with "slash"."""
    top, bottom = int(match[1]), int(match[2])
    if not 0 < top < bottom <= 10:
        return f"{_cardinal(match[1])} slash {_cardinal(match[2])}"
    one, many = _DENOMINATORS.get(bottom, (_ordinal(match[2]), _plural(_ordinal(match[2]))))
    return f"{_cardinal(match[1])} {one if top == 1 else many}"


def _abbreviation(words: str, may_end_sentence: bool = False) -> Callable[[re.Match], str]:
    """Replacement for an abbreviation; keeps its period when it also ends the sentence ("... etc. Then")."""
    def replace(match: re.Match) -> str:
        rest = match.string[match.end():]
        ends = match[0].endswith(".") and (not rest.strip() or re.match(r"\s+[A-Z]", rest))
        return words + ("." if may_end_sentence and ends else "")
    return replace


_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "#": " hash ", "%": " percent ",
            "/": " slash ", "~": " tilde ", "<": " less than ", ">": " greater than ", "°": " degrees ",
            "€": " euros ", "£": " pounds ", "¥": " yen ", "$": " dollars ", "×": " times ",
            "÷": " divided by ", "±": " plus or minus "}

_RULES: list[tuple[re.Pattern, str | Callable[[re.Match], str]]] = [
    # addresses first: their dots, digits and slashes are not sentence ends, decimals or fractions
    (re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), _read_url),
    (re.compile(r"(?<![\w.-])(?:https?://|www\.)\S+", re.I), _read_url),
    (re.compile(r"(?<![\w.@/-])(?:[a-z0-9-]+\.)+(?:com|org|net|edu|gov|io|dev|ai|app|info|co\.uk|uk|de|ca)"
                r"\b(?:/\S*)?", re.I), _read_url),
    (re.compile(r"#(?=\d)"), "number"),  # "#1"
    (re.compile(r"~(?=-?\.?\d)"), "about"),  # "~5 km"
    (re.compile(rf"(?P<before>[$€£¥])\s?(?P<amount>{_UNSIGNED})"
                rf"(?:\s?(?P<scale>thousand|million|billion|trillion|bn|mn|[kmb])\b)?", re.I), _read_money),
    (re.compile(rf"(?P<amount>{_UNSIGNED})\s?(?P<after>[€£¥$])"), _read_money),
    (re.compile(r"(?<![\d-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\d-])"),
     lambda m: _date_words(int(m[2]), int(m[3]), m[1], m)),
    (re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?![\d/])"),
     lambda m: _date_words(int(m[1]), int(m[2]), m[3], m)),
    (re.compile(rf"\b{_MONTH_NAME}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<year>\d{{4}})\b)?"),
     lambda m: _date_words(_month(m["month"]), int(m["day"]), m["year"], m)),
    (re.compile(rf"(?<![\d.])(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH_NAME}(?:,?\s+(?P<year>\d{{4}})\b)?"),
     lambda m: _date_words(_month(m["month"]), int(m["day"]), m["year"], m, day_first=True)),
    (re.compile(r"(?<![\d:.])(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d)(?::(?P<second>[0-5]\d))?(?![\d:])"
                r"(?:\s?(?P<meridiem>[ap])\.?m\b(?:\.(?=\s+[a-z]|[,;:!?]))?)?", re.I), _read_time),
    (re.compile(r"(?<![\d:.])(?P<hour>1[0-2]|0?[1-9])\s?(?P<meridiem>[ap])\.?m\b"
                r"(?:\.(?=\s+[a-z]|[,;:!?]))?", re.I), _read_time),
    (re.compile(r"(?<![\w'])'?(?P<decade>(?:1[1-9]|20)?\d0)'?s\b"), _read_decade),
    (re.compile(r"(?<![\w.])(\d+)(?:st|nd|rd|th)\b", re.I), lambda m: _ordinal(m[1])),
    (re.compile(rf"(?P<amount>{_NUM})\s?%"), lambda m: f"{_number(m['amount'])} percent"),
    (re.compile(rf"(?P<amount>{_NUM})\s?(?P<unit>{_UNIT_PATTERN})(?![\w/])"), _read_unit),
    (re.compile(r"(?<![\d/.,])(\d{1,4})/(\d{1,4})(?![\d/])"), _read_fraction),
    # abbreviations: case matters ("St. Louis" is a saint, "Main St." a street)
    (re.compile(r"\bSt\.?(?=\s+[A-Z])"), "saint"),
    (re.compile(r"\bSt\b\.?"), _abbreviation("street", may_end_sentence=True)),
    (re.compile(r"\bDr\b\.?"), "doctor"),
    (re.compile(r"\bMrs\b\.?"), "missus"),
    (re.compile(r"\bMr\b\.?"), "mister"),
    (re.compile(r"\bMs\b\.?"), "mizz"),
    (re.compile(r"\bProf\b\.?"), "professor"),
    (re.compile(r"\bMt\b\.?(?=\s+[A-Z])"), "mount"),
    (re.compile(r"\bNo\.(?=\s?\d)"), "number"),
    (re.compile(r"\bvs\b\.?", re.I), "versus"),
    (re.compile(r"\bapprox\b\.?", re.I), "approximately"),
    (re.compile(r"\be\.\s?g\b\.?", re.I), "for example"),
    (re.compile(r"\bi\.\s?e\b\.?", re.I), "that is"),
    (re.compile(r"\betc\b\.?", re.I), _abbreviation("et cetera", may_end_sentence=True)),
    (re.compile(r"\bJr\b\.?"), _abbreviation("junior", may_end_sentence=True)),
    (re.compile(r"\bSr\b\.?"), _abbreviation("senior", may_end_sentence=True)),
    (re.compile(r"(?<![\w.])(?:[A-Za-z]\.){2,}"),  # "U.S.A.", "p.m." are spelled
     lambda m: _abbreviation(_spell(m[0]), may_end_sentence=True)(m)),
    (re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])"), " "),  # "mp3" -> "mp 3", "4K" -> "4 K"
    # capital acronyms without a vowel cannot be read as a word: spell them ("BBC", "HTML")
    (re.compile(r"(?<![\w'])[B-DF-HJ-NP-TV-XZ]{2,6}(?![\w'])"), lambda m: _spell(m[0])),
    # digit groups: versions and addresses ("1.2.3"), phone numbers, ranges ("5-10", "1984-1990")
    (re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?!\w)"), lambda m: " dot ".join(map(_cardinal, m[0].split(".")))),
    (re.compile(r"(?<![\w-])(?:\(\d{3}\) ?|\d{3}-)?\d{3}-\d{4}(?![\w-])"),
     lambda m: ", ".join(_digits(group) for group in re.findall(r"\d+", m[0]))),
    (re.compile(r"(?<=\d)-(?=\d)"), " to "),
    (re.compile(r"(?<![\w.,-])(1[1-9]\d\d|20\d\d)(?!\.?\d|,\d)"), lambda m: _year(m[1])),
    (re.compile(r"(?<![\w.])\.(\d+)"), lambda m: f"point {_digits(m[1])}"),
    (re.compile(_NUM), lambda m: _number(m[0])),
    (re.compile("[" + re.escape("".join(_SYMBOLS)) + "]"), lambda m: _SYMBOLS[m[0]]),
]

# Stronger punctuation wins when several meet ("?!" -> "?", "word,." -> ".").
_PUNCT_RANK = {",": 0, "-": 1, ":": 2, ";": 3, ".": 4, "!": 5, "?": 6}
_TOKEN = re.compile(r"[A-Za-z\0]+(?:'[A-Za-z]+)*|[,.?!;:]|(?<!\S)-(?!\S)")


def normalize_text(text: str) -> str:
    """Raw text -> spoken words separated by spaces, with , . ? ! ; : - kept where they shape prosody."""
    _check_text(text)
    text = _to_ascii(text)
    for pattern, replacement in _RULES:  # spaces around each reading keep it from gluing onto a neighbour
        text = pattern.sub(lambda m, r=replacement: f" {r if isinstance(r, str) else r(m)} ", text)
    text = re.sub(r"[()\[\]{}]", " , ", text)  # a parenthesis is a pause
    text = re.sub(r"(?<=\w)-(?=\w)", " ", text)  # "well-known", "twenty-four"
    text = re.sub(r"-{2,}", " - ", text)  # "wait -- what"
    out: list[str] = []
    for token in _TOKEN.findall(text):
        if token[0] in _PUNCT_RANK:
            if not out:
                continue  # punctuation before the first word says nothing
            if out[-1][0] in _PUNCT_RANK:
                if _PUNCT_RANK[token] > _PUNCT_RANK[out[-1]]:
                    out[-1] = token
                continue
        out.append(token)
    if not any(token[0] not in _PUNCT_RANK for token in out):
        raise _nothing_to_say()
    spoken = " ".join(out).lower()
    spoken = re.sub(r"\0([a-z])", lambda m: m[1].upper(), spoken).replace("\0", "")
    return re.sub(r" (?=[,.?!;:])", "", spoken)


# ----------------------------------------------------------------------------------------------------------
# Sentence splitting (on raw text, so each chunk can be shown, normalised and synthesised on its own)

_NO_SPLIT_AFTER = frozenset({"dr", "mr", "mrs", "ms", "prof", "st", "mt", "no", "vs", "approx", "jr", "sr", "fig"})
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++[\"')\]]*+\s+|\n\s*")  # possessive: no backtracking


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: a split after . ! ? and at line breaks, except after abbreviations,
    initials ("J. R. R."), ellipses and before a lowercase word."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        mark = match[0].rstrip()
        if mark.startswith(".") and "\n" not in match[0]:
            previous = text[max(start, match.start() - 40):match.start()].split()
            word = previous[-1].lower().strip("\"'([") if previous else ""
            is_initial = re.fullmatch(r"(?:[a-z]\.)*[a-z]", word) is not None  # "J.", "e.g.", "U.S."
            next_lower = text[match.end():match.end() + 1].islower()
            if mark.startswith("..") or word in _NO_SPLIT_AFTER or is_initial or next_lower:
                continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    return spans


_BREAKS = (re.compile(r"(?<=[;:])\s+"), re.compile(r"(?<=,)\s+"), re.compile(r"\s+"))


def _fit(chunk: str, level: int = 0) -> list[str]:
    """Cut a chunk over MAX_SENTENCE_CHARS at ; or :, then at commas, then between words, into pieces of about
    equal length (a sentence of 203 characters becomes two of ~100, not one of 197 and a lone word, which the
    model would say with no context and struggle to end); a single 'word' longer than the limit (a pasted hash,
    say) is cut where it reaches it."""
    if len(chunk) <= MAX_SENTENCE_CHARS:
        return [chunk]
    if level == len(_BREAKS):
        return [chunk[i:i + MAX_SENTENCE_CHARS] for i in range(0, len(chunk), MAX_SENTENCE_CHARS)]
    target = len(chunk) / math.ceil(len(chunk) / MAX_SENTENCE_CHARS)
    out: list[str] = []
    current = ""
    for piece in _BREAKS[level].split(chunk):
        joined = f"{current} {piece}" if current else piece
        if len(joined) <= MAX_SENTENCE_CHARS and (len(joined) <= target or
                                                  len(joined) - target < target - len(current)):
            current = joined
            continue
        if current:
            out.append(current)
        if len(piece) <= MAX_SENTENCE_CHARS:
            current = piece
        else:
            out.extend(_fit(piece, level + 1))
            current = ""
    if current:
        out.append(current)
    return out


def split_sentences(text: str) -> list[str]:
    """Raw text -> raw chunks of at most MAX_SENTENCE_CHARS, one sentence each where sentences are short
    enough. Chunks without a letter or digit (a lone emoji, "...") are dropped: there is nothing to say."""
    _check_text(text)
    chunks = [piece for start, end in _sentence_spans(text) for piece in _fit(text[start:end].strip())]
    chunks = [chunk for chunk in chunks if any(char.isalnum() for char in chunk)]
    if not chunks:
        raise _nothing_to_say()
    return chunks


# ----------------------------------------------------------------------------------------------------------
# Grapheme to phoneme (gruut) and ids

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_THREAD = threading.local()


def _processor() -> TextProcessor:
    """gruut's en-us pipeline, built once per thread (its sqlite connection cannot cross threads).
    gruut's lexicon database has no index on the word column, so each word missing from it cost a full
    table scan (~14 ms); an in-memory copy with that index (~60 ms, ~15 MB) makes such words ~free."""
    if not hasattr(_THREAD, "processor"):
        settings = get_settings("en_US")
        lexicon = settings.lookup_phonemes  # gruut's lazily connecting DelayedSqlitePhonemizer
        connection = sqlite3.connect(":memory:")
        source = sqlite3.connect(f"file:{lexicon.db_path}?mode=ro", uri=True)
        source.backup(connection)
        source.close()
        connection.execute("CREATE INDEX IF NOT EXISTS word_index ON word_phonemes (word)")
        lexicon.phonemizer = SqlitePhonemizer(db_conn=connection, **lexicon.phonemizer_args)
        _THREAD.processor = TextProcessor(default_lang="en_US", settings={"en_US": settings})
    return _THREAD.processor


def _gruut_sentence(words: list[str]) -> list[list[str]]:
    """gruut's phones for each word it speaks, read in context (part of speech picks "read" /ɹid/ or /ɹɛd/).
    Each word is its own SSML <w>, and a capital single letter is read by its name."""
    elements = [f'<w role="gruut:letter">{w.lower()}</w>' if len(w) == 1 and w.isupper() else f"<w>{w}</w>"
                for w in words]
    processor = _processor()
    graph, root = processor(f"<speak><s>{''.join(elements)}</s></speak>", lang="en_US", ssml=True)
    return [list(w.phonemes or []) for s in processor.sentences(graph, root) for w in s if w.is_spoken]


def _gruut(words: list[str]) -> list[list[str]]:
    """Phones for exactly these words, one list per word (empty where gruut has none)."""
    phones = _gruut_sentence(words)
    if len(phones) == len(words):
        return phones
    # gruut split or merged some words ("FBI" -> F B I): ask word by word, giving up the context
    return [[p for part in _gruut_sentence([word]) for p in part] for word in words]


def _split_stress(phones: list[str]) -> list[str]:
    return [part for phone in phones for part in
            ((phone[0], phone[1:]) if phone[0] in STRESS and len(phone) > 1 else (phone,))]


def phonemize(normalized: str) -> list[str]:
    """Normalised words -> phoneme symbols: "_" between words, punctuation as its own symbol.
    A word gruut gives no phones for is spelled letter by letter, so no word is silently dropped."""
    tokens = re.findall(rf"{_WORD.pattern}|[,.?!;:]|(?<!\S)-(?!\S)", normalized)
    words = [t for t in tokens if _WORD.fullmatch(t)]
    phones = iter(_gruut(words) if words else [])
    symbols: list[str] = []
    for token in tokens:
        if not _WORD.fullmatch(token):
            symbols.append(token)
            continue
        word_phones = next(phones)
        if not word_phones:
            word_phones = [p for letter in _gruut(list(token.upper().replace("'", ""))) for p in letter]
        if symbols:
            symbols.append(WORD_BOUNDARY)
        symbols.extend(_split_stress(word_phones))
    return symbols


def phoneme_ids(phonemes: list[str]) -> list[int]:
    """Symbols -> ids; a symbol outside PHONEMES becomes UNK_ID rather than an error."""
    return [_ID_OF.get(symbol, UNK_ID) for symbol in phonemes]


def text_to_ids(text: str) -> list[int]:
    """One sentence of raw text -> [BOS_ID, ...phoneme ids..., EOS_ID], ready for the model."""
    return [BOS_ID, *phoneme_ids(phonemize(normalize_text(text))), EOS_ID]
