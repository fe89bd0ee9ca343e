#!/usr/bin/python3
"""Write the Hugging Face tokenizer fixtures (tests/fixtures/tokenizer/).

    /usr/bin/python3 tools/reference/make_tokenizer_fixtures.py          # (re)write
    /usr/bin/python3 tools/reference/make_tokenizer_fixtures.py --check  # compare, exit 1 on a difference

Trains a tiny byte-level BPE (MERGES merges) on the multilingual text embedded below and
writes two tokenizer.json files in the layouts real checkpoints use:

* qwen2_style/tokenizer.json: NFC normalizer, Sequence[Split(Qwen2 regex, Isolated),
  ByteLevel(use_regex false)], merges as "a b" strings, continuing_subword_prefix "" (as in
  Qwen2's file), added <|endoftext|>, <|im_start|>, <|im_end|>.
* gpt2_style/tokenizer.json (OLMoE / GPT-NeoX): NFC normalizer, ByteLevel(use_regex true,
  add_prefix_space false), merges as ["a", "b"] pairs, ignore_merges true plus a few whole
  words put in the vocabulary without merges (so ignore_merges changes their ids), added
  <|endoftext|> and <|padding|>.

expected.json holds, for every test string, the ids from hf_tokenizer_reference.py and the
decoded text for both fixtures, plus a few decode-only cases (cut multi-byte characters
decode to U+FFFD).  Training and output are deterministic (ties broken by the pair's
strings), so --check regenerates in memory and compares bytes.
"""

import collections
import json
import os
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_tokenizer_reference as ref  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "tokenizer")
MERGES = 600

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """\
The quick brown fox jumps over the lazy dog. I'm sure they'll come back, and we're ready.
It's what you've said: DON'T touch the tokenizer; we'd rather train a new one.
Mixture-of-Experts models route every token to a few experts, and the router learns which.
In 2024 the model had 8 experts, 2 active per token, and 46.7 billion parameters in total.
Der schnelle braune Fuchs springt über den faulen Hund. Die Größe der Äpfel ist schön.
Übermäßig viele Öltanks stehen an der Straße; wir müssen früh aufstehen.
Le café est déjà prêt. Où est l'hôtel ? Noël à Paris, c'est très agréable en été.
Les élèves français étudient la théorie des experts et la fenêtre de contexte.
Привет, мир! Как дела? Сегодня мы обучаем маленькую модель на русском тексте.
Эксперты выбирают токены, и маршрутизатор учится распределять нагрузку.
Zażółć gęślą jaźń. Łódź to piękne miasto, a Kraków jest stolicą kultury.
Szybki brązowy lis przeskakuje nad leniwym psem w środę wieczorem.
我们今天去北京吃饭。你好世界，这是一个专家混合模型的测试。中文文本没有空格。
こんにちは、世界！カタカナと漢字とひらがなを混ぜた日本語の文章です。東京は大きい。
Emoji: 😀 👍 🎉 ❤️ 👨‍👩‍👧‍👦 family, 🇩🇪 flag, ✨ sparkle.
def forward(self, x):
    if x is None:
        return None
    for i in range(10):
        x = self.layers[i](x)
\treturn x  # tab indented
class Router:
    def __init__(self, experts=8, top_k=2):
        self.experts = experts
        self.top_k = top_k
Numbers: 12345, 3.14159, 2.71828, 1e-3, 0x1F, 100%, $42.50, 7/8.
Windows lines\r\nend with CR LF.\r\n
Many blank lines follow.



    Indented text with four spaces, and trailing spaces.   
"""

# name, text.  French appears twice: precomposed (NFC) and decomposed (NFD).
FRENCH = "Café déjà vu, où est l'hôtel? Noël à Paris, très élégant."
TEST_STRINGS = [
    ("english_contractions", "Hello, world! I'm here and they'll come. DON'T stop, we've won."),
    ("upper_contractions", "HE'S WE'VE I'D YOU'RE IT'LL"),
    ("german", "Größe, übermäßig schöne Äpfel und Öl auf der Straße."),
    ("french_nfc", unicodedata.normalize("NFC", FRENCH)),
    ("french_nfd", unicodedata.normalize("NFD", FRENCH)),
    ("russian", "Привет, мир! Как дела? Эксперты выбирают токены."),
    ("polish", "Zażółć gęślą jaźń. Łódź i Kraków."),
    ("chinese", "我们今天去北京吃饭。你好世界！"),
    ("chinese_long_run", "这是一个专家混合模型的测试中文文本没有空格所以这一段是一个很长的词语我们用它来测试长词的合并"),
    ("japanese", "こんにちは、世界！カタカナと漢字とひらがな。"),
    ("emoji_zwj", "Family: 👨‍👩‍👧‍👦 and 👍🏽 ok ❤️🇩🇪"),
    ("digits", "12345 and 3.14159 or 1e-3"),
    ("python_code", "def f(x):\n    if x:\n        return x\n\treturn None  # tab\n"),
    ("crlf_and_newlines", "line1\r\nline2\n\n\nline3\r\n"),
    ("spaces_before_word", "     indented words"),
    ("spaces_at_end", "trailing spaces   "),
    ("only_whitespace", "   \n  \t "),
    ("unicode_whitespace", "a\u00a0b\u3000c\u2003d\u000be\u0085f"),
    ("special_mid_text", "Hello<|endoftext|>world <|im_start|>user\nHi there<|im_end|>\n"),
    ("special_adjacent", "<|endoftext|><|endoftext|> <|padding|>x<|endoftext"),
    ("unseen_long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis"),
    ("punctuation_runs", "Wait... what?!? (yes) -- [no] {maybe}; 100% \"quoted\""),
    ("empty", ""),
]


def bpe_train(words, n_merges):
    """Plain BPE on byte-level words {word: count}: merge the most frequent pair each
    round, ties broken by the smaller (a, b) strings."""
    seqs = {w: list(w) for w in words}
    merges = []
    for _ in range(n_merges):
        counts = collections.Counter()
        for w, c in words.items():
            s = seqs[w]
            for i in range(len(s) - 1):
                counts[(s[i], s[i + 1])] += c
        if not counts:
            break
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        a, b = best
        for w, s in seqs.items():
            i = 0
            out = []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def added(id_, content):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def build(style):
    if style == "qwen2_style":
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]}
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:
        pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}
        specials = ["<|endoftext|>", "<|padding|>"]
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
            "normalizer": {"type": "NFC"}, "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                               "trim_offsets": False, "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                        "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {}, "merges": []}}
    # Word counts from the reference's own pre-tokenizer (no merges needed for that).
    tok = ref.ByteLevelBPE(spec)
    words = collections.Counter()
    for line in CORPUS.splitlines(keepends=True):
        words.update(tok.pre_tokenize(tok.normalize(line)))
    merges = bpe_train(dict(sorted(words.items())), MERGES)
    vocab = {}
    for b in range(256):
        vocab[ref.BYTE_TO_CHAR[b]] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    model = spec["model"]
    model["vocab"] = vocab
    if style == "qwen2_style":
        model["merges"] = ["%s %s" % m for m in merges]
        model["continuing_subword_prefix"] = ""
        model["end_of_word_suffix"] = ""
    else:
        model["merges"] = [[a, b] for a, b in merges]
        model["ignore_merges"] = True
        # Whole words that the merges alone split: with ignore_merges they become one id.
        tok = ref.ByteLevelBPE(spec)
        extra = []
        for _, text in TEST_STRINGS:
            for w in tok.pre_tokenize(tok.normalize(text)):
                if len(w) >= 4 and w not in vocab and len(tok.bpe(w)) >= 2 and w not in extra:
                    extra.append(w)
        for w in extra[:4]:
            vocab[w] = len(vocab)
    spec["added_tokens"] = [added(len(vocab) + i, s) for i, s in enumerate(specials)]
    return spec


def dump(obj):
    return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"


def generate():
    files = {}
    expected = {"note": "written by tools/reference/make_tokenizer_fixtures.py; ids from "
                        "hf_tokenizer_reference.py", "cases": [], "decode_cases": []}
    toks = {}
    for style in ("qwen2_style", "gpt2_style"):
        spec = build(style)
        files[os.path.join(style, "tokenizer.json")] = dump(spec)
        toks[style] = ref.ByteLevelBPE(json.loads(dump(spec)))
    for name, text in TEST_STRINGS:
        case = {"name": name, "text": text, "ids": {}, "decoded": {}}
        for style, tok in toks.items():
            ids = tok.encode(text)
            case["ids"][style] = ids
            case["decoded"][style] = tok.decode(ids)
        expected["cases"].append(case)
    # Cut multi-byte characters: the lossy decode gives U+FFFD.
    for name in ("emoji_zwj", "chinese"):
        text = dict(TEST_STRINGS)[name]
        for style, tok in toks.items():
            ids = tok.encode(text)
            for cut in (ids[:-1], ids[1:]):
                expected["decode_cases"].append(
                    {"name": name, "style": style, "ids": cut, "text": tok.decode(cut)})
    files["expected.json"] = dump(expected)
    return files


def main():
    check = "--check" in sys.argv[1:]
    files = generate()
    bad = 0
    for rel, content in sorted(files.items()):
        path = os.path.join(OUT_DIR, rel)
        data = content.encode("utf-8")
        if check:
            try:
                with open(path, "rb") as f:
                    same = f.read() == data
            except FileNotFoundError:
                same = False
            print("%s %s" % ("ok" if same else "DIFFERS", rel))
            bad += not same
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            print("wrote %s (%d bytes)" % (rel, len(data)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
