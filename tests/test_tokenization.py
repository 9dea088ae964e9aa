"""jaxformers.tokenization against transformers' AutoTokenizer on the same files, computed at test time.

Vocabularies: all-MiniLM-L6-v2 (tokenizer.json, and vocab.txt alone), GPT-2 vocab.json + merges.txt, Mistral's Llama
SentencePiece tokenizer.model (with and without add_bos_token) and a T5-style Unigram spiece.model trained here. The
encoders' layouts, with vocabularies trained here: RoBERTa vocab.json + merges.txt (and roberta-base's tokenizer.json),
XLM-RoBERTa sentencepiece.bpe.model, DeBERTa-v2/v3 spm.model, ModernBERT tokenizer.json, ELECTRA / DistilBERT
vocab.txt (MiniLM's).
"""

from __future__ import annotations

import json
import shutil
import sys

import jax
import numpy as np
import pytest
import tokenizers

import tokenizer_fixtures as fx
from jaxformers.tokenization import AutoTokenizer, BatchEncoding, Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    "Crème brûlée à Noël",
    "日本語のテキスト",
    "中文",
    "🤗🚀 ok",
    "a   b\t\tc\n\nd",
    "",
    "  leading and trailing spaces  ",
    "Special <s> and </s> and [SEP] inside, isn't it?",
    "Numbers 12345 and symbols $%& – done.",
    "Fill the <mask> or [MASK] in: ＡＢＣ ﬁ ①",
]
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)
PAIRS = [("How old are you?", "I am six years old."), ("Crème brûlée", "日本語"), ("", "only the second")]
KINDS = ["minilm_json", "bert_vocab", "gpt2", "llama", "llama_no_bos", "t5"]
ENCODER_KINDS = ["roberta", "roberta_json", "xlm_roberta", "deberta_v2", "modernbert", "electra", "distilbert"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {
        "minilm_json": fx.minilm_dir(),
        "bert_vocab": fx.bert_vocab_dir(root),
        "gpt2": fx.gpt2_dir(root),
        "llama": fx.llama_dir(root, add_bos_token=True, add_eos_token=False),
        "llama_no_bos": fx.llama_dir(root, "llama_no_bos"),
        "t5": fx.t5_dir(root),
        "roberta": fx.roberta_dir(root),
        "roberta_json": fx.roberta_json_dir(root),
        "xlm_roberta": fx.xlm_roberta_dir(root),
        "deberta_v2": fx.deberta_v2_dir(root),
        "modernbert": fx.modernbert_dir(root),
        "electra": fx.wordpiece_dir(root, "electra", "ElectraTokenizer"),
        "distilbert": fx.wordpiece_dir(root, "distilbert", "DistilBertTokenizer"),
    }


@pytest.fixture(scope="module", params=KINDS + ENCODER_KINDS)
def both(request, dirs):
    """(transformers tokenizer, jaxformers tokenizer) loaded from the same folder."""
    path = dirs[request.param]
    return transformers.AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def with_pad(hf, ours):
    """Give both a pad token (the EOS, the usual choice) where the vocabulary has none."""
    if ours.pad_token is None:
        hf.pad_token = hf.eos_token
        ours.pad_token = ours.eos_token
    return hf, ours


def hf_dict(encoding) -> dict:
    return {key: value for key, value in encoding.items()}


# ---------------------------------------------------------------------- conversion and attributes


def test_backend_identical_to_transformers(both):
    hf, ours = both
    hf_json = json.loads(hf.backend_tokenizer.to_str())
    our_json = json.loads(ours.backend_tokenizer.to_str())
    for key in ("truncation", "padding"):  # per-call state: transformers resets both on every call
        hf_json.pop(key), our_json.pop(key)
    assert our_json == hf_json


def test_attributes_identical(both):
    hf, ours = both
    assert isinstance(ours, Tokenizer)
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token")
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    assert ours.all_special_ids == hf.all_special_ids
    assert ours.all_special_tokens == hf.all_special_tokens
    assert ours.model_max_length == hf.model_max_length
    assert ours.padding_side == hf.padding_side
    assert ours.model_input_names == hf.model_input_names
    assert ours.vocab_size == hf.vocab_size
    assert len(ours) == len(hf)
    assert ours.get_vocab() == hf.get_vocab()
    assert ours.special_tokens_map == hf.special_tokens_map


# ---------------------------------------------------------------------- encoding


def test_single_texts_identical(both):
    hf, ours = both
    for text in TEXTS:
        expected = hf_dict(hf(text, return_offsets_mapping=True))
        assert dict(ours(text, return_tensors=None, return_offsets_mapping=True)) == expected, text
        assert ours.encode(text) == hf.encode(text)
        assert ours.tokenize(text) == hf.tokenize(text)
        ids = expected["input_ids"]
        assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
        assert ours.convert_tokens_to_ids(ours.convert_ids_to_tokens(ids)) == ids
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
            assert ours.decode(np.asarray(ids, np.int32), skip_special_tokens=skip) == hf.decode(ids, skip)


def test_batch_padding_identical(both):
    hf, ours = with_pad(*both)
    for side in ("right", "left"):
        for kwargs in (
            {"padding": True},
            {"padding": "longest", "pad_to_multiple_of": 8},
            {"padding": "max_length", "max_length": 64},
            {"padding": True, "truncation": True, "max_length": 6},
        ):
            expected = hf_dict(hf(TEXTS, padding_side=side, return_offsets_mapping=True, **kwargs))
            got = ours(TEXTS, padding_side=side, return_tensors=None, return_offsets_mapping=True, **kwargs)
            assert dict(got) == expected, (side, kwargs)
            arrays = ours(TEXTS, padding_side=side, **kwargs)
            assert set(arrays) == set(expected) - {"offset_mapping"}
            for key, value in arrays.items():
                assert value.dtype == np.int32 and value.ndim == 2
                np.testing.assert_array_equal(value, np.asarray(expected[key]))
    ids = ours(TEXTS, padding=True)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == hf.batch_decode(ids.tolist(), skip_special_tokens=True)
    assert ours.decode(ids) == hf.decode(ids.tolist())


def test_truncation_identical(both):
    hf, ours = both
    for kwargs in (
        {"max_length": 12},
        {"truncation": True, "max_length": 12},
        {"truncation": "longest_first", "max_length": 7},
        {"truncation": True},  # max_length defaults to model_max_length (512 for MiniLM, none otherwise)
        {"truncation": True, "max_length": 12, "stride": 3, "return_overflowing_tokens": True},
    ):
        expected = hf_dict(hf(LONG_TEXT, **kwargs))
        assert dict(ours(LONG_TEXT, return_tensors=None, **kwargs)) == expected, kwargs
        ids = expected["input_ids"]
        first = ids[0] if isinstance(ids[0], list) else ids
        assert ours.decode(first) == hf.decode(first)


def test_pairs_identical(both):
    hf, ours = both
    first, second = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    no_extras = {"return_token_type_ids": False, "return_attention_mask": False}
    for kwargs in ({}, {"return_token_type_ids": True}, no_extras):
        for a, b in PAIRS:
            assert dict(ours(a, b, return_tensors=None, **kwargs)) == hf_dict(hf(a, b, **kwargs)), (a, b)
        assert dict(ours(first, second, return_tensors=None, **kwargs)) == hf_dict(hf(first, second, **kwargs))
    long_pair = (LONG_TEXT, "so short")
    for strategy in ("longest_first", "only_first"):
        expected = hf_dict(hf(*long_pair, truncation=strategy, max_length=20, return_special_tokens_mask=True))
        got = ours(*long_pair, truncation=strategy, max_length=20, return_special_tokens_mask=True, return_tensors=None)
        assert dict(got) == expected


def test_pretokenized_words_identical(both):
    hf, ours = both
    words = [["Hello", "wörld", "日本語"], ["one"], ["a", "b", "c", "d"]]
    got = ours(words, is_split_into_words=True, return_tensors=None, return_offsets_mapping=True)
    expected = hf(words, is_split_into_words=True, return_offsets_mapping=True)
    assert dict(got) == hf_dict(expected)
    assert [got.word_ids(i) for i in range(3)] == [expected.word_ids(i) for i in range(3)]
    single = ours(words[0], is_split_into_words=True, return_tensors=None)
    assert dict(single) == hf_dict(hf(words[0], is_split_into_words=True))


def test_bert_pair_token_type_ids(dirs):
    ours = AutoTokenizer.from_pretrained(dirs["minilm_json"])
    batch = ours("How old are you?", "I am six.")
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    tokens = ours.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    first_sep = tokens.index("[SEP]")
    expected_types = [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    np.testing.assert_array_equal(batch["token_type_ids"][0], expected_types)


def test_published_ids(dirs):
    assert AutoTokenizer.from_pretrained(dirs["gpt2"]).encode("Hello world") == [15496, 995]
    assert AutoTokenizer.from_pretrained(dirs["llama"]).encode("Hello world") == [1, 22557, 1526]
    assert AutoTokenizer.from_pretrained(dirs["llama_no_bos"]).encode("Hello world") == [22557, 1526]


# ---------------------------------------------------------------------- encoders' tokenizers


def assert_identical(hf, ours, texts=TEXTS):
    """Same backend as transformers' (per-call padding/truncation state aside), and the same ids, masks, type ids,
    special-token masks and offsets for single texts, pairs and pre-split words."""
    hf_json, our_json = json.loads(hf.backend_tokenizer.to_str()), json.loads(ours.backend_tokenizer.to_str())
    for key in ("truncation", "padding"):
        hf_json.pop(key), our_json.pop(key)
    assert our_json == hf_json
    assert ours.all_special_ids == hf.all_special_ids and ours.model_input_names == hf.model_input_names
    kwargs = {"return_offsets_mapping": True, "return_special_tokens_mask": True, "return_token_type_ids": True}
    for text in texts:
        assert dict(ours(text, return_tensors=None, **kwargs)) == hf_dict(hf(text, **kwargs)), text
        assert dict(ours(text, "  second,  text ", return_tensors=None, **kwargs)) == hf_dict(
            hf(text, "  second,  text ", **kwargs)
        ), text
        ids = hf(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True), text
    words = [["Crème", "brûlée"], ["日本語", "ok", "!"]]
    got = ours(words, is_split_into_words=True, return_tensors=None, **kwargs)
    expected = hf(words, is_split_into_words=True, **kwargs)
    assert dict(got) == hf_dict(expected)
    assert [got.word_ids(i) for i in range(2)] == [expected.word_ids(i) for i in range(2)]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """Option-bearing configs and SentencePiece BPE (not Unigram) models, which the encoders' classes read as
    Unigram all the same."""
    root = tmp_path_factory.mktemp("tok_variants")
    return {
        "roberta_prefix": fx.roberta_dir(root, "roberta_prefix", add_prefix_space=True, trim_offsets=False),
        "xlm_roberta_bpe": fx.xlm_roberta_dir(root, "xlm_roberta_bpe", model_type="bpe"),
        "deberta_v2_punct": fx.deberta_v2_dir(root, "deberta_v2_punct", split_by_punct=True, do_lower_case=True),
        "deberta_v2_bpe": fx.deberta_v2_dir(root, "deberta_v2_bpe", model_type="bpe"),
        "deberta_v2_legacy_json": fx.deberta_v2_legacy_json_dir(root),
    }


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("roberta_prefix", {}),  # add_prefix_space / trim_offsets from tokenizer_config.json
        ("roberta", {"add_prefix_space": True}),
        ("roberta_json", {"add_prefix_space": True, "trim_offsets": False}),  # override what tokenizer.json says
        ("xlm_roberta", {"add_prefix_space": False}),
        ("xlm_roberta_bpe", {}),
        ("deberta_v2_punct", {}),
        ("deberta_v2", {"add_prefix_space": False, "do_lower_case": True}),
        ("deberta_v2_bpe", {}),
    ],
)
def test_encoder_options_identical(dirs, variants, kind, kwargs):
    path = {**dirs, **variants}[kind]
    hf = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    assert_identical(hf, AutoTokenizer.from_pretrained(path, **kwargs))


def test_deberta_v2_tokenizer_json_rebuilt_as_transformers_5(variants):
    """A tokenizer.json from transformers 4's DebertaV2Converter (NFKC through the precompiled normalizer): transformers
    5 keeps only its vocabulary, so full-width letters, ligatures and circled digits stay as they are."""
    path = variants["deberta_v2_legacy_json"]
    hf = transformers.AutoTokenizer.from_pretrained(path)
    ours = AutoTokenizer.from_pretrained(path)
    assert_identical(hf, ours)
    text = "ＡＢＣ ﬁ ①"
    as_file = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json")).encode(text).ids
    assert ours.encode(text) == hf.encode(text) != as_file  # the file as it is would normalize differently


def test_tokenizer_json_of_another_model_refused(dirs, tmp_path):
    """A BPE tokenizer.json under XLMRobertaTokenizer (which rebuilds a Unigram from its vocabulary): transformers
    fails with a bare TypeError; we say what is wrong and how to load the file."""
    shutil.copy(dirs["roberta_json"] / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
    with pytest.raises(TypeError):
        transformers.AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"BPE model.*XLMRobertaTokenizer.*Unigram.*PreTrainedTokenizerFast"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_xlm_roberta_fairseq_ids(dirs):
    """Against the SentencePiece model itself: every piece id + 1 (the model's <unk>, id 0, becomes 3), <s> 0,
    <pad> 1, </s> 2, <mask> last."""
    spm = pytest.importorskip("sentencepiece")
    processor = spm.SentencePieceProcessor(model_file=str(dirs["xlm_roberta"] / "sentencepiece.bpe.model"))
    ours = AutoTokenizer.from_pretrained(dirs["xlm_roberta"])
    special = (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id, ours.mask_token_id)
    assert special == (0, 1, 2, 3, processor.get_piece_size() + 1) and len(ours) == processor.get_piece_size() + 2

    def fairseq(text):
        return [3 if i == processor.unk_id() else i + 1 for i in processor.encode(text)]

    for text in ("Hello world", "Crème brûlée à Noël", "the lazy dog 日本語 ✓"):
        assert ours.encode(text) == [0, *fairseq(text), 2]
        assert ours.encode(text, "lazy dog") == [0, *fairseq(text), 2, 2, *fairseq("lazy dog"), 2]
    assert 3 in ours.encode("✓")  # a character the model never saw


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_encoder_mask_token_is_one_id(dirs, kind):
    ours = AutoTokenizer.from_pretrained(dirs[kind])
    hf = transformers.AutoTokenizer.from_pretrained(dirs[kind])
    text = f"Paris is the {ours.mask_token} of France."
    assert ours.mask_token_id in ours.encode(text)
    assert dict(ours(text, return_tensors=None, return_offsets_mapping=True)) == hf_dict(
        hf(text, return_offsets_mapping=True)
    )


@pytest.mark.parametrize(
    ("kind", "model_type"),
    [("roberta", "roberta"), ("xlm_roberta", "xlm-roberta"), ("deberta_v2", "deberta-v2"), ("electra", "electra")]
    + [("distilbert", "distilbert")],
)
def test_encoder_class_from_model_type(dirs, tmp_path, kind, model_type):
    """No tokenizer_config.json: config.json's model_type picks the class, as in transformers."""
    shutil.copytree(dirs[kind], tmp_path / kind)
    (tmp_path / kind / "tokenizer_config.json").unlink()
    (tmp_path / kind / "config.json").write_text(json.dumps({"model_type": model_type}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / kind)
    assert_identical(hf, AutoTokenizer.from_pretrained(tmp_path / kind), texts=TEXTS[:3] + TEXTS[-3:])


# ---------------------------------------------------------------------- output types


def test_default_numpy_output(dirs):
    ours = AutoTokenizer.from_pretrained(dirs["minilm_json"])
    single = ours("Hello world")
    assert isinstance(single, BatchEncoding)
    assert single["input_ids"].shape == (1, 4) and single["input_ids"].dtype == np.int32
    assert set(single) == {"input_ids", "token_type_ids", "attention_mask"}
    assert single.tokens() == ["[CLS]", "hello", "world", "[SEP]"]
    with pytest.raises(ValueError, match=r"padding=True.*return_tensors=None"):
        ours(["short", "a much longer text than the first"])
    assert isinstance(ours(["a", "b c d"], return_tensors=None)["input_ids"], list)
    jax_batch = ours(["a", "b c d"], padding=True, return_tensors="jax")
    assert isinstance(jax_batch["input_ids"], jax.Array) and jax_batch["input_ids"].shape == (2, 5)
    gpt2 = AutoTokenizer.from_pretrained(dirs["gpt2"])
    assert set(gpt2("Hello world")) == {"input_ids", "attention_mask"}
    assert set(gpt2("Hello world", return_token_type_ids=True)) == {"input_ids", "token_type_ids", "attention_mask"}


# ---------------------------------------------------------------------- saving


@pytest.mark.parametrize("kind", ["minilm_json", "gpt2", "llama", "t5", "roberta", "xlm_roberta", "deberta_v2"])
def test_save_pretrained_loads_identically_in_transformers(dirs, tmp_path, kind):
    hf = transformers.AutoTokenizer.from_pretrained(dirs[kind])
    ours = AutoTokenizer.from_pretrained(dirs[kind])
    ours.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ours.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    reloaded_hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reloaded_ours = AutoTokenizer.from_pretrained(tmp_path)
    for other in (reloaded_hf, reloaded_ours):
        assert other.model_input_names == hf.model_input_names
        assert other.padding_side == hf.padding_side
        assert other.all_special_ids == hf.all_special_ids
        assert other.chat_template == ours.chat_template
    for text in TEXTS:
        expected = hf_dict(hf(text, return_offsets_mapping=True))
        assert hf_dict(reloaded_hf(text, return_offsets_mapping=True)) == expected
        assert dict(reloaded_ours(text, return_offsets_mapping=True, return_tensors=None)) == expected
        assert reloaded_hf.decode(expected["input_ids"]) == hf.decode(expected["input_ids"])


# ---------------------------------------------------------------------- chat templates

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
STRICT = """{{ bos_token }}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        [INST] {{ message['content'] | trim }} [/INST]
    {% else %}
        {{ message['content'] | tojson }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ strftime_now('%Y') | length }}{% endif %}"""
CHAT = [
    {"role": "user", "content": "What is the capital of France? Crème brûlée 🤗"},
    {"role": "assistant", "content": 'Paris, "of course" <b>!</b>'},
    {"role": "user", "content": "  And of Japan?  "},
]


@pytest.fixture(scope="module")
def chat_pair(dirs):
    hf = transformers.AutoTokenizer.from_pretrained(dirs["llama"])
    return with_pad(hf, AutoTokenizer.from_pretrained(dirs["llama"]))


@pytest.mark.parametrize("template", [CHATML, STRICT], ids=["chatml", "strict"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_identical(chat_pair, template, add_generation_prompt):
    hf, ours = chat_pair
    for chat in (CHAT, [{"role": "system", "content": "Be brief."}, *CHAT]) if template == CHATML else (CHAT,):
        kwargs = {"chat_template": template, "add_generation_prompt": add_generation_prompt}
        text = ours.apply_chat_template(chat, tokenize=False, **kwargs)
        assert text == hf.apply_chat_template(chat, tokenize=False, **kwargs)
        assert dict(ours.apply_chat_template(chat, **kwargs)) == hf_dict(hf.apply_chat_template(chat, **kwargs))
        ids = ours.apply_chat_template(chat, return_dict=False, **kwargs)
        assert ids == hf.apply_chat_template(chat, return_dict=False, **kwargs)
        batch = ours.apply_chat_template([chat, chat[:1]], padding=True, return_tensors="np", **kwargs)
        expected = hf.apply_chat_template([chat, chat[:1]], padding=True, return_tensors="np", **kwargs)
        np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])


def test_chat_template_raise_exception(chat_pair):
    hf, ours = chat_pair
    bad = [CHAT[1], CHAT[0]]
    with pytest.raises(Exception, match="roles must alternate") as hf_error:
        hf.apply_chat_template(bad, chat_template=STRICT)
    with pytest.raises(type(hf_error.value), match="roles must alternate"):
        ours.apply_chat_template(bad, chat_template=STRICT)


def test_chat_template_file_and_continue_final_message(dirs, tmp_path):
    folder = tmp_path / "chat"
    shutil.copytree(dirs["llama"], folder)
    (folder / "chat_template.jinja").write_text(CHATML)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == CHATML == hf.chat_template
    prefill = [*CHAT, {"role": "assistant", "content": "The capital is"}]
    kwargs = {"continue_final_message": True, "tokenize": False}
    assert ours.apply_chat_template(prefill, **kwargs) == hf.apply_chat_template(prefill, **kwargs)
    with pytest.raises(ValueError, match="no chat template"):
        AutoTokenizer.from_pretrained(dirs["llama"]).apply_chat_template(CHAT)


# ---------------------------------------------------------------------- kwargs and errors


def test_from_pretrained_overrides(dirs):
    kwargs = {"padding_side": "left", "model_max_length": 16, "pad_token": "[MASK]", "truncation_side": "left"}
    hf = transformers.AutoTokenizer.from_pretrained(dirs["bert_vocab"], **kwargs)
    ours = AutoTokenizer.from_pretrained(dirs["bert_vocab"], **kwargs)
    assert (ours.padding_side, ours.model_max_length, ours.pad_token_id) == (hf.padding_side, 16, hf.pad_token_id)
    for call in ({"padding": "max_length", "truncation": True}, {"padding": True}, {"truncation": True}):
        assert dict(ours([LONG_TEXT, "x"], return_tensors=None, **call)) == hf_dict(hf([LONG_TEXT, "x"], **call))


def test_bert_vocab_options(dirs):
    kwargs = {"do_lower_case": False, "strip_accents": True, "tokenize_chinese_chars": False}
    hf = transformers.AutoTokenizer.from_pretrained(dirs["bert_vocab"], **kwargs)
    ours = AutoTokenizer.from_pretrained(dirs["bert_vocab"], **kwargs)
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(hf.backend_tokenizer.to_str())
    for text in TEXTS:
        assert dict(ours(text, return_tensors=None)) == hf_dict(hf(text))


@pytest.mark.parametrize("kind", ["bert_vocab", "gpt2"])
def test_clean_up_tokenization_spaces(dirs, kind):
    hf = transformers.AutoTokenizer.from_pretrained(dirs[kind], clean_up_tokenization_spaces=True)
    ours = AutoTokenizer.from_pretrained(dirs[kind], clean_up_tokenization_spaces=True)
    ids = hf("Well , isn't it ? I 'm sure they 're here !")["input_ids"]
    for clean in (None, False, True):
        expected = hf.decode(ids, clean_up_tokenization_spaces=clean)
        assert ours.decode(ids, clean_up_tokenization_spaces=clean) == expected


def test_special_tokens_from_config(dirs, tmp_path):
    """Serialized AddedToken dicts, extra special tokens and special tokens missing from the vocabulary."""
    shutil.copy(dirs["bert_vocab"] / "vocab.txt", tmp_path / "vocab.txt")
    serialized = {"__type": "AddedToken", "content": "<new2>", "lstrip": True, "normalized": False, "rstrip": False}
    config = {
        "tokenizer_class": "BertTokenizer",
        "pad_token": {**serialized, "content": "[PAD]", "lstrip": False},
        "bos_token": "<bos_new>",
        "additional_special_tokens": ["<new1>", serialized],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(hf.backend_tokenizer.to_str())
    assert ours.all_special_ids == hf.all_special_ids and len(ours) == len(hf) == 30522 + 3
    text = "x <new1>y  <new2> <bos_new>z"
    assert dict(ours(text, return_tensors=None)) == hf_dict(hf(text))
    assert ours.decode(hf(text)["input_ids"], skip_special_tokens=True) == hf.decode(hf(text)["input_ids"], True)


def test_direct_construction_matches_transformers():
    """A `tokenizers.Tokenizer` wrapped directly, with transformers' `PreTrainedTokenizerFast(tokenizer_object=...)`
    semantics for special tokens and add_bos_token / add_eos_token."""
    from tokenizers import models, pre_tokenizers, trainers

    backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "<s>"])
    backend.train_from_iterator([" ".join(TEXTS)] * 5, trainer=trainer)
    kwargs = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    kwargs |= {"add_bos_token": True, "add_eos_token": True}
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    special = {key: kwargs.pop(key) for key in ("bos_token", "eos_token", "unk_token")}
    ours = Tokenizer(backend, special_tokens=special, **kwargs)
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(hf.backend_tokenizer.to_str())
    for text in TEXTS:
        assert dict(ours(text, return_tensors=None)) == hf_dict(hf(text))
    ours.add_eos_token = hf.add_eos_token = False
    assert dict(ours(TEXTS[0], return_tensors=None)) == hf_dict(hf(TEXTS[0]))


def test_hub_repo_id_from_cache(dirs, tmp_path):
    """A repo id resolves through the huggingface_hub cache (offline), hub keywords included."""
    snapshot = tmp_path / "models--acme--tiny-bert" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(dirs["minilm_json"] / name, snapshot / name)
    (tmp_path / "models--acme--tiny-bert" / "refs").mkdir()
    (tmp_path / "models--acme--tiny-bert" / "refs" / "main").write_text("0" * 40)
    ours = AutoTokenizer.from_pretrained("acme/tiny-bert", cache_dir=tmp_path, local_files_only=True)
    hf = transformers.AutoTokenizer.from_pretrained(dirs["minilm_json"])
    assert dict(ours(TEXTS, padding=True, return_tensors=None)) == hf_dict(hf(TEXTS, padding=True))
    with pytest.raises(FileNotFoundError, match="acme/absent"):
        AutoTokenizer.from_pretrained("acme/absent", cache_dir=tmp_path, local_files_only=True)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*vocab\.txt.*merges\.txt.*tokenizer\.model.*spiece"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_bad_strategies(dirs):
    ours = AutoTokenizer.from_pretrained(dirs["minilm_json"])
    with pytest.raises(ValueError, match=r"padding must be.*'longest', 'max_length', 'do_not_pad'"):
        ours("x", padding="shortest")
    with pytest.raises(ValueError, match=r"truncation must be.*'longest_first', 'only_first', 'only_second'"):
        ours("x", truncation="middle")
    with pytest.raises(ValueError, match=r"return_tensors must be one of"):
        ours("x", return_tensors="pt")


def test_padding_without_pad_token(dirs):
    ours = AutoTokenizer.from_pretrained(dirs["gpt2"])
    with pytest.raises(ValueError, match=r"tokenizer\.pad_token = tokenizer\.eos_token"):
        ours(["a", "b c"], padding=True)
    ours.pad_token = ours.eos_token
    np.testing.assert_array_equal(ours(["a", "b c"], padding=True)["attention_mask"], [[1, 0], [1, 1]])


def test_sentencepiece_missing_is_a_clear_import_error(dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        AutoTokenizer.from_pretrained(dirs["t5"])
