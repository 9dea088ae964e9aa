"""DataLoader: order a pure function of (seed, epoch) so a resume at (epoch, batch) rebuilds the same batches; length
grouping and power-of-two buckets; per-batch collator generators; the errors; placement on a mesh (4 simulated
devices, in a subprocess: the device count is fixed when JAX starts)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import AbstractMesh

from jaxformers.core.sharding import DP, ShardingError
from jaxformers.training.collators import DataCollatorForLanguageModeling, DataCollatorWithPadding
from jaxformers.training.data import tokenize_dataset
from jaxformers.training.loader import DataLoader, bucket_length

HERE = Path(__file__).parent
WORDS = "the a movie film was is plot acting very quite really story good bad great awful scene music long".split()


@pytest.fixture(scope="module")
def tokenizer():
    import tokenizer_fixtures

    from jaxformers.tokenization import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_fixtures.minilm_dir())


def texts(n: int, seed: int = 0, longest: int = 60) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))), "label": i % 2}
            for i in range(n)]  # fmt: skip


@pytest.fixture(scope="module")
def features(tokenizer):
    return tokenize_dataset(texts(203), tokenizer, "text-classification", max_length=64)


def _rows(batch: dict) -> list[tuple]:
    """Each row's unpadded token ids (for comparing batches independent of padding)."""
    return [tuple(ids[mask > 0]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def test_order_is_a_function_of_seed_and_epoch_and_resume_rebuilds_the_tail(features, tokenizer):
    collate = DataCollatorWithPadding(tokenizer)
    a = DataLoader(features, collate, 16, seed=3)
    b = DataLoader(features, collate, 16, seed=3)
    assert len(a) == 13  # 203 = 12 x 16 + 11: the partial batch is kept
    for epoch in (0, 1):
        first, second = a.batch_indices(epoch), b.batch_indices(epoch)
        assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
        assert sorted(np.concatenate(first)) == list(range(203))  # every example once per epoch
        assert [len(r) for r in first] == [16] * 12 + [11]
    assert not all(np.array_equal(x, y) for x, y in zip(a.batch_indices(0), a.batch_indices(1), strict=True))
    reseeded = DataLoader(features, collate, 16, seed=4).batch_indices(0)
    assert not all(np.array_equal(x, y) for x, y in zip(a.batch_indices(0), reseeded, strict=True))
    whole = list(a.batches(epoch=1))
    tail = list(b.batches(epoch=1, start=5))
    assert len(tail) == len(whole) - 5
    for x, y in zip(whole[5:], tail, strict=True):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_length_grouping_cuts_padding_and_buckets_bound_the_shapes(features, tokenizer):
    collate = DataCollatorWithPadding(tokenizer)
    lengths = features.lengths

    def padding(loader):
        return sum(len(rows) * loader.bucket(rows) - lengths[rows].sum() for rows in loader.batch_indices(0))

    grouped = DataLoader(features, collate, 8, seed=0, group_by_length=True)
    plain = DataLoader(features, collate, 8, seed=0, group_by_length=False)
    assert padding(grouped) < 0.5 * padding(plain)
    widths = {b["input_ids"].shape[1] for b in grouped.batches(0)} | {b["input_ids"].shape[1] for b in plain.batches(0)}
    assert widths <= {16, 32, 64} and len(widths) >= 2  # max_length 64 caps the buckets
    for rows, batch in zip(grouped.batch_indices(0), grouped.batches(0), strict=True):
        assert batch["input_ids"].shape == (len(rows), bucket_length(int(lengths[rows].max()), 64))
        assert _rows(batch) == [tuple(features[int(i)]["input_ids"]) for i in rows]


def test_bucket_lengths():
    assert [bucket_length(n) for n in (1, 16, 17, 33, 100, 129)] == [16, 16, 32, 64, 128, 256]
    assert [bucket_length(n, 100) for n in (16, 65, 100, 101)] == [16, 100, 100, 128]


def test_random_collators_draw_per_batch_generators(tokenizer):
    mlm = tokenize_dataset(texts(64, seed=1), tokenizer, "fill-mask", max_length=32)
    collate = DataCollatorForLanguageModeling(tokenizer)
    a = list(DataLoader(mlm, collate, 8, seed=9).batches(2))
    b = list(DataLoader(mlm, collate, 8, seed=9).batches(2, start=3))
    for x, y in zip(a[3:], b, strict=True):  # a resumed epoch draws the same masks
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
    other = list(DataLoader(mlm, collate, 8, seed=10).batches(2))
    assert any(not np.array_equal(x["labels"], y["labels"]) for x, y in zip(a, other, strict=True))
    assert all((x["labels"] != -100).any() for x in a)


def test_plain_collators_that_take_no_length(features):
    def collate(examples):  # a transformers-style collator: no length / rng keywords
        width = max(len(e["input_ids"]) for e in examples)
        return {"input_ids": np.array([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in examples])}

    batch = next(DataLoader(features, collate, 4, shuffle=False).batches(0))
    assert batch["input_ids"].shape[1] == max(len(features[i]["input_ids"]) for i in range(4))


def test_errors(features, tokenizer):
    collate = DataCollatorWithPadding(tokenizer)
    with pytest.raises(ValueError, match="the dataset is empty"):
        DataLoader([], collate, 8)
    mesh = AbstractMesh((4, 2), ("data", "tp"))
    with pytest.raises(ShardingError, match=r"global batch size 6 is not divisible by the 4 devices .* data=4.* "
                                            r"multiple of 4, e.g. 4"):  # fmt: skip
        DataLoader(features, collate, 6, mesh=mesh, rules=DP)
    DataLoader(features, collate, 8, mesh=mesh, rules=DP)  # 8 = 2 rows per data shard: accepted
    with pytest.raises(ValueError, match="drop_last=True with 203 examples and batch_size 256"):
        DataLoader(features, collate, 256, drop_last=True)
    assert len(DataLoader(features, collate, 16, drop_last=True)) == 12
    assert all(len(r) == 16 for r in DataLoader(features, collate, 16, drop_last=True).batch_indices(0))


def mesh_check() -> None:
    """Run in a subprocess with 4 CPU devices: batches become global arrays split over the data axis, with the
    same values as the unsharded loader's; a final partial batch not divisible by 4 is replicated."""
    import jax

    import tokenizer_fixtures
    from jaxformers.tokenization import AutoTokenizer

    assert jax.device_count() == 4, jax.devices()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_fixtures.minilm_dir())
    features = tokenize_dataset(texts(42), tokenizer, "text-classification", max_length=64)
    collate = DataCollatorWithPadding(tokenizer)
    mesh = jax.make_mesh((4,), ("data",))
    plain = list(DataLoader(features, collate, 8, seed=1).batches(0))
    placed = list(DataLoader(features, collate, 8, seed=1, mesh=mesh, rules=DP).batches(0))
    assert len(plain) == len(placed) == 6
    for host, device in zip(plain, placed, strict=True):
        assert host.keys() == device.keys()
        for key, value in device.items():
            assert isinstance(value, jax.Array)
            np.testing.assert_array_equal(np.asarray(value), host[key])
            rows = len(host[key])
            if rows % 4 == 0:
                assert value.sharding.spec[0] == "data"
                assert {s.data.shape[0] for s in value.addressable_shards} == {rows // 4}
            else:
                assert value.sharding.is_fully_replicated  # the last batch: 42 = 5 x 8 + 2
    print("mesh ok")


def test_batches_on_a_mesh():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE.parent), str(HERE)]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", "import test_loader; test_loader.mesh_check()"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and "mesh ok" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
