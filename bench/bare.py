#!/usr/bin/env python3
"""The bare loop the embedded target is stated against: the same library calls stoq makes per payload
with `--workers yara,peinfo` (four hashes, libmagic on the buffer, a YARA match, and for MZ files the
pefile parse and the pefile calls peinfo makes: imphash, section entropy and MD5, overlay, warnings),
nothing else: no archive, no document, no store, no output.

Usage: bare.py RULES DIR [--jobs N]   (prints payloads and seconds as JSON on stdout)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time

import magic
import pefile
import yara

_rules: yara.Rules | None = None
_magic: magic.Magic | None = None


def _init(rules_path: str) -> None:
    global _rules, _magic
    _rules = yara.compile(filepath=rules_path)
    _magic = magic.Magic(mime=True)


def one(path: str) -> int:
    assert _rules is not None and _magic is not None
    with open(path, "rb") as handle:
        data = handle.read()
    for algo in (hashlib.md5, hashlib.sha1, hashlib.sha256, hashlib.sha512):
        algo(data).hexdigest()
    _magic.from_buffer(data)
    _rules.match(data=data, timeout=30)
    if data[:2] == b"MZ":
        try:
            pe = pefile.PE(data=data)
            pe.get_imphash()
            for section in pe.sections:
                section.get_entropy()
                section.get_hash_md5()
            pe.get_overlay_data_start_offset()
            pe.get_warnings()
        except pefile.PEFormatError:
            pass
    return 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rules")
    parser.add_argument("directory")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(args.directory) for f in names)
    if args.jobs == 1:
        _init(args.rules)
        count = sum(one(p) for p in files)
    else:
        with multiprocessing.get_context("fork").Pool(args.jobs, _init, (args.rules,)) as pool:
            count = sum(pool.imap_unordered(one, files, chunksize=8))
    print(json.dumps({"payloads": count, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
