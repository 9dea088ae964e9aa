"""The one-off diagnosis run 4 ran (diag.log; kept for the record, not part of the product): greedy decoding of a
Llama-1.1B-shaped model with each attention implementation, per step (65 tokens minus 1 token, median of 3), and one
decode step's attention call alone. Its "compiles while timed" counts were real: a model's second generate call
compiled every program again (restacked weights came back committed; fixed in core.layers), which is also what made
the QUICK runs' decode steps look 20-30x slow (a median over two calls, one of them compiling)."""
import logging, statistics, sys, tempfile, time
import jax, jax.numpy as jnp, numpy as np, torch, transformers
import jaxformers as jf
from jaxformers.core.options import Options
from jaxformers.core import attention

compiles = []
class H(logging.Handler):
    def emit(self, r):
        m = r.getMessage()
        if "Compiling" in m or "compil" in m.lower():
            compiles.append(m[:160])
_lg = logging.getLogger("jax"); _lg.addHandler(H()); _lg.propagate = False

def med(fn, n=3):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

layers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
cfg = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
                               num_key_value_heads=4, vocab_size=32000, eos_token_id=31999, bos_token_id=0, pad_token_id=31999)
torch.manual_seed(0)
ref = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
ids = np.random.RandomState(1).randint(1, 31998, (1, 32)).astype(np.int32)
with tempfile.TemporaryDirectory() as tmp:
    ref.save_pretrained(tmp)
    for impl in ("xla", "pallas", "auto"):
        model = jf.AutoModelForCausalLM.from_pretrained(tmp, torch_dtype="bfloat16", options=Options(attn_impl=impl))
        gen = lambda n: jax.block_until_ready(jf.generate(model, ids, max_new_tokens=n, do_sample=False, eos_token_id=None))
        gen(1); gen(65)
        jax.config.update("jax_log_compiles", True); compiles.clear()
        t1, t65 = med(lambda: gen(1)), med(lambda: gen(65))
        jax.config.update("jax_log_compiles", False)
        print(f"{impl:>7}: {layers} layers, ms/step {(t65 - t1) / 64 * 1e3:.3f} (1 token {t1 * 1e3:.1f} ms, 65 tokens {t65 * 1e3:.1f} ms); "
              f"compiles while timed: {len(compiles)} {compiles[:2]}", flush=True)

# the attention call of one decode step, alone: q [1, 1, 32, 64] against a [1, 256, 4, 64] cache at a traced offset
rng = np.random.RandomState(0)
q = jnp.asarray(rng.standard_normal((1, 1, 32, 64)), jnp.bfloat16)
k = jnp.asarray(rng.standard_normal((1, 256, 4, 64)), jnp.bfloat16)
v = jnp.asarray(rng.standard_normal((1, 256, 4, 64)), jnp.bfloat16)
mask = jnp.ones((1, 256), bool)
for impl in ("xla", "pallas"):
    f = jax.jit(lambda q, k, v, off, m, impl=impl: attention.dot_product_attention(q, k, v, causal=True, q_offset=off, key_mask=m, impl=impl))
    off = jnp.int32(100)
    jax.block_until_ready(f(q, k, v, off, mask))
    plan = attention.attention_plan(q, k, v, causal=True, q_offset=off, key_mask=mask, impl=impl)
    t = med(lambda: jax.block_until_ready(f(q, k, v, off, mask)), 50)
    hlo = f.lower(q, k, v, off, mask).compile().as_text()
    print(f"attention alone {impl}: {t * 1e3:.3f} ms per call (host round trip included); plan {plan}; "
          f"custom calls {hlo.count('custom-call')}, copies {hlo.count(' copy(')}", flush=True)
