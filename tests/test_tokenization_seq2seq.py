"""jaxformers' seq2seq tokenizers against transformers' AutoTokenizer on the same folders, computed at test time.

T5 (spiece.model alone, with extra_ids, and a transformers-4 tokenizer.json), BART (vocab.json + merges.txt, by
class name and by model_type), mBART and mBART-50 (sentencepiece.bpe.model, and the folder transformers saves),
Marian (source.spm + target.spm + vocab.json, shared and separate vocabularies). Every vocabulary is trained here
(tests/tokenizer_fixtures.py); none exists on the registries.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import tokenizer_fixtures as fx
from jaxformers.tokenization import AutoTokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
# transformers' MarianTokenizer asks for sacremoses, which it never uses to encode or decode
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

TEXTS = [
    "Hello world",
    "Crème brûlée à Noël",
    "日本語のテキスト 中文",
    "🤗🚀 ok ☃☃ x ☃",
    "",
    "  leading and trailing spaces  ",
    "a   b\t\tc\n\nd",
    "Special <s> and </s> and <pad> <unk> inside, isn't it?",
    "ＡＢＣ ﬁ ①",
    "Fill the <mask> in",
    "<extra_id_0> the fox <extra_id_1>",
    "en_XX hello ro_RO",
    ">>fra<< the quick fox",
    ">>deu<<hello >>fra<< x",
    " >>fra<< leading space",
    ">>xyz<< unknown code",
    "Straße ÑANDÚ ß",
]
PAIRS = [("How old are you?", "I am six."), ("", "only the second"), ("Crème brûlée", "日本語")]
BATCH = ["short", "a much longer sentence with quite a few words in it", "", ">>fra<< Crème brûlée"]
TARGETS = ["ZIEL TEXT ÑANDÚ", "Q", "", "ß ß ß x y z the end"]
KINDS = [
    "t5",
    "t5_extra_ids",
    "t5_legacy_json",
    "t5_json_no_sentinels",
    "bart",
    "bart_model_type",
    "mbart",
    "mbart50",
    "mbart50_saved",
    "marian",
    "marian_separate",
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq_tok")
    out = {
        "t5": fx.t5_dir(root),
        "t5_legacy_json": fx.t5_legacy_json_dir(root),
        "bart": fx.bart_dir(root),
        "bart_model_type": fx.bart_dir(root, "bart_model_type", model_type_only=True),
        "mbart": fx.mbart_dir(root, "mbart"),
        "mbart50": fx.mbart_dir(root, "mbart50", "MBart50Tokenizer"),
        "marian": fx.marian_dir(root),
        "marian_separate": fx.marian_dir(root, "marian_separate", separate_vocabs=True),
    }
    extra_ids = root / "t5_extra_ids"
    shutil.copytree(out["t5"], extra_ids)
    (extra_ids / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 7}))
    out["t5_extra_ids"] = extra_ids
    # a tokenizer.json without sentinels: T5Tokenizer adds `extra_ids` of them after the vocabulary
    no_sentinels = root / "t5_json_no_sentinels"
    shutil.copytree(out["t5_legacy_json"], no_sentinels)
    data = json.loads((no_sentinels / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["vocab"] = [entry for entry in data["model"]["vocab"] if not entry[0].startswith("<extra_id_")]
    data["added_tokens"] = [token for token in data["added_tokens"] if not token["content"].startswith("<extra_id_")]
    (no_sentinels / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (no_sentinels / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 3}))
    out["t5_json_no_sentinels"] = no_sentinels
    # the folder transformers saves for mBART-50: tokenizer.json (the vocabulary with the codes) + its config
    transformers.AutoTokenizer.from_pretrained(out["mbart50"], src_lang="ro_RO").save_pretrained(root / "mbart50_saved")
    (root / "mbart50_saved" / "sentencepiece.bpe.model").unlink(missing_ok=True)
    out["mbart50_saved"] = root / "mbart50_saved"
    return out


@pytest.fixture(scope="module", params=KINDS)
def both(request, dirs):
    """(transformers tokenizer, jaxformers tokenizer) loaded from the same folder; tests must not change them."""
    path = dirs[request.param]
    return transformers.AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def as_dict(encoding) -> dict:
    """A transformers or jaxformers BatchEncoding as a plain dict, to compare them."""
    return {key: value for key, value in encoding.items()}


def assert_same_decode(hf, ours, ids, **options):
    """Identical text, or both refuse: Marian with separate vocabularies cannot decode every source id (transformers
    raises IndexError from sentencepiece there, jaxformers a ValueError saying why)."""
    try:
        expected = hf.decode(ids, **options)
    except IndexError:
        with pytest.raises(ValueError, match="target side"):
            ours.decode(ids, **options)
        return
    assert ours.decode(ids, **options) == expected, (ids, options)


# ---------------------------------------------------------------------- every family


def test_attributes_identical(both):
    hf, ours = both
    assert len(ours) == len(hf)
    assert ours.vocab_size == hf.vocab_size
    assert ours.all_special_tokens == hf.all_special_tokens
    assert ours.all_special_ids == hf.all_special_ids
    for name in ("bos", "eos", "unk", "pad", "mask"):
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
    assert ours.get_vocab() == hf.get_vocab()


def test_texts_identical(both):
    hf, ours = both
    for text in TEXTS:
        expected = as_dict(hf(text))
        assert as_dict(ours(text, return_tensors=None)) == expected, text
        ids = expected["input_ids"]
        for skip in (False, True):
            assert_same_decode(hf, ours, ids, skip_special_tokens=skip)
        assert_same_decode(hf, ours, np.asarray(ids))


def outcome(tokenizer, *args, **options):
    """The encoding as a dict of lists, or the exception type where the tokenizer refuses."""
    try:
        return dict(tokenizer(*args, **options).items())
    except Exception as error:  # transformers' fast tokenizers refuse impossible truncations; compare that too
        return type(error).__name__


def test_pairs_identical(both):
    hf, ours = both
    for first, second in PAIRS:
        assert as_dict(ours(first, second, return_tensors=None)) == as_dict(hf(first, second))
    firsts, seconds = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    expected = as_dict(hf(firsts, seconds, padding=True, truncation=True, max_length=7))
    assert as_dict(ours(firsts, seconds, padding=True, truncation=True, max_length=7, return_tensors=None)) == expected
    # every strategy, on both sides, at lengths where Marian's Python truncation and `tokenizers` part ways
    long_pairs = [("one two three four five six", "x y"), ("a", "b c d e f g h i"), ("", "p q r s t")]
    firsts, seconds = [p[0] for p in long_pairs], [p[1] for p in long_pairs]
    for side in ("right", "left"):
        hf.truncation_side = ours.truncation_side = side
        try:
            for strategy in ("longest_first", "only_first", "only_second"):
                for max_length in (3, 4, 6):
                    options = {"truncation": strategy, "max_length": max_length, "padding": True}
                    expected = outcome(hf, firsts, seconds, **options)
                    assert outcome(ours, firsts, seconds, return_tensors=None, **options) == expected, options
        finally:
            hf.truncation_side = ours.truncation_side = "right"


def test_batch_padding_truncation_identical(both):
    hf, ours = both
    for options in (
        {"padding": True},
        {"padding": True, "truncation": True, "max_length": 6},
        {"padding": "max_length", "truncation": True, "max_length": 9},
        {"padding": True, "pad_to_multiple_of": 8},
    ):
        expected = as_dict(hf(BATCH + TEXTS, **options))
        assert as_dict(ours(BATCH + TEXTS, return_tensors=None, **options)) == expected, options
        arrays = ours(BATCH + TEXTS, **options)  # numpy by default
        assert arrays["input_ids"].dtype == np.int32
        np.testing.assert_array_equal(arrays["input_ids"], np.asarray(expected["input_ids"]))
        for row in arrays["input_ids"]:
            assert_same_decode(hf, ours, row.tolist(), skip_special_tokens=True)


def test_text_target_identical(both):
    hf, ours = both
    for options in (
        {},
        {"padding": True},
        {"padding": True, "truncation": True, "max_length": 5},
        {"padding": "max_length", "truncation": True, "max_length": 10, "max_target_length": 6},
    ):
        expected = as_dict(hf(BATCH, text_target=TARGETS, **options))
        got = ours(BATCH, text_target=TARGETS, return_tensors=None, **options)
        assert as_dict(got) == expected, options
        for skip in (False, True):
            assert ours.batch_decode(got["labels"], skip_special_tokens=skip) == hf.batch_decode(
                expected["labels"], skip_special_tokens=skip
            )
        targets_only = as_dict(hf(text_target=TARGETS, **options))
        assert as_dict(ours(text_target=TARGETS, return_tensors=None, **options)) == targets_only
    # labels are padded with the pad id, as transformers does (not -100), and stack into arrays
    padded = ours(BATCH, text_target=TARGETS, padding=True)
    assert padded["labels"].shape[0] == len(TARGETS) and (padded["labels"] == ours.pad_token_id).any()
    # a single text and its target
    expected = as_dict(hf(TEXTS[1], text_target=TEXTS[2]))
    assert as_dict(ours(TEXTS[1], text_target=TEXTS[2], return_tensors=None)) == expected


def test_nothing_to_tokenize_raises(both):
    hf, ours = both
    with pytest.raises(ValueError):
        hf()
    with pytest.raises(ValueError, match="text_target"):
        ours()


# ---------------------------------------------------------------------- T5


def test_t5_sentinels_in_inputs_and_labels(dirs):
    """Span corruption: sentinels in the input and in the labels, appended to the vocabulary (<extra_id_0> last)."""
    source = "The <extra_id_0> walks in <extra_id_1> park"
    target = "<extra_id_0> cute dog <extra_id_1> the <extra_id_2>"
    for kind, count in (("t5", 100), ("t5_extra_ids", 7), ("t5_legacy_json", 100), ("t5_json_no_sentinels", 3)):
        hf = transformers.AutoTokenizer.from_pretrained(dirs[kind])
        ours = AutoTokenizer.from_pretrained(dirs[kind])
        sentinels = [f"<extra_id_{i}>" for i in range(count)]
        assert ours.convert_tokens_to_ids(sentinels) == hf.convert_tokens_to_ids(sentinels)
        # in the vocabulary <extra_id_0> comes last; added after it (no sentinels in tokenizer.json), first
        first = len(ours) - (count if kind == "t5_json_no_sentinels" else 1)
        assert ours.convert_tokens_to_ids("<extra_id_0>") == first
        expected = as_dict(hf(source, text_target=target))
        encoded = ours(source, text_target=target, return_tensors=None)
        assert as_dict(encoded) == expected, kind
        for skip in (False, True):  # sentinels are special: skip_special_tokens drops them
            assert ours.decode(encoded["labels"], skip_special_tokens=skip) == hf.decode(
                expected["labels"], skip_special_tokens=skip
            )


# ---------------------------------------------------------------------- mBART / mBART-50


@pytest.mark.parametrize("kind", ["mbart", "mbart50", "mbart50_saved"])
def test_mbart_languages(dirs, kind):
    hf = transformers.AutoTokenizer.from_pretrained(dirs[kind], src_lang="ro_RO", tgt_lang="de_DE")
    ours = AutoTokenizer.from_pretrained(dirs[kind], src_lang="ro_RO", tgt_lang="de_DE")
    assert (ours.src_lang, ours.tgt_lang) == ("ro_RO", "de_DE")
    assert ours.lang_code_to_id == hf.lang_code_to_id
    assert ours.convert_tokens_to_ids("de_DE") == hf.convert_tokens_to_ids("de_DE") == ours.lang_code_to_id["de_DE"]
    encoded = ours("Hello world", text_target="Hallo Welt", return_tensors=None)
    assert as_dict(encoded) == as_dict(hf("Hello world", text_target="Hallo Welt"))
    ro, de, eos = ours.lang_code_to_id["ro_RO"], ours.lang_code_to_id["de_DE"], ours.eos_token_id
    if kind == "mbart":  # X </s> lang
        assert encoded["input_ids"][-2:] == [eos, ro] and encoded["labels"][-2:] == [eos, de]
    else:  # lang X </s>
        assert encoded["input_ids"][0] == ro and encoded["labels"][0] == de and encoded["labels"][-1] == eos
    for tokenizer in (hf, ours):
        tokenizer.src_lang = "zh_CN"
    assert ours("Hello", return_tensors=None)["input_ids"] == hf("Hello")["input_ids"]
    # transformers' translation pipeline hook: inputs in src_lang plus the id the output must start with
    expected = hf._build_translation_inputs("Hello", return_tensors=None, src_lang="en_XX", tgt_lang="ro_RO")
    got = ours._build_translation_inputs("Hello", return_tensors=None, src_lang="en_XX", tgt_lang="ro_RO")
    assert as_dict(got) == as_dict(expected)


@pytest.mark.parametrize("kind", ["mbart", "mbart50"])
def test_mbart_default_languages(dirs, kind):
    hf = transformers.AutoTokenizer.from_pretrained(dirs[kind])
    ours = AutoTokenizer.from_pretrained(dirs[kind])
    assert (ours.src_lang, ours.tgt_lang) == (hf.src_lang, hf.tgt_lang) == ("en_XX", None)
    assert as_dict(ours("a b", text_target="c", return_tensors=None)) == as_dict(hf("a b", text_target="c"))
    assert ours.tgt_lang == hf.tgt_lang == "en_XX"  # targets without tgt_lang use (and keep) the source language


def test_mbart_unknown_language_is_a_clear_error(dirs):
    with pytest.raises(ValueError, match="xx_YY.*language code"):
        AutoTokenizer.from_pretrained(dirs["mbart"], src_lang="xx_YY")
    ours = AutoTokenizer.from_pretrained(dirs["mbart50"])
    with pytest.raises(ValueError, match="tgt_lang='klingon'"):
        ours.tgt_lang = "klingon"


@pytest.mark.parametrize("kind", ["mbart", "mbart50"])
def test_mbart_save_pretrained_loads_identically(dirs, tmp_path, kind):
    ours = AutoTokenizer.from_pretrained(dirs[kind], src_lang="ro_RO", tgt_lang="de_DE")
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.src_lang, hf.tgt_lang) == (reloaded.src_lang, reloaded.tgt_lang) == ("ro_RO", "de_DE")
    expected = as_dict(hf(BATCH, text_target=TARGETS, padding=True))
    assert as_dict(reloaded(BATCH, text_target=TARGETS, padding=True, return_tensors=None)) == expected
    assert as_dict(ours(BATCH, text_target=TARGETS, padding=True, return_tensors=None)) == expected


# ---------------------------------------------------------------------- Marian


def test_marian_language_codes_and_unknown_pieces(dirs):
    hf = transformers.AutoTokenizer.from_pretrained(dirs["marian"])
    ours = AutoTokenizer.from_pretrained(dirs["marian"])
    vocab = json.loads((dirs["marian"] / "vocab.json").read_text(encoding="utf-8"))
    assert ours.supported_language_codes == hf.supported_language_codes == [">>fra<<", ">>deu<<", ">>zho<<"]
    ids = ours.encode(">>deu<< hello")
    assert ids == hf.encode(">>deu<< hello") and ids[0] == vocab[">>deu<<"]
    # a code elsewhere is plain text, and an unknown leading code is one <unk>
    assert vocab[">>fra<<"] not in ours.encode("a >>fra<< b") and ours.encode("a >>fra<< b") == hf.encode("a >>fra<< b")
    assert ours.encode(">>xyz<< b")[0] == vocab["<unk>"] == hf.encode(">>xyz<< b")[0]
    # "▁the" is a SentencePiece piece missing from vocab.json: <unk>, as in transformers
    assert ours.encode("the")[:-1] == [vocab["<unk>"]] == hf.encode("the")[:-1]
    # "ß" is unknown to the source model but in the shared vocabulary: sentencepiece's surface piece finds it
    assert vocab["ß"] in ours.encode("Straße") and ours.encode("Straße") == hf.encode("Straße")


def test_marian_separate_vocabs_decode(dirs):
    hf = transformers.AutoTokenizer.from_pretrained(dirs["marian_separate"])
    ours = AutoTokenizer.from_pretrained(dirs["marian_separate"])
    assert ours.separate_vocabs and ours.supported_language_codes == hf.supported_language_codes == []
    labels = hf(text_target="ZIEL ÑANDÚ ß")["input_ids"]
    assert ours(text_target="ZIEL ÑANDÚ ß", return_tensors=None)["input_ids"] == labels
    assert ours.decode(labels) == hf.decode(labels)  # the target side by default
    source = hf("hello world")["input_ids"]
    for skip in (False, True):
        expected = hf.decode(source, skip_special_tokens=skip, use_source_tokenizer=True)
        assert ours.decode(source, skip_special_tokens=skip, use_source_tokenizer=True) == expected
    assert ours.convert_ids_to_tokens(labels) == hf.convert_ids_to_tokens(labels)


@pytest.mark.parametrize("kind", ["marian", "marian_separate"])
def test_marian_save_pretrained_loads_identically(dirs, tmp_path, kind):
    ours = AutoTokenizer.from_pretrained(dirs[kind])
    ours.save_pretrained(tmp_path)
    hf_original = transformers.AutoTokenizer.from_pretrained(dirs[kind])
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    expected = as_dict(hf_original(BATCH, text_target=TARGETS, padding=True))
    assert as_dict(hf(BATCH, text_target=TARGETS, padding=True)) == expected
    assert as_dict(reloaded(BATCH, text_target=TARGETS, padding=True, return_tensors=None)) == expected


def test_marian_errors(dirs, tmp_path):
    folder = tmp_path / "no_target"
    shutil.copytree(dirs["marian"], folder)
    (folder / "target.spm").unlink()
    with pytest.raises(FileNotFoundError, match="target.spm"):
        AutoTokenizer.from_pretrained(folder)
    folder = tmp_path / "no_target_vocab"
    shutil.copytree(dirs["marian_separate"], folder)
    (folder / "target_vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="target_vocab.json"):
        AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="unknown token"):
        AutoTokenizer.from_pretrained(dirs["marian"], unk_token="<missing>")
    with pytest.raises(NotImplementedError, match="vocab.json"):
        AutoTokenizer.from_pretrained(dirs["marian"]).add_tokens(["new"])
