"""Run the fuzz targets of ``fuzz/targets.py`` under atheris (coverage-guided libFuzzer).

One target, libFuzzer options passed through::

    python fuzz/run.py load_model NEW_CORPUS_DIR fuzz/corpus/load_model -max_total_time=60

Every target for a bounded time each (what CI runs); exits 1 when any target found a crash or
an undocumented exception, after running them all::

    python fuzz/run.py --all --seconds 30

``--all`` gives libFuzzer a scratch directory first (new inputs go there, never into the
repository's seed corpus ``fuzz/corpus/NAME``) and writes crash inputs to ``--artifacts``
(default ``fuzz-artifacts/``).  To keep a finding: fix it, copy the crash file into
``fuzz/corpus/NAME/`` (``tests/test_fuzz_corpus.py`` then replays it in every test run).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _fuzz_one(name, libfuzzer_args):
    import atheris

    with atheris.instrument_imports(include=["fastbp", "zipfile", "gzip"]):
        sys.path.insert(0, HERE)
        import targets

    def test_one_input(data):
        targets.run_documented(name, data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


def _fuzz_all(seconds, artifacts):
    sys.path.insert(0, HERE)
    from targets import SHM, TARGETS

    os.makedirs(artifacts, exist_ok=True)
    failed = []
    for name in TARGETS:
        # libFuzzer's new inputs and the targets' files (FASTBP_FUZZ_SCRATCH), removed here
        with tempfile.TemporaryDirectory(prefix=f"fastbp-fuzz-{name}-", dir=SHM) as scratch:
            start = time.perf_counter()
            new_inputs, files = os.path.join(scratch, "new"), os.path.join(scratch, "files")
            os.mkdir(new_inputs)
            os.mkdir(files)
            cmd = [sys.executable, os.path.abspath(__file__), name, new_inputs,
                   os.path.join(HERE, "corpus", name), f"-max_total_time={seconds}",
                   "-timeout=20", "-rss_limit_mb=3072", "-print_final_stats=1",
                   f"-artifact_prefix={os.path.join(artifacts, name)}-"]
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  env=dict(os.environ, FASTBP_FUZZ_SCRATCH=files))
            log = done.stdout + done.stderr
            runs = next((line.split()[-1] for line in log.splitlines()
                         if line.startswith("stat::number_of_executed_units")), "?")
            status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
            print(f"fuzz {name}: {runs} inputs in {time.perf_counter() - start:.0f} s, {status}",
                  flush=True)
            if done.returncode:
                failed.append(name)
                # the finding, without libFuzzer's progress lines
                print("\n".join(line for line in log.splitlines()
                                if not line.startswith(("#", "INFO:")))[-8000:], flush=True)
    if failed:
        print(f"fuzz: findings in {failed}; crash inputs are in {artifacts}/", flush=True)
    return 1 if failed else 0


def main():
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        _fuzz_one(sys.argv[1], sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description="run every fuzz target for a bounded time")
    parser.add_argument("--all", action="store_true", required=True)
    parser.add_argument("--seconds", type=int, default=30, help="per target (default 30)")
    parser.add_argument("--artifacts", default="fuzz-artifacts",
                        help="directory for crash inputs (default fuzz-artifacts/)")
    args = parser.parse_args()
    return _fuzz_all(args.seconds, args.artifacts)


if __name__ == "__main__":
    sys.exit(main())
