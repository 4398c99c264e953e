"""Tests of ccdlib.wordnet on a hand-made WordNet snippet (the real files' format, ``man 5 wndb``)."""
from __future__ import annotations

import numpy as np
import pytest

from ccdlib import wordnet as W

# data.noun: offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [symbol offset pos src/tgt]... | gloss
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00000001 03 n 01 entity 0 001 ~ 00000010 n 0000 | that which exists
00000010 05 n 01 animal 0 003 @ 00000001 n 0000 ~ 00000020 n 0000 ~ 00000040 n 0000 | a living organism
00000020 05 n 02 horse 0 Equus_caballus 0 003 @ 00000010 n 0000 ~ 00000030 n 0000 + 01234567 v 0101 | a horse
00000030 05 n 01 sorrel 0 001 @ 00000020 n 0000 | a horse of a brownish orange colour
00000040 05 n 01 cattle 0 002 @ 00000010 n 0000 ~ 00000041 n 0000 | domestic bovines
00000041 05 n 01 ox 0 001 @ 00000040 n 0000 | castrated bull
00000042 05 n 01 cow 0 001 @ 00000040 n 0000 | female of domestic cattle
00000050 18 n 01 Seabiscuit 0 001 @i 00000020 n 0000 | a racehorse (an instance)
00000060 05 n 01 big_cat 0 002 @ 00000010 n 0000 ~ 00000061 n 0000 | large wild cats
00000061 05 n 01 lion 0 001 @ 00000060 n 0000 | large tawny cat
00000070 05 n 01 cow 0 001 @ 00000010 n 0000 | mature female of mammals
00000080 17 n 01 planet 0 001 @ 00000081 n 0000 | a body revolving around a star
00000081 17 n 01 celestial_body 0 001 @ 00000001 n 0000 | a natural object visible in the sky
"""
# index.noun: lemma pos synset_cnt p_cnt [symbol]... sense_cnt tagsense_cnt offset... (sense order)
INDEX_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
horse n 1 2 @ ~ 1 0 00000020
equus_caballus n 1 1 @ 1 0 00000020
sorrel n 1 1 @ 1 0 00000030
cow n 2 1 @ 2 1 00000042 00000070
big_cat n 1 2 @ ~ 1 0 00000060
planet n 1 1 @ 1 0 00000080
"""
SORREL, OX, LION, SEABISCUIT = 30, 41, 61, 50


@pytest.fixture(scope="module")
def wn(tmp_path_factory) -> W.WordNetNouns:
    d = tmp_path_factory.mktemp("wn")
    (d / "data.noun").write_text(DATA_NOUN)
    (d / "index.noun").write_text(INDEX_NOUN)
    return W.read_wordnet(d)


def test_parse_pointers_words_and_senses(wn):
    assert wn.hypernyms[30] == (20,)                 # sorrel @ horse
    assert wn.hypernyms[50] == (20,)                 # an instance hypernym (@i) counts
    assert wn.hypernyms[20] == (10,)                 # hyponym (~) and verb (+) pointers do not
    assert wn.hypernyms[1] == ()
    assert wn.words[20] == ("horse", "equus_caballus") and wn.words[60] == ("big_cat",)
    assert set(wn.hypernyms) == {1, 10, 20, 30, 40, 41, 42, 50, 60, 61, 70, 80, 81}   # the licence lines skipped
    assert wn.senses["cow"] == (42, 70) and wn.senses["big_cat"] == (60,)


def test_ancestors_walk_to_the_root(wn):
    assert W.ancestors(SORREL, wn.hypernyms) == {30, 20, 10, 1}
    assert W.ancestors(OX, wn.hypernyms) == {41, 40, 10, 1}
    assert W.ancestors(1, wn.hypernyms) == {1}


def test_prompt_synsets_normalise_the_name(wn):
    assert W.prompt_synsets("big cat", wn) == (60,)
    assert W.prompt_synsets("Horse", wn) == (20,)
    assert W.prompt_synsets("unicorn", wn) == ()


def test_hierarchy_matrix_horse_cow_big_cat(wn):
    targets = [SORREL, OX, LION, SEABISCUIT]
    names = ["horse", "cow", "big cat", "planet", "unicorn"]
    m, missing = W.hierarchy_matrix(names, targets, wn, climb=1)
    expected = np.array([[1, 0, 0, 1],     # horse <- sorrel, Seabiscuit (instance)
                         [0, 1, 0, 0],     # cow: nothing below; its first sense climbs to cattle <- ox
                         [0, 0, 1, 0],     # big cat <- lion
                         [0, 0, 0, 0],     # planet: nothing below it nor below celestial body
                         [0, 0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(m, expected)
    assert missing == ["planet", "unicorn"]
    m2, _ = W.hierarchy_matrix(["cow"], targets, wn, climb=2)
    np.testing.assert_array_equal(m2, expected[[1]])      # climbing stops at the first level that covers a target
    m0, missing0 = W.hierarchy_matrix(names, targets, wn, climb=0)
    np.testing.assert_array_equal(m0[[0, 2]], expected[[0, 2]])
    assert missing0 == ["cow", "planet", "unicorn"] and not m0[[1, 3, 4]].any()


def test_classes_below_counts_every_sense(wn):
    assert W.classes_below([20], [SORREL, OX, SEABISCUIT], wn) == [0, 2]
    assert W.classes_below([42, 70], [SORREL, OX], wn) == []        # it looks down: nothing lies below a cow
    assert W.classes_below([60, 40], [SORREL, OX, LION], wn) == [1, 2]   # either synset counts


def test_first_sense_only_climbs(wn):
    """Climbing from every sense would take cow's second sense (mature female mammal) up to 'animal' and cover
    the horse; only the first sense climbs, to cattle."""
    m, _ = W.hierarchy_matrix(["cow"], [SORREL, OX], wn, climb=1)
    np.testing.assert_array_equal(m, [[0, 1]])


def test_imagenet_offsets_are_wordnet_offsets():
    off = W.imagenet_offsets()
    assert len(off) == 1000 and len(set(off)) == 1000
    assert off[0] == 1440764          # tench, n01440764
    assert off[339] == 2389026        # sorrel, n02389026
