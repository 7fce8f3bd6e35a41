import numpy as np
import pytest

from mqsa_jax.data import registry
from mqsa_jax.data.arrays import build_sequence_data, right_aligned_tails
from mqsa_jax.data.dataset import from_full_sequences

PAD = 9


def _small_dataset():
    sequences = [[0, 1, 2, 3, 4, 5, 6], [3, 3, 1], [8, 7, 6, 5, 4]]
    offsets = np.cumsum([0] + [len(s) for s in sequences])
    return from_full_sequences("small", np.concatenate(sequences), offsets, PAD,
                               np.arange(3).astype(str), np.arange(PAD).astype(str))


def _row(items, width=4):
    return [PAD] * (width - len(items)) + list(items)


def test_rows_follow_the_reference_preprocessing():
    data = build_sequence_data(_small_dataset(), max_len=4)
    train_inputs, train_targets = data.train_rows()
    valid_inputs, valid_labels, valid_history = data.eval_rows("valid")
    test_inputs, test_labels, test_history = data.eval_rows("test")
    # user 0: train [0..4], valid 5, test 6; cut = [1, 2, 3, 4]
    assert train_inputs[0].tolist() == _row([1, 2, 3])
    assert train_targets[0].tolist() == _row([2, 3, 4])
    assert valid_inputs[0].tolist() == _row([1, 2, 3, 4])
    assert test_inputs[0].tolist() == _row([2, 3, 4, 5])
    assert (valid_labels[0], test_labels[0]) == (5, 6)
    assert test_history[0].tolist() == [1, 2, 3, 4, 5]
    # user 1: train [3], valid 3, test 1
    assert train_inputs[1].tolist() == _row([])
    assert train_targets[1].tolist() == _row([])
    assert test_inputs[1].tolist() == _row([3, 3])
    assert valid_history[1].tolist() == _row([3])
    # user 2: train [8, 7, 6]
    assert train_inputs[2].tolist() == _row([8, 7])
    assert train_targets[2].tolist() == _row([7, 6])
    # A batch's rows are those of the whole, in the batch's order.
    users = np.array([2, 0])
    for whole, part in zip(data.train_rows() + data.eval_rows("test"),
                           data.train_rows(users) + data.eval_rows("test", users)):
        np.testing.assert_array_equal(whole[users], part)
    assert data.train_lengths.tolist() == [3, 0, 2]
    assert data.num_train_targets == 3 + 0 + 2


@pytest.mark.parametrize("time_span", [1, 2, 3])
def test_transitions_against_a_loop(time_span):
    dataset = _small_dataset()
    data = build_sequence_data(dataset, max_len=4, time_span=time_span)
    expected = np.zeros((PAD, PAD), dtype=np.float32)
    for user in range(dataset.num_users):
        cut = dataset.train_sequence(user)[-4:]
        for k in range(1, time_span + 1):
            for n in range(len(cut) - k):
                expected[cut[n], cut[n + k]] += 1
    np.testing.assert_array_equal(data.transitions.to_dense(), expected)
    np.testing.assert_array_equal(data.transitions.row_max, expected.max(axis=1))


def test_right_aligned_tails_against_a_loop():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 100, offsets[-1]).astype(np.int32)
    matrix = right_aligned_tails(values, offsets, 6, -1)
    for row in range(50):
        tail = values[offsets[row]:offsets[row + 1]][-6:].tolist()
        assert matrix[row].tolist() == [-1] * (6 - len(tail)) + tail


def test_beauty_counts(data_root):
    dataset = registry.load_dataset("beauty", data_root)
    data = build_sequence_data(dataset, max_len=50)
    assert data.cut.shape == (22363, 50)
    cut_lengths = np.minimum(dataset.train_lengths, 50)
    assert data.num_train_targets == int((cut_lengths - 1).sum())
    assert data.transitions.counts.sum() == data.num_train_targets


def test_blocks_of_rows_give_the_arrays_of_one_block(monkeypatch):
    """The host arrays are built ROWS_PER_BLOCK users at a time: 7 here, a tail included."""
    from mqsa_jax.data import arrays
    from tests.helpers import random_dataset

    dataset = random_dataset(num_users=50, num_items=30, max_length=14)
    whole = build_sequence_data(dataset, max_len=6, time_span=2)
    monkeypatch.setattr(arrays, "ROWS_PER_BLOCK", 7)
    blocked = build_sequence_data(dataset, max_len=6, time_span=2)
    np.testing.assert_array_equal(whole.cut, blocked.cut)
    for field in ("indptr", "indices", "counts"):
        np.testing.assert_array_equal(getattr(whole.transitions, field),
                                      getattr(blocked.transitions, field))
    assert whole.transitions.counts.sum() > 0
