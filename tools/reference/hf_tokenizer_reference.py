#!/usr/bin/python3
"""Independent reference for Hugging Face byte-level BPE tokenizer.json files.

Written from the semantics of the Rust `tokenizers` crate (tokenizers/src/...):

* added_vocabulary.rs: added tokens are cut out of the text before anything else,
  leftmost-longest (aho-corasick MatchKind::LeftmostLongest).  Tokens with
  "normalized": false are matched in the raw text; the remaining pieces are then
  normalized one by one and tokens with "normalized": true are matched in them.
  single_word / lstrip / rstrip use the regexes \\w and \\s (Unicode) at the match edges.
* normalizers: NFC (unicodedata), or a Sequence of NFC.
* pre_tokenizers/split.rs: Split(Regex, behavior Isolated, invert false): every match is a
  piece and so is every gap between matches; empty pieces disappear.
* pre_tokenizers/byte_level.rs: ByteLevel prepends " " to each piece that does not already
  start with one when add_prefix_space, splits with the GPT-2 pattern when use_regex, then
  maps every UTF-8 byte to its printable stand-in (GPT-2's bytes_to_unicode).
* models/bpe/model.rs + word.rs: each piece's characters are looked up in the vocabulary
  (missing ones become unk_token if there is one, else vanish); ignore_merges returns the
  whole piece when it is itself a vocabulary entry; otherwise the adjacent pair with the
  lowest merge rank (leftmost on a tie) is merged until no pair has a rank.
* decoders/byte_level.rs: tokens map back to bytes (a token with a character outside the
  table contributes its own UTF-8 bytes), and the bytes are decoded lossily
  (invalid sequences become U+FFFD, like String::from_utf8_lossy).

The Onig/Rust regex classes \\s, \\p{L}, \\p{N} are the Unicode ones; the `regex` module's
\\s is Unicode White_Space too, so patterns are used unchanged.  Needs Python 3 and the
`regex` module (Debian python3-regex).
"""

import json
import unicodedata

import regex

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def bytes_to_unicode():
    """GPT-2's table: printable bytes stand for themselves, the others get 256 + n."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


class UnsupportedError(ValueError):
    pass


def _normalizer_fn(spec):
    if spec is None:
        return lambda s: s
    kind = spec.get("type")
    if kind == "NFC":
        return lambda s: unicodedata.normalize("NFC", s)
    if kind == "Sequence":
        fns = [_normalizer_fn(n) for n in spec["normalizers"]]

        def run(s):
            for f in fns:
                s = f(s)
            return s
        return run
    raise UnsupportedError("normalizer.type %r" % kind)


def _split_isolated(text, compiled):
    """Matches and the gaps between them, in order, without empty pieces."""
    out = []
    last = 0
    for m in compiled.finditer(text):
        if m.start() > last:
            out.append(text[last:m.start()])
        if m.end() > m.start():
            out.append(m.group(0))
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


class ByteLevelBPE:
    def __init__(self, spec):
        model = spec["model"]
        if model.get("type") != "BPE":
            raise UnsupportedError("model.type %r" % model.get("type"))
        if model.get("byte_fallback"):
            raise UnsupportedError("model.byte_fallback")
        self.normalize = _normalizer_fn(spec.get("normalizer"))
        self.steps = self._pre_tokenizer_steps(spec.get("pre_tokenizer"))
        self.vocab = dict(model["vocab"])
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.unk = model.get("unk_token")
        self.ranks = {}
        for rank, m in enumerate(model["merges"]):
            a, b = m.split(" ") if isinstance(m, str) else m
            self.ranks[(a, b)] = rank
        self.added = []
        for t in spec.get("added_tokens", []):
            self.added.append(dict(t))
        self.id_to_token = {v: k for k, v in self.vocab.items()}
        for t in self.added:
            self.id_to_token[t["id"]] = t["content"]
        self.cache = {}

    @staticmethod
    def _pre_tokenizer_steps(spec):
        if spec is None:
            raise UnsupportedError("pre_tokenizer null")
        items = spec["pretokenizers"] if spec.get("type") == "Sequence" else [spec]
        steps = []
        for p in items:
            if p["type"] == "Split":
                if p.get("behavior") != "Isolated" or p.get("invert"):
                    raise UnsupportedError("pre_tokenizer Split behavior")
                pat = p["pattern"]
                if "Regex" in pat:
                    steps.append(("split", regex.compile(pat["Regex"])))
                else:
                    steps.append(("split", regex.compile(regex.escape(pat["String"]))))
            elif p["type"] == "ByteLevel":
                steps.append(("bytelevel", bool(p.get("add_prefix_space", True)),
                              bool(p.get("use_regex", True))))
            else:
                raise UnsupportedError("pre_tokenizer.type %r" % p["type"])
        return steps

    # ---- added tokens -------------------------------------------------------------
    def _find_added(self, text, tokens):
        """[(id or None, piece)] covering text; leftmost-longest matching."""
        if not tokens:
            return [(None, text)]
        out = []
        start_offset = 0
        pos = 0
        while pos < len(text):
            best = None
            # Leftmost: the first position where any token matches; longest there.
            for t, pattern in tokens:
                if text.startswith(pattern, pos) and (best is None or len(pattern) > len(best[1])):
                    best = (t, pattern)
            if best is None:
                pos += 1
                continue
            t, pattern = best
            start, stop = pos, pos + len(pattern)
            pos = stop
            if t.get("single_word"):
                before_ok = start == 0 or not regex.search(r"\w$", text[:start])
                after_ok = stop == len(text) or not regex.match(r"\w", text[stop:])
                if not (before_ok and after_ok):
                    # aho-corasick resumes after the discarded match
                    continue
            if t.get("lstrip"):
                m = regex.search(r"\s*$", text[:start])
                start = max(m.start(), start_offset)
            if t.get("rstrip"):
                stop += regex.match(r"\s*", text[stop:]).end()
                pos = stop
            if start_offset < start:
                out.append((None, text[start_offset:start]))
            out.append((t["id"], text[start:stop]))
            start_offset = stop
        if start_offset < len(text):
            out.append((None, text[start_offset:]))
        return out

    # ---- pipeline -----------------------------------------------------------------
    def pre_tokenize(self, text):
        pieces = [text]
        for step in self.steps:
            new = []
            for p in pieces:
                if step[0] == "split":
                    new.extend(_split_isolated(p, step[1]))
                else:
                    _, prefix, use_regex = step
                    if prefix and not p.startswith(" "):
                        p = " " + p
                    if use_regex:
                        new.extend(_split_isolated(p, regex.compile(GPT2_PATTERN)))
                    elif p:
                        new.append(p)
            pieces = new
        return ["".join(BYTE_TO_CHAR[b] for b in p.encode("utf-8")) for p in pieces]

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        symbols = []
        for ch in word:
            if ch in self.vocab:
                symbols.append(ch)
            elif self.unk is not None:
                symbols.append(self.unk)
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                r = self.ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        ids = [self.vocab[s] for s in symbols]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        raw_tokens = [(t, t["content"]) for t in self.added if not t.get("normalized", False)]
        norm_tokens = [(t, self.normalize(t["content"])) for t in self.added
                       if t.get("normalized", False)]
        ids = []
        for tid, piece in self._find_added(text, raw_tokens):
            if tid is not None:
                ids.append(tid)
                continue
            for tid2, piece2 in self._find_added(self.normalize(piece), norm_tokens):
                if tid2 is not None:
                    ids.append(tid2)
                    continue
                for word in self.pre_tokenize(piece2):
                    ids.extend(self.bpe(word))
        return ids

    def decode(self, ids, skip=()):
        out = bytearray()
        for i in ids:
            if i in skip or i not in self.id_to_token:
                continue
            tok = self.id_to_token[i]
            if all(c in CHAR_TO_BYTE for c in tok):
                out.extend(CHAR_TO_BYTE[c] for c in tok)
            else:
                out.extend(tok.encode("utf-8"))
        return out.decode("utf-8", "replace")


def load(path):
    with open(path, encoding="utf-8") as f:
        return ByteLevelBPE(json.load(f))
