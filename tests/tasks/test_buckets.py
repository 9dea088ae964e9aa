"""Shape buckets of the tasks' batches: lengths round up to few, close buckets; positions never exceed the table."""

from __future__ import annotations

import numpy as np

from jaxformers.tasks.base import batch_bucket, length_bucket


def test_length_buckets_are_few_and_close():
    buckets = sorted({length_bucket(n) for n in range(1, 513)})
    assert buckets == [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512]
    for n in range(1, 513):
        b = length_bucket(n)
        assert n <= b <= max(n + 15, 1.25 * n), (n, b)  # at most 15 padded tokens, or a quarter of n
    # what padding costs on the benchmark's spread of lengths (8-256 tokens, sorted, batches of 8)
    lengths = sorted((int(x) for x in np.random.RandomState(0).randint(8, 257, size=256)), reverse=True)
    padded = sum(length_bucket(max(lengths[i : i + 8])) * len(lengths[i : i + 8]) for i in range(0, 256, 8))
    assert padded / sum(lengths) < 1.15


def test_length_bucket_stays_within_the_position_table():
    assert length_bucket(100, limit=512) == 112
    assert length_bucket(500, limit=510) == 510  # RoBERTa-like tables: the bucket stops at the table's end
    assert length_bucket(300, limit=300) == 300 and length_bucket(10, limit=12) == 12  # never past the table...
    assert length_bucket(20, limit=12) == 20  # ...nor shorter than the input (the model then names the problem)


def test_batch_buckets_are_powers_of_two_up_to_the_batch_size():
    assert [batch_bucket(n, 8) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert batch_bucket(7, 6) == 6
