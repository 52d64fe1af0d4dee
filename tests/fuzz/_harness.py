"""What every fuzz harness of ``tests/fuzz/`` shares (one harness file per parsing plugin).

A harness names a plugin, the MIME type its payloads get, and seeds (small files of its format, made
here or read from the sample corpus). Each input goes to the plugin's own ``scan`` (and ``accepts``),
outside the engine's error capture, so that what the engine would turn into an ``error`` entry is
seen here. A *finding* is:

- an exception of a kind that means a bug rather than a refusal of bad input (``BUGS``: IndexError,
  KeyError, TypeError, struct.error, RecursionError, UnicodeError...), wherever it was raised (the
  plugin, its helper module or a parsing library it does not guard);
- a result the framework would refuse (``stoq.runner.checked``);
- a crash of the process or an input taking longer than ``TIMEOUT`` seconds.

Any other exception (ValueError, OSError, a library's own format error) is the plugin refusing input
it cannot read: recorded by the engine as a named error, not a finding.

Engines: with atheris installed (``pip install atheris``: a wheel for CPython 3.11 on Linux x86-64,
libFuzzer included), ``main`` runs libFuzzer, coverage-guided, the plugin's modules and their parsing
libraries instrumented; without it, a seeded mutation loop of our own (bit flips, interesting bytes,
cuts, repeats, splices; no coverage feedback). Both take ``--runs N --seed S``, stop at the first
finding with exit status 1 (the input written to ``--artifacts``), and print one JSON line on
stdout: ``{"target", "engine", "runs", "seconds", "execs_per_second"}``.

    .venv/bin/python tests/fuzz/fuzz_pe.py --runs 2000 --seed 1       # a short run (the CI test's)
    .venv/bin/python tests/fuzz/fuzz_pe.py --runs 0 --max-seconds 600 # a longer one (libFuzzer flags follow --)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import random
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]
CORPUS = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared")) / "corpus"

#: Exception kinds that mean a bug, not a refusal of bad input.
BUGS: tuple[type[BaseException], ...] = (IndexError, KeyError, AttributeError, TypeError, NameError, AssertionError,
                                         ZeroDivisionError, RecursionError, struct.error, UnicodeError, OverflowError,
                                         SystemError)
#: Seconds one input may take before it is a finding (libFuzzer's -timeout; the loop measures).
TIMEOUT = 10
#: Largest input the fuzzers make, in bytes.
MAX_LEN = 64 * 1024


class Finding(Exception):
    """A harness found a bug (see the module's docstring)."""


@dataclass
class Target:
    """A plugin under fuzzing: ``module:Class``, the MIME type its payloads get, seeds, options."""

    name: str
    plugin: str
    mime: str
    seeds: Callable[[], list[bytes]]
    options: dict[str, Any] = field(default_factory=dict)
    #: Check run on each result (beyond ``checked``); raises ``Finding``.
    check: Callable[[Any, bytes], None] | None = None
    #: Calls the parsing function itself instead of the plugin (``(data) -> None``), when the plugin
    #: wraps it in something a fuzzer cannot go through (a child process).
    direct: Callable[[], Callable[[bytes], Any]] | None = None

    def load(self) -> Callable[[bytes], None]:
        """The function a fuzzer calls with each input."""
        from stoq.plugin import Payload
        from stoq.runner import as_result, checked

        if self.direct is not None:
            call = self.direct()

            def one(data: bytes) -> None:
                guarded(lambda: call(data))
            return one
        module, cls_name = self.plugin.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        plugin = cls(cls.Options(**self.options))
        plugin.setup()
        options = plugin.options

        def one_input(data: bytes) -> None:
            payload = Payload(content=data, payload_id="fuzz", filename="fuzz.bin", mime=self.mime,
                              sha256=hashlib.sha256(data).hexdigest(), depth=0, bytes_left=16 * MAX_LEN)

            def run() -> Any:
                if not plugin.accepts(payload):
                    return None
                return plugin.scan(payload, options)

            value = guarded(run)
            if value is not None:
                try:
                    result = checked(as_result(value))
                except (TypeError, ValueError) as exc:
                    raise Finding(f"a result the framework refuses: {exc}") from exc
                if self.check is not None:
                    self.check(result, data)
        return one_input


def guarded(call: Callable[[], Any]) -> Any:
    """``call()``; a refusal (any exception outside ``BUGS``) gives None, a bug raises ``Finding``."""
    try:
        return call()
    except BUGS as exc:
        raise Finding(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
    except Exception:
        return None


def corpus(*names: str) -> list[bytes]:
    """Files of the sample corpus (absent ones left out: the harness still runs on its own seeds)."""
    return [(CORPUS / n).read_bytes()[:MAX_LEN] for n in names if (CORPUS / n).is_file()]


# -- the mutation loop used when atheris is not installed ----------------------------------------------

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)
INTERESTING32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000)


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four random edits of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # an interesting byte
            buf[rng.randrange(len(buf))] = rng.choice(INTERESTING)
        elif op == 2 and len(buf) >= 4:  # an interesting 32-bit value, either byte order
            i = rng.randrange(len(buf) - 3)
            buf[i:i + 4] = struct.pack(rng.choice("<>") + "I", rng.choice(INTERESTING32))
        elif op == 3 and buf:  # cut the tail
            del buf[rng.randrange(len(buf)):]
        elif op == 4 and buf:  # delete a chunk
            i = rng.randrange(len(buf))
            del buf[i:i + rng.randint(1, 64)]
        elif op == 5 and buf:  # repeat a chunk
            i = rng.randrange(len(buf))
            chunk = buf[i:i + rng.randint(1, 64)]
            buf[i:i] = chunk * rng.randint(1, 8)
        elif op == 6 and pool:  # splice another seed in
            other = rng.choice(pool)
            if other:
                j = rng.randrange(len(other))
                i = rng.randrange(len(buf) + 1)
                buf[i:i + rng.randint(0, 64)] = other[j:j + rng.randint(1, 256)]
        else:  # random bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(buf[:MAX_LEN])


def loop(one_input: Callable[[bytes], None], seeds: list[bytes], runs: int, seed: int, max_seconds: float,
         artifacts: Path) -> int:
    """The seeded mutation loop: the seeds first, then ``runs`` mutants (0: until ``max_seconds``)."""
    rng = random.Random(seed)
    pool = seeds or [b""]
    done = 0
    start = time.monotonic()
    while True:
        if runs and done >= runs or max_seconds and time.monotonic() - start >= max_seconds:
            return done
        data = pool[done] if done < len(pool) else mutate(rng, rng.choice(pool), pool)
        began = time.monotonic()
        try:
            one_input(data)
        except Finding as exc:
            save(artifacts, "crash", data)
            print(f"finding after {done} runs: {exc}", file=sys.stderr)
            raise SystemExit(1)
        if time.monotonic() - began > TIMEOUT:
            save(artifacts, "timeout", data)
            print(f"finding after {done} runs: an input took over {TIMEOUT} s", file=sys.stderr)
            raise SystemExit(1)
        done += 1


def save(artifacts: Path, kind: str, data: bytes) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"{kind}-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    print(f"input written to {path}", file=sys.stderr)


def main(target: Target) -> None:
    """The harness's command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=f"Fuzz the {target.name} plugin.")
    parser.add_argument("--runs", type=int, default=1000, help="Inputs to run (0: no limit).")
    parser.add_argument("--seed", type=int, default=1, help="The random seed.")
    parser.add_argument("--max-seconds", type=float, default=0, help="Stop after this long (0: no limit).")
    parser.add_argument("--engine", choices=("auto", "atheris", "loop"), default="auto")
    parser.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"), help="Where findings go.")
    parser.add_argument("libfuzzer", nargs="*", help="More libFuzzer flags (after --).")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # parsing libraries warn about every damaged input
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "loop"
    seeds = [s[:MAX_LEN] for s in target.seeds()]
    if engine == "loop":
        one_input = target.load()
        start = time.monotonic()
        done = loop(one_input, seeds, args.runs, args.seed, args.max_seconds, args.artifacts)
        report(target, engine, done, time.monotonic() - start)
        return
    import atheris

    import stoq.engine  # noqa: F401  # the framework, pydantic and friends: loaded, not instrumented
    import stoq.runner  # noqa: F401

    with atheris.instrument_imports():  # the plugin, its helper modules, the libraries it parses with
        one_input = target.load()
    start = time.monotonic()

    def fuzz_one(data: bytes) -> None:
        try:
            one_input(data)
        except Finding as exc:  # said here too: atheris's own report of it goes to stdout
            print(f"finding: {exc}", file=sys.stderr, flush=True)
            raise  # atheris reports it, libFuzzer writes the input and exits non-zero

    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-"))
    (work / "new").mkdir()
    (work / "seeds").mkdir()
    for seed in seeds:
        (work / "seeds" / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    flags = [f"-seed={args.seed}", f"-max_len={MAX_LEN}", f"-timeout={TIMEOUT}", "-rss_limit_mb=4096",
             f"-artifact_prefix={args.artifacts}/", "-print_final_stats=1"]
    flags += [f"-runs={args.runs}"] if args.runs else []
    flags += [f"-max_total_time={int(args.max_seconds)}"] if args.max_seconds else []
    executed = {"n": 0, "said": time.monotonic(), "start": start}

    def counted(data: bytes) -> None:
        if not executed["n"]:
            executed["start"] = time.monotonic()  # the rate leaves the start-up (instrumented imports) out
        # libFuzzer ends the process with exit(), past Python's atexit: the report is printed from here,
        # at the last run (--runs) and every 30 s (--max-seconds)
        executed["n"] += 1
        fuzz_one(data)
        now = time.monotonic()
        if executed["n"] == args.runs or now - executed["said"] >= 30:
            executed["said"] = now
            report(target, "atheris", executed["n"], now - executed["start"])

    atheris.Setup([sys.argv[0], *flags, *args.libfuzzer, str(work / "new"), str(work / "seeds")], counted)
    atheris.Fuzz()


def report(target: Target, engine: str, runs: int, seconds: float) -> None:
    print(json.dumps({"target": target.name, "engine": engine, "runs": runs, "seconds": round(seconds, 2),
                      "execs_per_second": round(runs / seconds, 1) if seconds else None}), flush=True)
