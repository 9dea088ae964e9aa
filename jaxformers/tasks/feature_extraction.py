"""`feature-extraction`: transformers' `FeatureExtractionPipeline` (token features), plus sentence embeddings with the
pooling of a sentence-transformers folder, on jitted cores.

    extract = jf.task("feature-extraction", model=path)
    extract("a text")                          # nested lists [1, T, D]: the base model's last hidden state
    extract(["a", "b"], return_tensors=True)   # one np.ndarray [1, T, D] per text
    extract("a text", truncation=True)         # or tokenize_kwargs={"truncation": True, "max_length": 128}

    embed = jf.task("feature-extraction", model="sentence-transformers/all-MiniLM-L6-v2", pooling="auto")
    embed("a text")                            # one embedding (a list of D floats), as SentenceTransformer.encode
    embed(["a", "b"], return_tensors=True)     # one np.ndarray [D] per text

Token features follow the pipeline exactly: per text the model's first output (`last_hidden_state`) for that text
alone, `[1, T, D]`, as nested lists unless `return_tensors=True` (then numpy, where the pipeline gives torch).

Sentence embeddings (`pooling=`, a jaxformers option; the pipeline has none):
- `pooling="auto"`: the modules of the sentence-transformers folder the tokenizer was loaded from (with
  `jf.task(..., model=PATH)`, that is PATH): `modules.json` must list a Transformer, a Pooling module (its
  `config.json`: `pooling_mode_cls_token`, `..._max_tokens`, `..._mean_tokens`, `..._mean_sqrt_len_tokens`,
  `..._weightedmean_tokens`, `..._lasttoken`) and optionally a Normalize module; texts are stripped, lower-cased when
  `sentence_bert_config.json` says `do_lower_case`, and truncated to its `max_seq_length` (without one:
  min(`max_position_embeddings`, the tokenizer's `model_max_length`)), exactly as sentence-transformers'
  `Transformer.tokenize`. Any other module (Dense, ...) is refused by name: its output would differ.
- `pooling="mean"` (or "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", or a list of them,
  concatenated in sentence-transformers' order) on the pipeline's tokenization, for a model without such a folder.
- `normalize`: L2-normalise the embedding (None: as the folder's modules say with "auto", else False).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp

from jaxformers.tasks.base import Task

# sentence-transformers' pooling modes, in the order its Pooling module concatenates them
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Pooling config.json keys of each mode
_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
_MODULES = ("Transformer", "Pooling", "Normalize")  # the sentence-transformers modules run here


def pool(hidden: jax.Array, mask: jax.Array, modes: tuple[str, ...] = ("mean",), normalize: bool = False):
    """Sentence embeddings `[B, D * len(modes)]` (float32) from token states `hidden [B, T, D]` and `mask [B, T]`,
    with sentence-transformers' Pooling semantics (modes concatenated in `POOLING_MODES` order), then optionally
    L2-normalised (eps 1e-12, as torch's `F.normalize`)."""
    h = hidden.astype(jnp.float32)
    m = mask.astype(jnp.float32)[..., None]
    out = []
    for mode in sorted(set(modes), key=POOLING_MODES.index):
        if mode == "cls":
            out.append(h[:, 0])
        elif mode == "max":
            out.append(jnp.where(m > 0, h, -1e9).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = jnp.maximum(m.sum(1), 1e-9)
            out.append(((h * m).sum(1) / (count if mode == "mean" else jnp.sqrt(count))))
        elif mode == "weightedmean":  # position weights 1..T (SGPT)
            w = m * jnp.arange(1, h.shape[1] + 1, dtype=jnp.float32)[None, :, None]
            out.append((h * w).sum(1) / jnp.maximum(w.sum(1), 1e-9))
        elif mode == "lasttoken":
            t = h.shape[1]
            last = t - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)  # the last real token (rows are never all padding)
            out.append(jnp.take_along_axis(h * m, last[:, None, None], axis=1)[:, 0])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}; modes are {POOLING_MODES}")
    x = jnp.concatenate(out, axis=-1)
    if normalize:
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def hidden_states(model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The pure core of token features: the base model's `last_hidden_state [B, T, D]` (float32)."""
    return {"hidden": model(**batch).last_hidden_state.astype(jnp.float32)}


def sentence_embeddings(model, batch: dict[str, jax.Array], modes: tuple[str, ...] = ("mean",),
                        normalize: bool = False) -> dict[str, jax.Array]:  # fmt: skip
    """The pure core of sentence embeddings: `pool` of the last hidden state, `[B, D * len(modes)]`."""
    return {"embedding": pool(model(**batch).last_hidden_state, batch["attention_mask"], modes, normalize)}


class SentenceTransformersConfig:
    """What jaxformers needs of a sentence-transformers folder: pooling modes, normalisation, truncation, casing."""

    def __init__(self, modes: tuple[str, ...], normalize: bool, max_seq_length: int | None, do_lower_case: bool):
        self.modes, self.normalize = modes, normalize
        self.max_seq_length, self.do_lower_case = max_seq_length, do_lower_case

    @classmethod
    def from_folder(cls, folder, max_positions: int | None, model_max_length: int | None):
        """Read `modules.json`, the Pooling module's `config.json` and `sentence_bert_config.json` of `folder` (a local
        directory or hub repo id); ValueError naming the problem when it is not a folder jaxformers can run."""
        from jaxformers.hub import resolve_file

        how = "pass pooling='mean' (or 'cls', 'max', ...) to pool without a sentence-transformers folder"
        modules_file = resolve_file(folder, "modules.json", required=False) if folder else None
        if modules_file is None:
            raise ValueError(
                f"pooling='auto' reads the sentence-transformers modules of the model folder, but {str(folder)!r} has "
                f"no modules.json (not a sentence-transformers folder); {how}"
            )
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        kinds = {}
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _MODULES:
                raise ValueError(
                    f"{folder}/modules.json has a {module.get('type')!r} module, which jaxformers does not run (it "
                    f"runs {', '.join(_MODULES)}): its embeddings would differ from sentence-transformers'; {how}"
                )
            kinds[kind] = module.get("path", "")
        if "Pooling" not in kinds:
            raise ValueError(f"{folder}/modules.json has no Pooling module; {how}")
        pooling_file = resolve_file(folder, f"{kinds['Pooling']}/config.json".lstrip("/"), required=False)
        if pooling_file is None:
            raise ValueError(f"{folder} has no {kinds['Pooling']}/config.json (the Pooling module's settings)")
        pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
        # sentence-transformers' constructor defaults: mean pooling unless the config says otherwise
        flags = {mode: bool(pooling.get(key, mode == "mean")) for mode, key in _POOLING_KEYS.items()}
        if isinstance(pooling.get("pooling_mode"), str):
            flags = {mode: mode == pooling["pooling_mode"].lower() for mode in _POOLING_KEYS}
        modes = tuple(mode for mode in POOLING_MODES if flags[mode])
        if not modes:
            raise ValueError(f"{pooling_file} enables no pooling mode; expected one of {list(_POOLING_KEYS.values())}")
        if pooling.get("include_prompt", True) is False:
            raise ValueError(f"{pooling_file} sets include_prompt=false (prompt-excluding pooling), not supported")
        st_file = resolve_file(folder, f"{kinds.get('Transformer', '')}/sentence_bert_config.json".lstrip("/"),
                               required=False)  # fmt: skip
        st = json.loads(st_file.read_text(encoding="utf-8")) if st_file is not None else {}
        max_seq = st.get("max_seq_length")
        if max_seq is None and max_positions is not None and model_max_length is not None:
            max_seq = min(max_positions, model_max_length)  # sentence-transformers' own inference
        return cls(modes, "Normalize" in kinds, max_seq, bool(st.get("do_lower_case", False)))


class FeatureExtraction(Task):
    names = ("feature-extraction",)
    heads = ("base",)
    defaults = {"truncation": None, "tokenize_kwargs": None, "return_tensors": None, "pooling": None,
                "normalize": None}  # fmt: skip
    per_token = ("hidden",)
    core = staticmethod(hidden_states)

    def __init__(self, model, tokenizer, **options):
        self._st_config: SentenceTransformersConfig | None = None
        super().__init__(model, tokenizer, **options)

    def check_options(self, params: dict[str, Any]) -> None:
        kwargs = params["tokenize_kwargs"]
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"tokenize_kwargs must be a dict of tokenizer options, got {type(kwargs).__name__}")
        if params["truncation"] is not None and kwargs and "truncation" in kwargs:
            raise ValueError(
                "truncation parameter defined twice (given as keyword argument as well as in tokenize_kwargs); "
                "give it once"
            )
        pooling = params["pooling"]
        if pooling == "auto":
            self.st_config()
        elif pooling is not None:
            modes = (pooling,) if isinstance(pooling, str) else pooling
            if not isinstance(modes, (list, tuple)) or not modes or any(m not in POOLING_MODES for m in modes):
                raise ValueError(
                    f"pooling must be None (token features, as the pipeline), 'auto' (the sentence-transformers "
                    f"folder's pooling) or modes among {POOLING_MODES}; got {pooling!r}"
                )
        if params["normalize"] is not None and not isinstance(params["normalize"], bool):
            raise TypeError(f"normalize must be True, False or None, got {params['normalize']!r}")

    def st_config(self) -> SentenceTransformersConfig:
        """The sentence-transformers settings of the tokenizer's folder (read once)."""
        if self._st_config is None:
            folder = getattr(self.tokenizer, "name_or_path", "") or ""
            self._st_config = SentenceTransformersConfig.from_folder(
                folder, getattr(self.model.config, "max_position_embeddings", None),
                getattr(self.tokenizer, "model_max_length", None),
            )  # fmt: skip
        return self._st_config

    def _pooling(self, params) -> tuple[tuple[str, ...], bool] | None:
        """(modes, normalize) for pooled output, None for token features."""
        pooling, normalize = params["pooling"], params["normalize"]
        if pooling is None:
            if normalize:
                raise ValueError("normalize=True applies to pooled embeddings: pass pooling='auto' or a pooling mode")
            return None
        if pooling == "auto":
            st = self.st_config()
            return st.modes, st.normalize if normalize is None else normalize
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        return tuple(sorted(set(modes), key=POOLING_MODES.index)), bool(normalize)

    def preprocess(self, item, *, truncation=None, tokenize_kwargs=None, pooling=None, **_) -> list[dict]:
        if not isinstance(item, str):
            raise TypeError(
                f"feature-extraction takes a string or a list of strings, got {type(item).__name__}: {item!r:.80}"
            )
        kwargs = dict(tokenize_kwargs or {})
        if truncation is not None:
            kwargs["truncation"] = truncation
        if pooling == "auto":  # sentence-transformers' Transformer.tokenize
            st = self.st_config()
            item = item.strip()
            if st.do_lower_case:
                item = item.lower()
            kwargs = {"truncation": "longest_first", "max_length": st.max_seq_length, **kwargs}
        enc = self.tokenizer(item, **{**kwargs, "return_tensors": None})
        keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in enc else [])
        feature = {k: list(enc[k]) for k in keys if k in enc}
        feature.setdefault("attention_mask", [1] * len(feature["input_ids"]))
        limit = self.max_length
        if limit is not None and len(feature["input_ids"]) > limit:
            raise ValueError(
                f"the text has {len(feature['input_ids'])} tokens but the model takes at most {limit} (its position "
                f"table; transformers fails there too); pass truncation=True, or tokenize_kwargs={{'truncation': "
                f"True, 'max_length': {limit}}}"
            )
        return [feature]

    def process(self, items: list, params: dict[str, Any]) -> list:
        features = [self.preprocess(item, **params)[0] for item in items]
        for i, f in enumerate(features):
            if not f["input_ids"]:  # transformers fails there too (a reshape of 0 elements)
                raise ValueError(
                    f"input {i} ({items[i]!r:.40}) gives no tokens (an empty text with a tokenizer that adds no "
                    "special tokens): the model needs at least one; give a non-empty text"
                )
        pooled = self._pooling(params)
        if not features:
            return []
        if pooled is None:
            outputs = [out["hidden"][None] for out in self.run(features)]  # [1, T, D] per text, as the pipeline
        else:
            static = {"modes": pooled[0], "normalize": pooled[1]}
            outputs = [out["embedding"] for out in self.run(features, static=static, core=sentence_embeddings)]
        return [out if params["return_tensors"] else out.tolist() for out in outputs]
