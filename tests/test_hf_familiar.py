"""What a user coming from transformers reaches for: `model.generate`, `model.num_parameters`, `AutoConfig`,
`torch_dtype=`, `set_seed`, `TextStreamer`, and a `jaxformers convert` that writes a complete, readable model folder
and fails fast, in one line, on a hub id it cannot fetch. References come from transformers at test time."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers

import jaxformers as jf
from jaxformers.cli import main

# one prompt shape and one set of sampling settings for every generate call here: the compiled programs are shared
PROMPT = np.array([[5, 9, 13, 2, 40]], np.int32)
SAMPLE = dict(max_new_tokens=8, do_sample=True, eos_token_id=None)


@pytest.fixture(scope="module")
def gpt2(tiny_hf):
    directory, ref = tiny_hf("gpt2", "GPT2LMHeadModel")
    return directory, ref, jf.AutoModelForCausalLM.from_pretrained(directory)


@pytest.fixture(scope="module")
def gpt2_with_tokenizer(gpt2, tmp_path_factory):
    """The tiny GPT-2 weights plus the real GPT-2 byte-level BPE tokenizer files (its first 97 ids are the model's)."""
    from tokenizer_fixtures import gpt2_dir

    root = tmp_path_factory.mktemp("gpt2_tok")
    src = root / "src"
    shutil.copytree(gpt2[0], src)
    for f in gpt2_dir(root).iterdir():
        shutil.copy(f, src / f.name)
    return src


@pytest.mark.parametrize(
    "name, hf_class",
    [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM"), ("bert", "BertForMaskedLM")],
    ids=["tied-lm-head", "untied-lm-head", "bert-type-embeddings"],
)
def test_num_parameters_matches_transformers(tiny_hf, name, hf_class):
    """Elements, tied weights once (GPT-2's and BERT's MLM decoder are the word embeddings), embedding tables
    (token, position, token type) left out by exclude_embeddings, as transformers counts them."""
    directory, ref = tiny_hf(name, hf_class)
    ours = jf.AutoModelForCausalLM if name != "bert" else jf.AutoModelForMaskedLM
    model = ours.from_pretrained(directory)
    for kwargs in ({}, {"exclude_embeddings": True}, {"only_trainable": True}):
        assert model.num_parameters(**kwargs) == ref.num_parameters(**kwargs), kwargs
    # the base model, as each library builds it from the head checkpoint (BERT: with a new pooler)
    base_ref = transformers.AutoModel.from_pretrained(directory)
    assert jf.AutoModel.from_pretrained(directory).num_parameters() == base_ref.num_parameters()


def test_generate_method_is_jf_generate(gpt2):
    _, _, model = gpt2
    want = jf.generate(model, PROMPT, key=3, **SAMPLE)
    np.testing.assert_array_equal(model.generate(PROMPT, key=3, **SAMPLE), want)
    # transformers' calling style: the tokenizer's dict as keywords
    got = model.generate(input_ids=PROMPT, attention_mask=np.ones_like(PROMPT), key=3, **SAMPLE)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="cannot generate.*AutoModelForCausalLM"):
        jf.AutoModel.from_pretrained(gpt2[0]).generate(PROMPT, max_new_tokens=2)


def test_auto_config(gpt2, tmp_path):
    from jaxformers.models.gpt2 import GPT2Config

    directory, ref, model = gpt2
    cfg = jf.AutoConfig.from_pretrained(directory)
    assert type(cfg) is GPT2Config and cfg == model.config
    hf = transformers.AutoConfig.from_pretrained(directory)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.vocab_size) == (hf.n_embd, hf.n_layer, hf.n_head, hf.vocab_size)
    assert jf.AutoConfig.from_pretrained(directory, n_layer=1).n_layer == 1  # keyword overrides, as transformers
    jf.save_checkpoint(model, tmp_path / "ckpt")
    assert jf.AutoConfig.from_pretrained(tmp_path / "ckpt") == cfg
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(ValueError, match="unknown model_type 'no-such-arch'.*supports"):
        jf.AutoConfig.from_pretrained(bad)
    with pytest.raises(ValueError):  # transformers refuses it too
        transformers.AutoConfig.from_pretrained(bad)


def param_dtypes(model) -> set[str]:
    from jaxformers.loading import model_params

    return {str(v.dtype) for v in model_params(model).values()}


def test_torch_dtype_is_the_weights_dtype(gpt2, tmp_path):
    directory, ref, _ = gpt2
    assert param_dtypes(jf.load(directory, torch_dtype="bfloat16")) == {"bfloat16"}
    assert param_dtypes(jf.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float16)) == {"float16"}
    # "auto": the checkpoint's dtype, from config.json or else from the tensors, as transformers
    bf16 = tmp_path / "bf16"
    transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=torch.bfloat16).save_pretrained(bf16)
    want = {str(p.dtype).removeprefix("torch.") for p in
            transformers.AutoModelForCausalLM.from_pretrained(bf16, dtype="auto").parameters()}  # fmt: skip
    assert param_dtypes(jf.load(bf16, torch_dtype="auto")) == want == {"bfloat16"}
    config = json.loads((bf16 / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (bf16 / "config.json").write_text(json.dumps(config))
    assert param_dtypes(jf.load(bf16, torch_dtype="auto")) == {"bfloat16"}
    assert param_dtypes(jf.load(directory, torch_dtype="auto")) == {"float32"}
    jf.save_checkpoint(jf.load(directory, torch_dtype="bfloat16"), tmp_path / "ckpt")  # an Orbax checkpoint: as stored
    assert param_dtypes(jf.load(tmp_path / "ckpt", torch_dtype="auto")) == {"bfloat16"}
    with pytest.raises(ValueError, match="both torch_dtype.*param_dtype"):
        jf.load(directory, torch_dtype="bfloat16", param_dtype="float32")
    with pytest.raises(ValueError, match="both torch_dtype.*dtype"):
        jf.load(directory, torch_dtype="bfloat16", dtype="bfloat16")
    with pytest.raises(ValueError, match="torch_dtype='int8' is not a floating-point dtype"):
        jf.load(directory, torch_dtype="int8")


@pytest.fixture
def restore_seed():
    from jaxformers import generation

    yield
    generation.DEFAULT_SEED = 0


def test_set_seed_sets_the_default_sampling_key(gpt2, restore_seed):
    import random

    _, _, model = gpt2
    unkeyed = jf.generate(model, PROMPT, **SAMPLE)
    np.testing.assert_array_equal(unkeyed, jf.generate(model, PROMPT, key=0, **SAMPLE))  # the default: seed 0
    jf.set_seed(1)
    first = jf.generate(model, PROMPT, **SAMPLE)
    draws = (random.random(), np.random.rand())
    np.testing.assert_array_equal(first, jf.generate(model, PROMPT, key=1, **SAMPLE))
    assert not np.array_equal(first, unkeyed)
    jf.set_seed(2)
    assert not np.array_equal(jf.generate(model, PROMPT, **SAMPLE), first)
    jf.set_seed(1)
    np.testing.assert_array_equal(jf.generate(model, PROMPT, **SAMPLE), first)
    assert (random.random(), np.random.rand()) == draws
    with pytest.raises(TypeError, match="int seed"):
        jf.set_seed("1")


def test_text_streamer_prints_the_decoded_output(gpt2, gpt2_with_tokenizer, capsys):
    """What TextStreamer prints is the decoded output plus a newline, printed exactly as transformers' own
    TextStreamer prints it when handed to jf.generate (put/end protocol: prompt first, then the chunks)."""
    model = gpt2[2]
    tok = jf.AutoTokenizer.from_pretrained(gpt2_with_tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(gpt2_with_tokenizer)
    full = jf.generate(model, PROMPT, key=5, **SAMPLE)
    capsys.readouterr()
    for skip_prompt in (False, True):
        out = jf.generate(model, PROMPT, key=5, streamer=jf.TextStreamer(tok, skip_prompt=skip_prompt), chunk_steps=3,
                          **SAMPLE)  # fmt: skip
        np.testing.assert_array_equal(out, full)
        printed = capsys.readouterr().out
        start = PROMPT.shape[1] if skip_prompt else 0
        assert printed == tok.decode(full[0, start:].tolist(), skip_special_tokens=True) + "\n"
        jf.generate(model, PROMPT, key=5, streamer=transformers.TextStreamer(hf_tok, skip_prompt=skip_prompt),
                    chunk_steps=3, **SAMPLE)  # fmt: skip
        assert capsys.readouterr().out == printed
    with pytest.raises(ValueError, match="batch of 2.*jf.stream"):
        jf.generate(model, np.repeat(PROMPT, 2, 0), streamer=jf.TextStreamer(tok), **SAMPLE)
    with pytest.raises(TypeError, match="streamer must be a callable"):
        jf.generate(model, PROMPT, streamer=object(), **SAMPLE)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_convert_writes_the_tokenizer_and_ordinary_file_modes(gpt2_with_tokenizer, tmp_path, umask_022):
    src = gpt2_with_tokenizer
    main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax"])
    main(["convert", str(tmp_path / "orbax"), str(tmp_path / "hf"), "--to", "hf"])
    text = "Hello world, jaxformers!"
    want = transformers.AutoTokenizer.from_pretrained(src)(text)["input_ids"]
    for out in (tmp_path / "orbax", tmp_path / "hf"):
        assert (out / "tokenizer.json").is_file()
        assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == want
        modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in out.rglob("*") if p.is_file()}
        assert set(modes.values()) == {"0o644"}, modes  # model.safetensors was 0o600
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf") is not None


def run_cli(tmp_path, **env) -> tuple[subprocess.CompletedProcess, float]:
    """`jaxformers convert some-org/some-model` in a fresh process with an empty hub cache; also returns how long
    the conversion itself took (timed inside the process, so the interpreter's start-up does not count)."""
    code = textwrap.dedent(f"""
        import sys, time
        from jaxformers.cli import main
        start = time.perf_counter()
        try:
            main(["convert", "some-org/some-model", {str(tmp_path / "out")!r}])
        finally:
            print(f"{{time.perf_counter() - start:.3f}}")
    """)
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env = {**base, "HF_HOME": str(tmp_path / "hf_home"), **env}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return proc, float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["offline", "unreachable"])
def test_uncached_hub_id_fails_fast_in_one_line(tmp_path, mode):
    """Offline, or with a hub that does not answer (a closed local port: connection refused, where huggingface_hub
    alone retries for ~22 s), the CLI prints one line naming the repo and what to do, and exits 1."""
    env = {"HF_HUB_OFFLINE": "1"} if mode == "offline" else {"HF_ENDPOINT": "http://127.0.0.1:9"}
    proc, seconds = run_cli(tmp_path, **env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no traceback, no retry warnings
    assert "some-org/some-model" in lines[0] and "not in the local Hugging Face cache" in lines[0]
    assert "local model directory" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert seconds < 5, seconds
