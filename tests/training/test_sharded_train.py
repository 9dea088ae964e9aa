"""The same train step unsharded, DP and FSDP+TP on 8 CPU devices, and FSDP over two processes: the same losses.

A tiny Llama (causal LM, attention dropout) and a tiny BERT classifier (hidden, attention and classifier dropout)
train 20 AdamW steps with dropout on; every sharded run gives the unsharded run's losses, keeps every state array's
sharding after every step, and holds Adam's moments sharded like the parameters. The two-process run (gloo on
127.0.0.1, 4 devices each) feeds each process half of every global batch through `jf.shard_batch`.
"""

from __future__ import annotations

import os

# XLA reads the device count when the backend starts: set it at collection time, before any test touches a device
# (as tests/sharding/conftest.py does).
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402
from mp_train_worker import BERT, LLAMA, NUM_STEPS, bert_batches, llama_batches, train  # noqa: E402

import jaxformers as jf  # noqa: E402
from jaxformers.core import sharding as shd  # noqa: E402
from jaxformers.training import TrainState, create_optimizer, make_train_step  # noqa: E402

HERE = Path(__file__).parent
MP_STEPS = 10
# The sharded runs: (model, preset) -> mesh axes. With the unsharded runs (the replicated case, on one device) and
# the two-process test (Llama, FSDP over 8 devices), every preset trains: DP splits BERT's batch 8 ways; FSDP+TP with
# a data axis splits Llama's batch over data x fsdp and each matrix over fsdp and tp.
RUNS = {("bert", "dp"): {"data": 8}, ("llama", "fsdp_tp"): {"data": 2, "fsdp": 2, "tp": 2}}
# How many ways each run splits the MLP's input kernel [embed, mlp] (written out, not derived from the rules).
SPLIT = {("bert", "dp"): 1, ("llama", "fsdp_tp"): 4}


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() < 8:
        pytest.fail(f"these tests need 8 devices, found {jax.device_count()}: the JAX backend started before this "
                    f"module set XLA_FLAGS={_FLAG}. Run the file on its own, or set the flag in the environment.")


@pytest.fixture(scope="module")
def models(tiny_hf):
    return {
        "llama": (tiny_hf("llama", "LlamaForCausalLM", **LLAMA)[0], llama_batches(NUM_STEPS)),
        "bert": (tiny_hf("bert", "BertForSequenceClassification", **BERT)[0], bert_batches(NUM_STEPS)),
    }


@pytest.fixture(scope="module")
def runs(models):
    """`run(model, preset)` -> (losses, final state), each run computed once per module (preset None: unsharded)."""
    cache = {}

    def run(name: str, preset: str | None):
        if (name, preset) not in cache:
            path, batches = models[name]
            mesh = None if preset is None else jf.make_mesh(RUNS[name, preset])
            cache[name, preset] = train(path, mesh, None if preset is None else shd.PRESETS[preset], batches)
        return cache[name, preset]

    return run


def _mlp_in_kernel(name: str, params):
    if name == "llama":
        return params["model"]["layers"]["block"]["mlp"]["up_proj"]["kernel"]
    return params["bert"]["encoder"]["layer"]["block"]["intermediate"]["kernel"]


@pytest.mark.parametrize("name,preset", sorted(RUNS), ids=[f"{n}-{p}" for n, p in sorted(RUNS)])
def test_sharded_losses_equal_unsharded(runs, name, preset):
    """20 steps with dropout on: the sharded losses equal the unsharded ones (1e-5 relative), so the dropout masks
    are the same too, and the parameters end split as the preset says (`train` asserts that every state array kept
    its sharding after every step)."""
    ref, _ = runs(name, None)
    got, state = runs(name, preset)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # Steps 0 and 1: the same batch and parameters (learning rate 0 in step 0), only the dropout masks differ
    assert abs(ref[1] - ref[0]) > 1e-4 * ref[0], ref[:2]
    assert len(set(np.round(ref, 4))) > 10, ref  # the model trains: the losses move
    kernel = _mlp_in_kernel(name, state.params)
    assert kernel.sharding.mesh == jf.make_mesh(RUNS[name, preset])
    assert all(s.data.size * SPLIT[name, preset] == kernel.size for s in kernel.addressable_shards), kernel.sharding


def _slots(opt_state, name: str) -> dict:
    """Adam's `mu` or `nu`, as {parameter path: array}."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        keys = [getattr(k, "name", getattr(k, "key", None)) for k in path]
        if name in keys:
            out["/".join(map(str, keys[keys.index(name) + 1 :]))] = x
    return out


def test_fsdp_shards_adam_moments_like_the_parameters(models, runs):
    """Adam's mu and nu (and optax.MultiSteps' accumulated gradients) are split over the devices exactly as their
    parameters: at creation under FSDP on 8 devices, and after 20 FSDP+TP steps; the step counts are replicated on
    the same mesh (nothing is left on one device)."""
    path, _ = models["llama"]
    mesh = jf.make_mesh({"fsdp": 8})
    optimizer, _ = create_optimizer(1e-3, NUM_STEPS, weight_decay=0.01, gradient_accumulation_steps=2)
    fresh = TrainState.create(jf.load(path, mesh=mesh, rules=jf.FSDP), optimizer)
    trained, trained_mesh = runs("llama", "fsdp_tp")[1], jf.make_mesh(RUNS["llama", "fsdp_tp"])
    for state, mesh, slots, split in ((fresh, mesh, ("mu", "nu", "acc_grads"), 8),
                                      (trained, trained_mesh, ("mu", "nu"), 4)):  # fmt: skip
        params = {"/".join(str(k.key) for k in p): x for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
        for slot in slots:
            moments = _slots(state.opt_state, slot)
            assert moments.keys() == params.keys(), slot
            for key, x in moments.items():
                assert x.sharding == params[key].sharding, (slot, key, x.sharding, params[key].sharding)
            up = moments["model/layers/block/mlp/up_proj/kernel"]
            assert all(s.data.size * split == up.size for s in up.addressable_shards), (slot, up.sharding)
        for x in jax.tree.leaves(state.opt_state) + [state.step, state.rng]:
            assert x.sharding.mesh == mesh, x.sharding
            if x.ndim == 0:
                assert x.sharding.spec == PartitionSpec(), x.sharding


def test_batch_not_divisible_by_the_data_axes(models):
    """A global batch of 6 on 8 data-parallel devices: one clear ShardingError from shard_batch, and from the step
    itself when handed host arrays, before anything compiles."""
    path, batches = models["bert"]
    mesh = jf.make_mesh({"data": 2, "fsdp": 4})
    model = jf.load(path, mesh=mesh, rules=jf.FSDP)
    optimizer, _ = create_optimizer(1e-3, NUM_STEPS)
    train_step, _ = make_train_step(model, optimizer)
    state = TrainState.create(model, optimizer)
    six = {k: v[:6] for k, v in batches[0].items()}
    msg = r"batch size 6 is not divisible by 8.*data=2, fsdp=4.*e\.g\. 8"
    with jf.use_mesh(mesh, jf.FSDP):
        with pytest.raises(shd.ShardingError, match=msg):
            jf.shard_batch(six)
        with pytest.raises(shd.ShardingError, match=msg):
            train_step(state, six)


def test_dropout_masks_equal_under_sharding_either_threefry_mode():
    """The masks the step draws for a sharded activation are the unsharded ones, with JAX's partitionable threefry
    (the default) and without it: what the step's docstring promises."""
    from jaxformers.core.dropout import dropout

    mesh = jf.make_mesh({"data": 2, "fsdp": 2, "tp": 2})
    x = np.random.RandomState(0).randn(8, 16, 64).astype(np.float32)

    def drop(x, key):
        return dropout(shd.constrain(x, shd.ACT_BTF), 0.3, jax.random.fold_in(key, 3))

    for partitionable in (True, False):
        with jax.threefry_partitionable(partitionable):
            ref = np.asarray(jax.jit(drop)(x, jax.random.key(5)))
            with jf.use_mesh(mesh, jf.FSDP_TP):
                got = jax.jit(drop)(jf.shard_batch(x), jax.random.key(5))
            assert got.sharding.spec == PartitionSpec(("data", "fsdp"), None, "tp")
            np.testing.assert_array_equal(np.asarray(got), ref)
            assert 0.2 < (ref == 0).mean() < 0.4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(models, runs, tmp_path):
    """Two processes (4 CPU devices each, gloo) train 10 FSDP steps over all 8 devices, each loading half of every
    global batch: the losses equal the unsharded run's in this process."""
    path, _ = models["llama"]
    port = _free_port()
    # LLVM's optimisation level 0 cuts the workers' compile time by a third; results move only by float rounding
    # (measured: 1e-7 relative on these losses), far below the tolerance
    flags = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "XLA_FLAGS": flags}
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "mp_train_worker.py"), str(path), str(tmp_path), str(i), "2",
                          str(port), str(MP_STEPS)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=tmp_path)  # fmt: skip
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            p.kill()
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-4000:]
    assert "done 0 2 8" in outputs[0] and "done 1 2 8" in outputs[1], outputs
    got = json.loads((tmp_path / "losses.json").read_text())
    ref, _ = runs("llama", None)
    assert len(got) == MP_STEPS
    np.testing.assert_allclose(got, ref[:MP_STEPS], rtol=1e-5)
