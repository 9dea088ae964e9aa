"""Tokenizers: `AutoTokenizer.from_pretrained` over the Rust `tokenizers` library, output identical to transformers.

A `Tokenizer` wraps one `tokenizers.Tokenizer`. It is built from `tokenizer.json` when the model ships one, otherwise
from the legacy vocabulary files, converted the way transformers 5 converts them: `vocab.txt` (BERT, DistilBERT,
ELECTRA WordPiece), `vocab.json` + `merges.txt` (GPT-2, RoBERTa and BART byte-level BPE), `tokenizer.model` (Llama
SentencePiece BPE with byte fallback), `spiece.model` (T5/mT5 SentencePiece Unigram with `extra_ids` sentinels),
`sentencepiece.bpe.model` (XLM-RoBERTa, mBART and mBART-50, fairseq ids) and `spm.model` (DeBERTa-v2/v3), or from a
GGUF file (`gguf_file=`). Marian (`source.spm` + `target.spm` + `vocab.json`) gets its own `MarianTokenizer`.
`tokenizer_config.json`, `special_tokens_map.json` and `chat_template.jinja` supply the special tokens, lengths,
padding side and chat template.

Modules: `base` (the `Tokenizer` API and `BatchEncoding`), `auto` (`AutoTokenizer` loading), `convert` (legacy
vocabulary converters), `seq2seq` (mBART / mBART-50: `src_lang`, `tgt_lang`), `marian` (Marian), `chat` (chat
templates), `gguf` (GGUF vocabularies; needs the optional gguf package).

Seq2seq targets: `tokenizer(text, text_target=labels_text)` adds `labels` (the target side's input ids, padded with
the pad id like the inputs), as transformers does.

Calling the tokenizer returns a dict of 2-D `np.int32` arrays by default (`return_tensors="np"`), ready for
`model(**batch)`; `return_tensors=None` gives transformers' python lists exactly, `"jax"` gives jax arrays.
"""

from jaxformers.tokenization.auto import AutoTokenizer
from jaxformers.tokenization.base import BatchEncoding, Tokenizer, clean_up_tokenization
from jaxformers.tokenization.chat import render_chat_template
from jaxformers.tokenization.marian import MarianTokenizer
from jaxformers.tokenization.seq2seq import MBart50Tokenizer, MBartTokenizer

__all__ = [
    "AutoTokenizer",
    "BatchEncoding",
    "MBart50Tokenizer",
    "MBartTokenizer",
    "MarianTokenizer",
    "Tokenizer",
    "clean_up_tokenization",
    "render_chat_template",
]
