"""Words of feature labels and queries: Unicode letters and digits, case-folded, stemmed.

A small deterministic suffix stemmer (plurals, then -ed/-ing), enough for "oceans" to find
"ocean"; no dictionary, no language model.
"""

from __future__ import annotations

import re

# Letters and digits of any script; "_" separates words like any punctuation.
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The case-folded words of a text (letters and digits; everything else separates)."""
    return _WORD.findall(text.casefold())


def stem(word: str) -> str:
    """A small, deterministic suffix stemmer: plurals, then "-ed" / "-ing" (Porter's step 1)."""
    return _strip_verb(_strip_plural(word))


def _strip_plural(word: str) -> str:
    # Words of three letters or fewer ("is", "bus", "gas", "its") are left alone.
    if len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith("ies"):  # stories -> story, but ties -> tie
        return word[:-3] + ("y" if len(word) > 4 else "ie")
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):  # glasses, boxes, churches
        return word[:-2]
    if word.endswith(("ss", "us", "is")):  # glass, virus, analysis: not plurals
        return word
    return word[:-1]


def _strip_verb(word: str) -> str:
    if word.endswith("eed"):  # agreed -> agree; need, speed, feed stay
        return word[:-1] if _measure(word[:-3]) > 0 else word
    if word.endswith("ied"):  # carried -> carry, tied -> tie
        return word[:-3] + ("y" if len(word) > 4 else "ie")
    for suffix in ("ing", "ed"):
        if word.endswith(suffix):
            base = word[: -len(suffix)]
            # A stem needs a vowel and three letters: sing, thing, bed, red, aged stay whole.
            if len(base) >= 3 and "v" in _shape(base):
                return _repair(base)
            return word
    return word


def _repair(base: str) -> str:
    """Undo what the suffix did to the stem: related, running, making (Porter's step 1b)."""
    if base.endswith(("at", "bl", "iz")):
        return base + "e"
    if base[-1] == base[-2] and base[-1] not in "lsz" and _shape(base)[-1] == "c":
        return base[:-1]
    if _measure(base) == 1 and _shape(base).endswith("cvc") and base[-1] not in "wxy":
        return base + "e"
    return base


def _shape(word: str) -> str:
    """ "c" per consonant, "v" per vowel; "y" is a vowel after a consonant (Porter)."""
    shape: list[str] = []
    for i, ch in enumerate(word):
        vowel = ch in "aeiou" or (ch == "y" and i > 0 and shape[i - 1] == "c")
        shape.append("v" if vowel else "c")
    return "".join(shape)


def _measure(word: str) -> int:
    """Porter's m: how many vowel-consonant sequences the word holds."""
    return _shape(word).count("vc")


def terms(text: str) -> list[str]:
    """The stemmed words of a text, as search compares them."""
    return [stem(w) for w in words(text)]
