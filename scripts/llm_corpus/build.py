"""Build the text corpus and tokenizer for the default LLMs from Debian packages.

Downloads public-domain (and PSF-licensed) text with `apt-get download` and unpacks it with
`dpkg -x` into a cache directory (nothing is installed), dumps the SWORD modules with the
unpacked `diatheke`, cleans and de-duplicates paragraphs, holds out ~1% of the documents for
validation, trains the byte-level BPE tokenizer, and writes pre-tokenized ids:

    OUT/train.txt.xz, OUT/val.txt.xz       cleaned documents, separated by a form feed
    OUT/train_ids.npy.xz, OUT/val_ids.npy.xz   uint16 ids, documents joined by <|endoftext|>
    OUT/tokenizer/                         tokenizer.json + tokenizer_config.json (chat template)
    OUT/stats.json

Usage: python scripts/llm_corpus/build.py [--cache ~/.cache/wakeline/llm_corpus] [--out .llmdata]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm.train.tokenizer import save_hf_tokenizer, train_tokenizer  # noqa: E402

PACKAGES = [
    "bible-kjv", "bible-kjv-text", "sword-text-web", "sword-comm-mhcc", "sword-comm-tdavid",
    "diatheke", "libsword1.9.0", "libsword-common", "libclucene-core1v5", "python3.11-doc", "fortunes",
]
SWORD_MODULES = {"web": "engWEB2015eb", "mhcc": "MHCC", "tdavid": "TDavid"}
# diatheke stops inside the WEB's Psalms (a glossary is attached to an early psalm), so the WEB
# is dumped around them; the KJV supplies the Psalms.
WEB_RANGES = ["Genesis 1:1-Job 42:17", "Proverbs 1:1-Malachi 4:6", "Matthew 1:1-Revelation 22:21"]
DOC_SEP = "\f"


def fetch(cache: Path) -> Path:
    """Download and unpack the Debian packages into cache/root; returns the root."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True,
                       stderr=subprocess.DEVNULL)
    if not (root / ".done").exists():
        root.mkdir(exist_ok=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        (root / ".done").touch()
    return root


def _run(cmd: list[str], root: Path) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(root / "usr/lib/x86_64-linux-gnu"),
               SWORD_PATH=str(root / "usr/share/sword"), HOME=str(root))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True)
    return out.stdout.decode("utf-8", errors="replace")


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def kjv_docs(root: Path) -> list[str]:
    """King James Bible, one document per chapter, verse numbers removed."""
    text = _run([str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "gen1:1-rev22:21"], root)
    docs, verses, title = [], [], None
    for line in text.splitlines():
        if re.fullmatch(r"[1-3]? ?[A-Z][A-Za-z ]+ \d+", line.strip()) and not line.startswith(" "):
            if title and verses:
                docs.append(title + "\n" + "\n".join(verses))
            title, verses = line.strip(), []
        elif m := re.match(r"\s+\d+ (.*)", line):
            verses.append(m.group(1).strip())
        elif line.strip() and verses:
            verses[-1] += " " + line.strip()
    if title and verses:
        docs.append(title + "\n" + "\n".join(verses))
    return docs


def sword_docs(root: Path, module: str) -> list[str]:
    """A SWORD module dumped with diatheke; bibles per chapter, commentaries per paragraph."""
    ranges = WEB_RANGES if module == "engWEB2015eb" else ["Genesis 1:1-Revelation 22:21"]
    text = "\n".join(_run([str(root / "usr/bin/diatheke"), "-b", module, "-f", "plain", "-k", k], root)
                     for k in ranges)
    entries = re.split(r"^(?=(?:[1-3] )?[A-Z][A-Za-z ]+ \d+:\d+: )", text, flags=re.M)
    if module == "engWEB2015eb":
        chapters: dict[str, list[str]] = {}
        for e in entries:
            m = re.match(r"((?:[1-3] )?[A-Z][A-Za-z ]+ \d+):\d+: (.*)", e, flags=re.S)
            if m:
                verse = _norm(m.group(2).replace(f"({module})", ""))
                if verse:
                    chapters.setdefault(m.group(1), []).append(verse)
        return [k + "\n" + "\n".join(v) for k, v in chapters.items()]
    # Commentaries repeat an entry for every verse of its range: de-duplicate paragraphs.
    docs = []
    for e in entries:
        body = re.sub(r"^(?:[1-3] )?[A-Z][A-Za-z ]+ \d+:\d+: ", "", e).replace(f"({module})", "")
        body = body.replace("Chapter Outline", "\n")
        for para in re.split(r"\* ?Verses? [\d\-, ]+ ?\*|\n\s*\n|\s{4,}", body):
            para = _norm(para.replace("*", ""))
            if len(para) >= 40:
                docs.append(para)
    return docs


def python_docs(root: Path) -> list[str]:
    """Python 3.11 documentation sources with the heaviest reST markup stripped."""
    docs = []
    for path in sorted((root / "usr/share/doc/python3.11/html/_sources").rglob("*.rst.txt")):
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            if re.fullmatch(r"\s*([=\-~^*#+\"'`])\1{2,}\s*", line) or line.lstrip().startswith(".. "):
                continue
            line = re.sub(r":[a-z:]+:`~?!?([^`<]*?)(?: <[^>]*>)?`", r"\1", line)
            lines.append(line.replace("``", "").rstrip())
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        # Split long pages at blank lines into chunks of a few KB so dedup and the split work.
        chunk: list[str] = []
        for para in text.split("\n\n"):
            chunk.append(para)
            if sum(map(len, chunk)) > 3000:
                docs.append("\n\n".join(chunk))
                chunk = []
        if chunk:
            docs.append("\n\n".join(chunk))
    return docs


def fortune_docs(root: Path) -> list[str]:
    """The fortunes databases, one fortune per document."""
    docs = []
    for path in sorted((root / "usr/share/games/fortunes").iterdir()):
        if path.suffix or not path.is_file():
            continue
        for f in path.read_text(errors="replace").split("\n%\n"):
            if f.strip():
                docs.append(f.strip("\n"))
    return docs


def split_dedup(sources: dict[str, list[str]], val_every: int = 100):
    """Drop exact duplicates (after whitespace normalisation); hold out by hash."""
    seen, train, val, stats = set(), [], [], {}
    for name, docs in sources.items():
        kept, chars = 0, 0
        for d in docs:
            d = d.replace(DOC_SEP, " ").strip()
            h = hashlib.sha1(_norm(d).lower().encode()).digest()
            if not d or h in seen:
                continue
            seen.add(h)
            kept, chars = kept + 1, chars + len(d)
            (val if int.from_bytes(h[:4], "little") % val_every == 0 else train).append(d)
        stats[name] = {"docs": kept, "chars": chars}
    return train, val, stats


def _save_ids(path: Path, docs: list[str], tok) -> int:
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16)
    buf = io.BytesIO()
    np.save(buf, arr)
    path.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    return len(arr)


def main() -> None:
    """Fetch, clean, split, train the tokenizer and write the pre-tokenized corpus."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/wakeline/llm_corpus")
    ap.add_argument("--out", type=Path, default=REPO / ".llmdata")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="reuse this folder's tokenizer.json (e.g. models/llm/dense, to warm-start from it)")
    args = ap.parse_args()
    t0 = time.time()
    root = fetch(args.cache)
    sources = {
        "kjv": kjv_docs(root),
        "web": sword_docs(root, SWORD_MODULES["web"]),
        "mhcc": sword_docs(root, SWORD_MODULES["mhcc"]),
        "tdavid": sword_docs(root, SWORD_MODULES["tdavid"]),
        "python-doc": python_docs(root),
        "fortunes": fortune_docs(root),
    }
    train, val, stats = split_dedup(sources)
    print(f"extracted {len(train)} train / {len(val)} val documents in {time.time() - t0:.0f}s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", train), ("val", val)):
        (args.out / f"{name}.txt.xz").write_bytes(lzma.compress(DOC_SEP.join(docs).encode(), preset=6))
    if args.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    else:
        tok = train_tokenizer(train, vocab_size=args.vocab_size)
    save_hf_tokenizer(tok, args.out / "tokenizer")
    stats["tokens"] = {"train": _save_ids(args.out / "train_ids.npy.xz", train, tok),
                       "val": _save_ids(args.out / "val_ids.npy.xz", val, tok)}
    stats["chars"] = {"train": sum(map(len, train)), "val": sum(map(len, val))}
    stats["seconds"] = round(time.time() - t0, 1)
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
