#!/usr/bin/env python3
"""Full-dispatch benchmark (issue 12): `stoq scan --recursive` with the bundled default dispatch
(extraction on) and `--workers yara,peinfo`, against the bare loop of bench/bare.py on the same root files.

    python bench/full.py [--copies 3] [--rounds 5] [--jobs 1,2] [--large] [--keep DIR]

The mixed corpus is ../shared/corpus plus archives of every format `decompress` reads, made here from
corpus files with the installed tools (a format whose tool is missing is skipped and named in the
report; rar cannot be made by a free tool: the corpus's test.rar stands for it). It is copied
``--copies`` times by ../shared/bench/make_unique.py (16 bytes appended to each file, so every root
has its own sha256). Each round runs, in turn, the bare loop and `stoq scan` at each ``--jobs``; the
report gives medians of root files per second and ``stoq/bare`` at each job count. Throughput counts
root files only: what stoq extracts from them is work the bare loop does not do, and is the point.

``--defaults`` (issue 14): `stoq scan` with the default worker set (no ``--workers``: yara, peinfo, entropy,
xorsearch, iocextract routed to text) and the default dispatch, the yara worker given the bare loop's
rules; each round also runs the issue-12 command (``--workers yara,peinfo``) as ``yp``, so that the
default set's own cost shows in the same rounds. ``--corpus-only``: the corpus without the made archives.

``--large``: instead, the scaling benchmark: larger files (each corpus file followed by the next ones,
in name order and cyclically, until it holds at least 96 KiB: mean 177 KiB), `--max-depth 0` at --jobs 1 and 2, and
stoq's speed-up from 1 to 2 jobs against the bare pool's (bench/run.py's method on other files).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
RULES = SHARED / "bench" / "rules200.yar"
BIN = Path(sys.executable).parent
SKIP = {"README.md", "expected_children.json"}
#: Members per made archive: the k-th archive holds corpus files 3k to 3k+2 (name order, cyclic), so
#: that the archives' members are the corpus itself, in its own mix of types, about once over.
PER_ARCHIVE = 3
KiB, MiB = 1 << 10, 1 << 20

SPEC = """Name: bench
Version: 1
Release: 1
Summary: bench
License: MIT
BuildArch: noarch
%description
bench
%install
mkdir -p %{buildroot}/opt/bench
cp %{_sourcedir}/* %{buildroot}/opt/bench/
%files
/opt/bench
"""


def run(*argv: str, cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=120)


def corpus_names() -> list[str]:
    return sorted(f for f in os.listdir(CORPUS) if (CORPUS / f).is_file() and f not in SKIP)


def make_archives(out: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Archives of every supported format into ``out``, each of the next PER_ARCHIVE corpus files;
    returns the formats made (with their members) and, for those skipped, why."""
    work = Path(tempfile.mkdtemp(prefix="stoq-bench-make-"))
    names = corpus_names()
    made: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    src, members = work, []  # the current format's source directory and member names

    def attempt(fmt: str, tool: str, make: Callable[[], object]) -> None:
        nonlocal src, members
        if shutil.which(tool) is None:
            skipped[fmt] = f"{tool} is not installed"
            return
        first = len(made) * PER_ARCHIVE
        members = [names[(first + i) % len(names)] for i in range(PER_ARCHIVE)]
        src = work / f"src-{fmt}"
        src.mkdir()
        for name in members:
            shutil.copy(CORPUS / name, src / name)
        try:
            make()
            made[fmt] = members
        except (subprocess.SubprocessError, OSError) as exc:
            skipped[fmt] = f"{tool} failed: {exc}"

    def zipped() -> None:
        with zipfile.ZipFile(out / "made.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for name in members:
                z.write(src / name, name)

    def fat_vhd() -> None:
        raw = work / "fat.img"
        run("mkfs.fat", "-C", str(raw), "4096", cwd=work)
        for name in members:
            run("mcopy", "-i", str(raw), str(src / name), "::" + name, cwd=work)
        run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", str(raw),
            str(out / "made-fat.vhd"), cwd=work)

    def rpm() -> None:
        (work / "bench.spec").write_text(SPEC)
        top = work / "rpmbuild"
        defines = {"_topdir": top, "_sourcedir": src, "_tmppath": work, "__os_install_post": "%{nil}",
                   "_build_id_links": "none"}
        run("rpmbuild", "-bb", *(a for k, v in defines.items() for a in ("--define", f"{k} {v}")), "bench.spec",
            cwd=work)
        shutil.copy(next(top.glob("RPMS/*/*.rpm")), out / "made.rpm")

    def deb() -> None:
        pkg = work / "deb"
        (pkg / "DEBIAN").mkdir(parents=True)
        (pkg / "DEBIAN" / "control").write_text(
            "Package: bench\nVersion: 1\nArchitecture: all\nMaintainer: b <b@example.org>\nDescription: b\n")
        shutil.copytree(src, pkg / "opt" / "bench")
        run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(pkg), str(out / "made.deb"), cwd=work)

    def compressed_tar(argv: list[str], suffix: str) -> Callable[[], None]:
        def make() -> None:
            tar = work / f"m{suffix}.tar"
            run("bsdtar", "-cf", str(tar), *members, cwd=src)
            with open(out / ("made" + suffix), "wb") as sink:
                subprocess.run([*argv, str(tar)], stdout=sink, check=True, timeout=120)
        return make

    attempt("zip", "python3", zipped)
    attempt("7z", "7z", lambda: run("7z", "a", "-bd", str(out / "made.7z"), *members, cwd=src))
    attempt("tar", "bsdtar", lambda: run("bsdtar", "-cf", str(out / "made.tar"), *members, cwd=src))
    for fmt, tool, argv, suffix in (
            ("tgz", "gzip", ["gzip", "-9c"], ".tgz"), ("bz2", "bzip2", ["bzip2", "-9c"], ".tar.bz2"),
            ("xz", "xz", ["xz", "-6c"], ".tar.xz"), ("lzma", "xz", ["xz", "--format=lzma", "-c"], ".tar.lzma"),
            ("lzip", "lzip", ["lzip", "-c"], ".tar.lz"), ("zstd", "zstd", ["zstd", "-q", "-19", "-c"], ".tar.zst")):
        attempt(fmt, tool, compressed_tar(argv, suffix))
    attempt("cab", "gcab", lambda: run("gcab", "-c", "-z", str(out / "made.cab"), *members, cwd=src))
    attempt("iso", "genisoimage", lambda: run("genisoimage", "-quiet", "-J", "-o", str(out / "made.iso"), str(src),
                                              cwd=work))
    attempt("udf", "genisoimage", lambda: run("genisoimage", "-quiet", "-udf", "-o", str(out / "made-udf.iso"),
                                              str(src), cwd=work))
    attempt("cpio", "bsdtar", lambda: run("bsdtar", "--format", "newc", "-cf", str(out / "made.cpio"), *members,
                                          cwd=src))
    attempt("xar", "bsdtar", lambda: run("bsdtar", "--format", "xar", "-cf", str(out / "made.xar"), *members,
                                         cwd=src))
    attempt("ar", "ar", lambda: run("ar", "rc", str(out / "made.a"), *members, cwd=src))
    attempt("deb", "dpkg-deb", deb)
    attempt("rpm", "rpmbuild", rpm)
    attempt("vhd", "qemu-img", fat_vhd)
    # A blank virtual disk as `qemu-img create` makes it (a few KiB; its members above go unused): 7z
    # extracts the 512 MiB of zeros inside, the kind of member issue 12 saw inflated to the member cap.
    attempt("vhd-blank", "qemu-img", lambda: run("qemu-img", "create", "-q", "-f", "vpc", str(out / "blank.vhd"),
                                                 "512M", cwd=work))
    if "vhd-blank" in made:
        made["vhd-blank"] = []
    skipped["rar"] = "no free tool makes rar: the corpus's test.rar stands for it"
    shutil.rmtree(work, ignore_errors=True)
    return made, skipped


def make_large(out: Path, least: int = 96 * KiB) -> None:
    """Each corpus file followed by the next ones (name order, cyclic) until it holds ``least`` bytes:
    real files' bytes, and each keeps the type of its first file."""
    names = corpus_names()
    contents = [(CORPUS / n).read_bytes() for n in names]
    for i, name in enumerate(names):
        data, j = bytearray(contents[i]), i
        while len(data) < least:
            j = (j + 1) % len(names)
            data += contents[j]
        (out / name).write_bytes(bytes(data))


def unique_copies(source: Path, copies: int) -> tuple[Path, int, int]:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "stoq"), str(ROOT / "plugins")], check=True)
    files = Path(tempfile.mkdtemp(prefix="stoq-bench-files-"))
    subprocess.run([sys.executable, str(SHARED / "bench" / "make_unique.py"), str(source), str(files), str(copies)],
                   check=True, capture_output=True)
    count = sum(len(names) for _, _, names in os.walk(files))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(files) for f in names)
    return files, count, size


def bare(files: Path, jobs: int) -> tuple[float, float]:
    """Root files per second of the bare loop, and its CPU seconds (children included)."""
    before = os.times()
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare.py"), str(RULES), str(files), "--jobs",
                          str(jobs)], check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - start
    after = os.times()
    return json.loads(out)["payloads"] / elapsed, (after.children_user + after.children_system
                                                    - before.children_user - before.children_system)


def stoq_command(files: Path, jobs: int, extra: list[str], workers: str | None = "yara,peinfo") -> list[str]:
    """``workers`` None: no ``--workers``, the default worker set."""
    chosen = ["--workers", workers] if workers is not None else []
    return [str(BIN / "stoq"), "scan", str(files), "--recursive", "--jobs", str(jobs), *chosen,
            "-o", f"yara.rules={RULES}", "--format", "jsonl", "--no-progress", *extra]


def stoq(files: Path, jobs: int, count: int, extra: list[str], stats: dict[str, int] | None = None,
         code: Path | None = None, workers: str | None = "yara,peinfo") -> tuple[float, float]:
    """Root files per second of `stoq scan` (fresh archive and store each run), and its CPU seconds;
    ``stats`` gets the payloads and flags of the documents; ``code``: another checkout to run."""
    work = Path(tempfile.mkdtemp(prefix="stoq-bench-"))
    env = dict(os.environ, STOQ_ARCHIVE=str(work / "archive"), STOQ_DATABASE_URL=f"sqlite:///{work / 'stoq.db'}",
               XDG_DATA_HOME=str(work / "data"))
    env.pop("STOQDEV_DEFAULT_WORKERS", None)  # the built-in default worker set, as a user gets it
    if code is not None:
        env["PYTHONPATH"] = str(code)
    try:
        with open(work / "out.jsonl", "wb") as out:
            before = os.times()
            start = time.perf_counter()
            proc = subprocess.run(stoq_command(files, jobs, extra, workers), env=env, stdout=out, stderr=subprocess.PIPE)
            elapsed = time.perf_counter() - start
            after = os.times()
        if proc.returncode not in (0, 1):
            raise SystemExit(f"stoq failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        lines = (work / "out.jsonl").read_bytes().splitlines()
        if len(lines) != count:
            raise SystemExit(f"stoq printed {len(lines)} documents for {count} files")
        if stats is not None:
            for line in lines:
                doc = json.loads(line)
                stats["payloads"] = stats.get("payloads", 0) + doc["payloads"]
                for record in doc["results"]:
                    for flag in record["flags"]:
                        stats["flag " + flag] = stats.get("flag " + flag, 0) + 1
                for error in doc["errors"]:
                    key = f"error {error['plugin']} {error['kind']}"
                    stats[key] = stats.get(key, 0) + 1
        return count / elapsed, (after.children_user + after.children_system
                                 - before.children_user - before.children_system)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", default="1,2", help="comma-separated job counts")
    parser.add_argument("--large", action="store_true", help="the scaling benchmark on larger files instead")
    parser.add_argument("--defaults", action="store_true",
                        help="stoq with the default worker set (no --workers); 'yp' is --workers yara,peinfo")
    parser.add_argument("--corpus-only", action="store_true", help="the corpus alone, no made archives")
    parser.add_argument("--keep", type=Path, help="also copy the source files (before unique copies) here")
    parser.add_argument("--compare", type=Path,
                        help="also run this other checkout (a directory holding stoq/ and stoq_plugins/, put first "
                             "on PYTHONPATH) in each round, as 'base'")
    args = parser.parse_args()
    jobs = [int(j) for j in args.jobs.split(",")]
    source = Path(tempfile.mkdtemp(prefix="stoq-bench-source-"))
    made: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    if args.large:
        make_large(source)
        extra = ["--max-depth", "0"]
    else:
        for name in os.listdir(CORPUS):
            if (CORPUS / name).is_file() and name not in SKIP:
                shutil.copy(CORPUS / name, source / name)
        if not args.corpus_only:
            made, skipped = make_archives(source)
        extra = []
    if args.keep:
        shutil.copytree(source, args.keep, dirs_exist_ok=True)
    files, count, size = unique_copies(source, args.copies)
    shutil.rmtree(source, ignore_errors=True)
    runs: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    stats: dict[str, int] = {}
    sides = ("bare", "stoq") + (("base",) if args.compare else ()) + (("yp",) if args.defaults else ())
    for r in range(args.rounds):
        for j in jobs:
            for side in sides:
                if side == "bare":
                    speed, seconds = bare(files, j)
                else:
                    workers = None if args.defaults and side == "stoq" else "yara,peinfo"
                    speed, seconds = stoq(files, j, count, extra, stats if r == 0 and j == jobs[0] and side == "stoq"
                                          else None, args.compare if side == "base" else None, workers)
                runs.setdefault(f"{side}{j}", []).append(speed)
                cpu.setdefault(f"{side}{j}", []).append(seconds)
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.1f}/s" for k, v in runs.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    report: dict[str, object] = {
        "benchmark": "large files, --max-depth 0" if args.large else (
            "default worker set, full dispatch" if args.defaults else "full dispatch"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "stoq_command": shlex.join(stoq_command(Path("FILES"), jobs[0], extra, None if args.defaults else "yara,peinfo")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]},
        "files": count, "mean_size": round(size / count), "copies": args.copies, "rounds": args.rounds,
        "formats_made": made, "formats_skipped": skipped,
        "median_root_files_per_s": {k: round(v, 1) for k, v in med.items()},
        "median_cpu_seconds": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "stoq_over_bare": {str(j): round(med[f"stoq{j}"] / med[f"bare{j}"], 3) for j in jobs},
        # each round's own ratio: robust to a load that changes between rounds (a shared machine)
        "median_round_ratio": {str(j): round(statistics.median(
            s / b for s, b in zip(runs[f"stoq{j}"], runs[f"bare{j}"])), 3) for j in jobs},
        "cpu_ratio": {str(j): round(statistics.median(cpu[f"bare{j}"]) / statistics.median(cpu[f"stoq{j}"]), 3)
                      for j in jobs},
        "all_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "first_run_counts": dict(sorted(stats.items())),
    }
    if args.defaults:
        report["yp_over_bare"] = {str(j): round(med[f"yp{j}"] / med[f"bare{j}"], 3) for j in jobs}
        report["default_set_over_yp"] = {str(j): round(med[f"stoq{j}"] / med[f"yp{j}"], 3) for j in jobs}
    if args.compare:
        report["base_over_bare"] = {str(j): round(med[f"base{j}"] / med[f"bare{j}"], 3) for j in jobs}
        report["base_cpu_ratio"] = {str(j): round(statistics.median(cpu[f"bare{j}"])
                                                  / statistics.median(cpu[f"base{j}"]), 3) for j in jobs}
    if 1 in jobs and 2 in jobs:
        bare_up, stoq_up = med["bare2"] / med["bare1"], med["stoq2"] / med["stoq1"]
        report["bare_speedup_1_to_2"] = round(bare_up, 3)
        report["stoq_speedup_1_to_2"] = round(stoq_up, 3)
        report["speedup_ratio"] = round(stoq_up / bare_up, 3)
    print(json.dumps(report, indent=2))
    shutil.rmtree(files, ignore_errors=True)


if __name__ == "__main__":
    main()
