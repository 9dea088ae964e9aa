"""`text-generation` against `transformers.pipeline` on the same folders: a tiny random GPT-2 with the real GPT-2 BPE,
and a tiny random Llama with the same BPE plus a Jinja chat template (chat in, chat out). Greedy and beam search are
compared exactly; sampling (torch's random numbers cannot be reproduced) for shapes and reproducibility."""

from __future__ import annotations

import copy
import json
import random
import shutil

import pytest
import transformers

import jaxformers as jf
from jaxformers.generation import TRACES as GEN_TRACES

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "Crème brûlée, naïve café", "a"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")  # fmt: skip
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there, who are you?"}]
GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def gpt2(task_checkpoint):
    d, _ = task_checkpoint("gpt2", "GPT2LMHeadModel", tokenizer="gpt2")
    return d


@pytest.fixture(scope="module")
def gpt2_pair(gpt2):
    return transformers.pipeline("text-generation", model=str(gpt2)), jf.task("text-generation", model=gpt2)


@pytest.fixture(scope="module")
def llama(task_checkpoint, tmp_path_factory):
    """A tiny Llama with the GPT-2 BPE, a pad token (so that transformers can batch) and a chat template."""
    src, _ = task_checkpoint("llama", "LlamaForCausalLM", tokenizer="gpt2")
    d = tmp_path_factory.mktemp("tg") / "llama-chat"
    shutil.copytree(src, d)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "pad_token": "<|endoftext|>", "chat_template": TEMPLATE,
        "model_max_length": 40}))  # fmt: skip
    return d


@pytest.fixture(scope="module")
def llama_pair(llama):
    return transformers.pipeline("text-generation", model=str(llama)), jf.task("text-generation", model=llama)


def same(ref, ours, kwargs, inputs, **ours_extra):
    r = ref(copy.deepcopy(inputs), **copy.deepcopy(kwargs))
    o = ours(copy.deepcopy(inputs), **copy.deepcopy(kwargs), **ours_extra)
    assert r == o, (kwargs, inputs, r, o)
    return o


def eos_from_greedy(ref, prompt, step):
    """A token that greedy decoding of `prompt` produces at new-token `step`: as EOS it ends that row early."""
    ids = ref(prompt, max_new_tokens=step + 1, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    return ids[-1]


@pytest.mark.parametrize("kwargs", [
    GREEDY,
    {**GREEDY, "return_full_text": False},
    {**GREEDY, "return_tensors": True},
    {**GREEDY, "prefix": "Once upon a time, "},
    {"max_length": 14, "do_sample": False},
    {"max_length": 18, "do_sample": False, "prefix": "Once upon a time, "},
    {**GREEDY, "num_beams": 3, "num_return_sequences": 2},
    {**GREEDY, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "skip_special_tokens": False},
])  # fmt: skip
def test_greedy_and_beam_match_pipeline(gpt2_pair, kwargs):
    ref, ours = gpt2_pair
    for inp in (PROMPTS[0], PROMPTS, ""):
        same(ref, ours, kwargs, inp, batch_size=1)  # one prompt at a time: one compiled shape (batching: below)


def test_rows_ending_early_in_a_batch(gpt2_pair):
    """Rows that hit EOS (or a stop string) at different steps are cut back exactly as when each prompt runs alone
    (the pipeline's default batch_size=1), also for several beams per prompt."""
    ref, ours = gpt2_pair
    eos = eos_from_greedy(ref, PROMPTS[1], 2)
    same(ref, ours, {**GREEDY, "eos_token_id": eos}, PROMPTS, batch_size=4)
    out = same(ref, ours, {**GREEDY, "eos_token_id": eos, "return_tensors": True}, PROMPTS, batch_size=4)
    assert len({len(rows[0]["generated_token_ids"]) - len(ref.tokenizer(p)["input_ids"])
                for rows, p in zip(out, PROMPTS)}) > 1  # fmt: skip
    beams = {**GREEDY, "eos_token_id": eos, "num_beams": 2, "num_return_sequences": 2, "return_tensors": True}
    same(ref, ours, beams, PROMPTS, batch_size=4)
    new_text = ref(PROMPTS[1], **GREEDY, return_full_text=False)[0]["generated_text"]
    stop = new_text[len(new_text) // 2 : len(new_text) // 2 + 2]  # two characters in the middle of the new text
    for kwargs in ({**GREEDY, "stop_sequence": stop}, {**GREEDY, "stop_sequence": [stop, "zzz"],
                                                       "return_tensors": True}):  # fmt: skip
        out = same(ref, ours, kwargs, PROMPTS, batch_size=4)
    n = len(ref.tokenizer(PROMPTS[1])["input_ids"])
    assert len(out[1][0]["generated_token_ids"]) < n + GREEDY["max_new_tokens"]  # the stop string cut the row


def test_chat_in_chat_out(llama_pair):
    ref, ours = llama_pair
    cont = CHAT + [{"role": "assistant", "content": "I am"}]
    for inp in (CHAT, [CHAT, cont], cont):
        for kwargs in (GREEDY, {**GREEDY, "return_full_text": False}, {**GREEDY, "continue_final_message": False}):
            same(ref, ours, kwargs, inp)
    reply = ours(CHAT, **GREEDY)[0]["generated_text"]
    assert reply[:2] == CHAT and reply[2]["role"] == "assistant" and len(reply) == 3
    # transformers batched (left padding with the pad token) gives the same as ours batched
    same(ref, ours, GREEDY, [CHAT, cont, [{"role": "user", "content": "Tell me a story about a fox."}]], batch_size=2)
    prefilled = ours(cont, **GREEDY)[0]["generated_text"]  # the prefilled reply, continued
    assert len(prefilled) == 3 and prefilled[2]["content"].startswith("I am") and prefilled[2]["content"] != "I am"


def test_handle_long_generation_hole(llama_pair):
    """`hole` keeps the prompt's last tokens so that prompt + new tokens fit the tokenizer's model_max_length (40)."""
    ref, ours = llama_pair
    long_prompt = "the quick brown fox jumps over the lazy dog " * 5  # 45 tokens
    for kwargs in ({**GREEDY, "handle_long_generation": "hole"},
                   {**GREEDY, "handle_long_generation": "hole", "return_full_text": False}):  # fmt: skip
        same(ref, ours, kwargs, [long_prompt, PROMPTS[0]], batch_size=2)


def test_sampling_shapes_and_reproducibility(gpt2_pair):
    ref, ours = gpt2_pair
    kwargs = {"max_new_tokens": 5, "num_return_sequences": 3, "top_k": 20, "top_p": 0.9}
    out = ours(PROMPTS[:2], **kwargs, key=1)  # the pipeline's default is to sample (do_sample=True, temperature 0.7)
    theirs = ref(PROMPTS[:2], **kwargs)
    assert [len(rows) for rows in out] == [len(rows) for rows in theirs] == [3, 3]
    assert all(r["generated_text"].startswith(p) for rows, p in zip(out, PROMPTS) for r in rows)
    assert out == ours(PROMPTS[:2], **kwargs, key=1)
    assert out != ours(PROMPTS[:2], **kwargs, key=2)
    ids = ours(PROMPTS[:2], **kwargs, key=3, return_tensors=True)
    n = len(ref.tokenizer(PROMPTS[0])["input_ids"])
    assert all(len(r["generated_token_ids"]) == n + 5 for r in ids[0])  # no EOS drawn: full length
    greedy = ours(PROMPTS[0], max_new_tokens=5, do_sample=False)
    assert greedy == ours(PROMPTS[0], max_new_tokens=5, do_sample=False, key=7)  # greedy ignores the key


def test_compiles_a_handful_of_times(gpt2_pair):
    _, ours = gpt2_pair
    rng = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 25))) for _ in range(100)]
    before = sum(GEN_TRACES.values())
    out = ours(prompts, max_new_tokens=2, do_sample=False, batch_size=8)
    assert len(out) == 100 and all(len(rows) == 1 for rows in out)
    assert sum(GEN_TRACES.values()) - before <= 10


def test_bad_inputs(gpt2_pair, gpt2):
    ref, ours = gpt2_pair
    with pytest.raises(ValueError, match="handle_long_generation"):
        ref("x", handle_long_generation="cut")
    with pytest.raises(ValueError, match="not a valid value for `handle_long_generation`"):
        ours("x", handle_long_generation="cut")
    for bad in ({"return_full_text": True, "return_text": True}, {"return_full_text": False, "return_tensors": True},
                {"return_tensors": True, "return_text": True}):  # fmt: skip
        with pytest.raises(ValueError, match="mutually exclusive"):
            ref("x", **bad)
        with pytest.raises(ValueError, match="mutually exclusive"):
            ours("x", **bad)
    bad_chat = [{"role": "user", "content": "hi"}, {"role": "assistant"}]
    with pytest.raises(ValueError, match="'role' and 'content'"):
        ref(bad_chat)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        ours(bad_chat)
    with pytest.raises(ValueError, match="Greedy decoding .* returns one sequence"):
        ours("x", do_sample=False, num_return_sequences=2)
    with pytest.raises(ValueError, match="context"):  # 64 positions: prompt + new tokens must fit
        ours("x", max_new_tokens=100, do_sample=False)
    with pytest.raises(TypeError, match="unknown option"):
        ours("x", typical_p=0.5)
    with pytest.raises(ValueError, match="stop_sequence is not supported with beam search"):
        ours("x", max_new_tokens=3, num_beams=2, do_sample=False, stop_sequence="a")
    with pytest.raises(TypeError, match="text-generation takes a string"):
        ours(3)
    with pytest.raises(ValueError, match="needs a model with a causal-lm head"):
        jf.task("text-generation", model=jf.AutoModel.from_pretrained(gpt2), tokenizer=gpt2)
