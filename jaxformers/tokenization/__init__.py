"""Tokenizers: `AutoTokenizer.from_pretrained` over the Rust `tokenizers` library, output identical to transformers.

A `Tokenizer` wraps one `tokenizers.Tokenizer`. It is built from `tokenizer.json` when the model ships one, otherwise
from the legacy vocabulary files, converted the way transformers 5 converts them: `vocab.txt` (BERT, DistilBERT,
ELECTRA WordPiece), `vocab.json` + `merges.txt` (GPT-2 and RoBERTa byte-level BPE), `tokenizer.model` (Llama
SentencePiece BPE with byte fallback), `spiece.model` (T5 SentencePiece Unigram), `sentencepiece.bpe.model`
(XLM-RoBERTa, fairseq ids) and `spm.model` (DeBERTa-v2/v3), or from a GGUF file (`gguf_file=`).
`tokenizer_config.json`, `special_tokens_map.json` and `chat_template.jinja` supply the special tokens, lengths,
padding side and chat template.

Modules: `base` (the `Tokenizer` API and `BatchEncoding`), `auto` (`AutoTokenizer` loading), `convert` (legacy
vocabulary converters), `chat` (chat templates), `gguf` (GGUF vocabularies; needs the optional gguf package).

Calling the tokenizer returns a dict of 2-D `np.int32` arrays by default (`return_tensors="np"`), ready for
`model(**batch)`; `return_tensors=None` gives transformers' python lists exactly, `"jax"` gives jax arrays.
"""

from jaxformers.tokenization.auto import AutoTokenizer
from jaxformers.tokenization.base import BatchEncoding, Tokenizer, clean_up_tokenization
from jaxformers.tokenization.chat import render_chat_template

__all__ = ["AutoTokenizer", "BatchEncoding", "Tokenizer", "clean_up_tokenization", "render_chat_template"]
