"""Every input of the fuzz corpus (fuzz/corpus/TARGET/*: the seeds and each finding kept after
its fix) replayed through its target: only the documented exceptions may come out."""

import pathlib
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
targets = pytest.importorskip("targets")  # fuzz/targets.py (the source tree's fuzz/ folder)

CASES = sorted((name, path) for name in targets.TARGETS
               for path in (FUZZ / "corpus" / name).iterdir())


def test_every_target_has_a_corpus():
    assert {name for name, _ in CASES} == set(targets.TARGETS)


@pytest.mark.parametrize("name,path", CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_corpus_input(name, path):
    targets.run_documented(name, path.read_bytes())
