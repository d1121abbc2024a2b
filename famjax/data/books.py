"""Public-domain book text for the long-context evals, prepared offline.

    python -m famjax.data.books prepare --out DIR

extracts the books of the Debian packages that are installed (Jane Austen's
six novels from r-cran-janeaustenr, Moby Dick from r-cran-tokenizers, the
World English Bible from sword-text-web, the Jargon File from jargon-text)
into plain UTF-8 `DIR/<id>.txt` files and writes `DIR/manifest.json`.
Tasks read the directory named by the gin binding
`famjax.data.books.books_dir.path`, else `$FAMJAX_BOOKS_DIR`, else
~/.cache/famjax/books.

The R packages keep their data in lazy-load databases: `Rdata.rdx` (the
index) and `Rdata.rdb` (entries of a 4-byte big-endian length, then the
compressed R serialization); `read_rdb` reads them with `rdata`.
"""
from __future__ import annotations

import argparse
import functools
import glob
import gzip
import hashlib
import json
import os
import re
import sys
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import gin

ENV = "FAMJAX_BOOKS_DIR"
DEFAULT_DIR = os.path.join("~", ".cache", "famjax", "books")
PREPARE = "python -m famjax.data.books prepare --out DIR"
R_LIBS = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library",
          "/usr/lib/R/library")
AUSTEN = {"sensesensibility": "Sense and Sensibility",
          "prideprejudice": "Pride and Prejudice",
          "mansfieldpark": "Mansfield Park", "emma": "Emma",
          "northangerabbey": "Northanger Abbey", "persuasion": "Persuasion"}


@gin.configurable
def books_dir(path: Optional[str] = None) -> str:
  """The prepared books directory: `path` (gin: books_dir.path), else
  $FAMJAX_BOOKS_DIR, else ~/.cache/famjax/books."""
  return os.path.expanduser(path or os.environ.get(ENV) or DEFAULT_DIR)


# ------------------------------------------------------------ R databases
def _unpack(blob: bytes) -> bytes:
  """Decompress one lazy-load entry (or an .rdx index file)."""
  if blob[:2] == b"\x1f\x8b":
    return gzip.decompress(blob)
  body = blob[4:]
  kind = body[:1]
  if kind in (b"Z", b"2", b"X", b"0") and len(body) > 1:
    import bz2
    import lzma
    rest = body[1:]
    try:
      return {b"Z": zlib.decompress, b"2": bz2.decompress,
              b"X": lzma.decompress, b"0": bytes}[kind](rest)
    except (zlib.error, OSError, lzma.LZMAError):
      pass
  return zlib.decompress(body)


def parse_r(data: bytes):
  """An R serialization ("X\\n..." XDR) as Python objects via `rdata`."""
  import rdata
  parsed = rdata.parser.parse_data(b"RDX3\n" + data, expand_altrep=True)
  return rdata.conversion.convert(parsed)


def _strings(obj) -> List[str]:
  if isinstance(obj, str):
    return [obj]
  return [str(x) if x is not None else "" for x in list(obj)]


def read_rdb(rdb: str, rdx: Optional[str] = None) -> Dict[str, object]:
  """{name: object} of an R lazy-load database (`X.rdb` with `X.rdx`)."""
  rdx = rdx or rdb[:-len(".rdb")] + ".rdx"
  with open(rdx, "rb") as fh:
    index = parse_r(_unpack(fh.read()))
  with open(rdb, "rb") as fh:
    raw = fh.read()
  out = {}
  for name, (offset, length) in index["variables"].items():
    out[name] = parse_r(_unpack(raw[int(offset):int(offset) + int(length)]))
  return out


# ---------------------------------------------------------------- sources
def _find(patterns: Sequence[str], root: str) -> Optional[str]:
  for p in patterns:
    hits = sorted(glob.glob(os.path.join(root, p.lstrip("/"))))
    if hits:
      return hits[0]
  return None


def _r_data(pkg: str, root: str) -> Optional[str]:
  return _find([f"{lib}/{pkg}/data/Rdata.rdb" for lib in R_LIBS], root)


def austen(root: str) -> List[Tuple[str, str, str]]:
  rdb = _r_data("janeaustenr", root)
  if not rdb:
    return []
  data = read_rdb(rdb)
  return [(f"austen_{k}", f"{title} (Jane Austen)",
           "\n".join(_strings(data[k])))
          for k, title in AUSTEN.items() if k in data]


def moby_dick(root: str) -> List[Tuple[str, str, str]]:
  rdb = _r_data("tokenizers", root)
  if not rdb:
    return []
  data = read_rdb(rdb)
  if "mobydick" not in data:
    return []
  return [("melville_moby_dick", "Moby Dick (Herman Melville)",
           strip_gutenberg("\n".join(_strings(data["mobydick"]))))]


def _sword_blocks(path: str) -> List[str]:
  """Decompressed text blocks of a SWORD zText volume (*.bzz + *.bzs)."""
  import struct
  with open(path[:-1] + "s", "rb") as fh:
    idx = fh.read()
  with open(path, "rb") as fh:
    data = fh.read()
  out = []
  for i in range(len(idx) // 12):
    off, size, _ = struct.unpack("<III", idx[12 * i:12 * i + 12])
    if size:
      out.append(zlib.decompress(data[off:off + size]).decode(
          "utf-8", errors="replace"))
  return out


def _strip_markup(text: str) -> str:
  """OSIS markup -> plain text: paragraphs and titles on their own."""
  text = re.sub(r"<note[^>]*>.*?</note>", "", text, flags=re.S)
  text = re.sub(r"<title[^>]*>(.*?)</title>", r"\n\n\1\n\n", text,
                flags=re.S)
  text = re.sub(r'<div [^>]*type="x-p"[^>]*/>', "\n\n", text)
  text = re.sub(r"<[^>]+>", "", text)
  text = re.sub(r"[ \t]+([,.;:!?’”)])", r"\1", text)
  text = re.sub(r"([“‘(])[ \t]+", r"\1", text)
  lines = (" ".join(line.split()) for line in text.split("\n"))
  return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def strip_gutenberg(text: str) -> str:
  """The book between Project Gutenberg's START and END lines, if any."""
  start = re.search(r"\*\*\* ?START OF[^\n]*\n", text)
  end = re.search(r"\*\*\* ?END OF", text)
  if start and end and start.end() < end.start():
    return text[start.end():end.start()].strip() + "\n"
  return text


def bible(root: str) -> List[Tuple[str, str, str]]:
  base = _find(["/usr/share/sword/modules/texts/ztext/engWEB*",
                "/usr/share/sword/modules/texts/ztext/web"], root)
  if not base:
    return []
  parts = [_strip_markup(b) for vol in ("ot.bzz", "nt.bzz")
           if os.path.exists(os.path.join(base, vol))
           for b in _sword_blocks(os.path.join(base, vol))]
  return [("web_bible", "World English Bible", "\n\n".join(parts))] if parts \
      else []


def jargon(root: str) -> List[Tuple[str, str, str]]:
  path = _find(["/usr/share/jargon/jargon.txt*",
                "/usr/share/doc/jargon-text/jargon*.txt*",
                "/usr/share/jargon-text/*.txt*"], root)
  if not path:
    return []
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as fh:
    text = fh.read().decode("utf-8", errors="replace")
  return [("jargon_file", "The Jargon File", text)]


SOURCES = (("r-cran-janeaustenr", austen), ("r-cran-tokenizers", moby_dick),
           ("sword-text-web", bible), ("jargon-text", jargon))


def prepare(out: str, root: str = "/") -> dict:
  """Extract the installed books into `out`; returns the manifest."""
  books, missing = [], []
  for pkg, fn in SOURCES:
    got = fn(root)
    if not got:
      missing.append(pkg)
    for book_id, title, text in got:
      books.append({"id": book_id, "title": title, "package": pkg,
                    "file": f"{book_id}.txt", "text": text})
  if not books:
    raise FileNotFoundError(
        "no book source is installed; install at least one with `apt-get "
        "install -y " + " ".join(p for p, _ in SOURCES) + "`")
  os.makedirs(out, exist_ok=True)
  for b in books:
    text = b.pop("text").replace("\r\n", "\n")
    data = text.encode("utf-8")
    with open(os.path.join(out, b["file"]), "wb") as fh:
      fh.write(data)
    b.update(chars=len(text), sha256=hashlib.sha256(data).hexdigest())
  manifest = {"books": books, "missing_packages": missing}
  with open(os.path.join(out, "manifest.json"), "w") as fh:
    json.dump(manifest, fh, indent=1)
  return manifest


# ---------------------------------------------------------------- reading
def check_books_dir(path: Optional[str] = None) -> str:
  """The prepared directory, or ValueError saying how to prepare it."""
  path = os.path.expanduser(path or books_dir())
  if not os.path.isfile(os.path.join(path, "manifest.json")):
    raise ValueError(
        f"no prepared books at {path} (set {ENV} or gin "
        f"books_dir.path): run `{PREPARE.replace('DIR', path)}` first")
  return path


def load_books(path: Optional[str] = None) -> Tuple[Tuple[str, str], ...]:
  """((id, text), ...) of the prepared books, in manifest order."""
  return _load_books(check_books_dir(path))


@functools.lru_cache(maxsize=4)
def _load_books(path: str) -> Tuple[Tuple[str, str], ...]:
  with open(os.path.join(path, "manifest.json")) as fh:
    manifest = json.load(fh)
  out = []
  for b in manifest["books"]:
    with open(os.path.join(path, b["file"]), encoding="utf-8") as fh:
      out.append((b["id"], fh.read()))
  return tuple(out)


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def sentences(path: Optional[str] = None) -> Tuple[str, ...]:
  """All book sentences (whitespace collapsed, each ending in a space)."""
  return _sentences(check_books_dir(path))


@functools.lru_cache(maxsize=4)
def _sentences(path: str) -> Tuple[str, ...]:
  out = []
  for _, text in _load_books(path):
    for para in re.split(r"\n\s*\n", text):
      para = " ".join(para.split())
      out += [s + " " for s in _SENT.split(para) if len(s) > 1]
  return tuple(out)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m famjax.data.books",
                               description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  p = sub.add_parser("prepare", help="extract the installed books")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--root", default="/", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  try:
    m = prepare(args.out, args.root)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for b in m["books"]:
    print(f"{b['file']}: {b['title']}, {b['chars']} characters")
  if m["missing_packages"]:
    print("not installed: " + ", ".join(m["missing_packages"]))
  print(f"wrote {len(m['books'])} books to {args.out}; use them with "
        f"{ENV}={args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
