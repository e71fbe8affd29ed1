import pytest
import torch

from ess_reg.tasks import IGNORE, MQAR, TASKS, Compression, SelectiveCopy


def recall_answer(inputs, labels, position):
    """What a perfect recaller answers at a query: the token after the query key in the context."""
    key = inputs[position]
    context_keys = inputs[0 : labels.shape[0] : 2]
    return int(inputs[(context_keys == key).nonzero()[0, 0] * 2 + 1])


@pytest.mark.parametrize("random_fill", [False, True])
def test_mqar_shapes_labels_and_recoverable_values(random_fill):
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4, random_non_queries=random_fill)
    batch = task.generate(50, seed=0)
    assert batch.inputs.shape == batch.labels.shape == (50, 32)
    assert batch.inputs.dtype == torch.long and 0 <= batch.inputs.min() and batch.inputs.max() < 64
    asked = batch.labels != IGNORE
    assert torch.all(asked.sum(1) == 4)
    assert not asked[:, :8].any()  # nothing is asked inside the context
    positions = asked.nonzero()
    assert torch.all((positions[:, 1] - 8) % 2 == 0)  # queries at even offsets of the query region
    for row, pos in positions.tolist():
        inp, lab = batch.inputs[row], batch.labels[row]
        keys = inp[0:8:2]
        assert len(set(keys.tolist())) == 4 and keys.min() >= 1 and keys.max() < 32
        assert int(lab[pos]) >= 32
        assert int(lab[pos]) == recall_answer(inp, lab[:8], pos)
    if not random_fill:
        non_query = batch.inputs[:, 8:][~asked[:, 8:]]
        assert torch.all(non_query == 0)


def test_mqar_power_law_favours_short_gaps():
    batch = MQAR(vocab_size=512, seq_len=256, num_kv_pairs=4, power_a=0.01).generate(400, seed=1)
    offsets = (batch.labels != IGNORE).nonzero()[:, 1] - 8
    assert (offsets < 60).float().mean() > 0.6


def test_determinism_and_disjoint_streams():
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4)
    a, b = task.generate(8, seed=3), task.generate(8, seed=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(task.generate(8, seed=4).inputs, a.inputs)
    assert torch.equal(task.train_batch(8, step=5).inputs, task.train_batch(8, step=5).inputs)
    train = torch.cat([task.train_batch(16, step=s).inputs for s in range(20)])
    test = task.test_set(64).inputs
    shared = {tuple(r) for r in train.tolist()} & {tuple(r) for r in test.tolist()}
    assert not shared
    with pytest.raises(ValueError, match="seed"):
        task.train_batch(4, step=-1)


def test_mqar_rejects_impossible_settings():
    with pytest.raises(ValueError, match="seq_len >= 4 \\* num_kv_pairs"):
        MQAR(vocab_size=128, seq_len=30, num_kv_pairs=8)
    with pytest.raises(ValueError, match="even"):
        MQAR(vocab_size=128, seq_len=33, num_kv_pairs=2)
    with pytest.raises(ValueError, match="exceed seq_len"):
        MQAR(vocab_size=32, seq_len=64, num_kv_pairs=4)
    with pytest.raises(ValueError, match="power_a"):
        MQAR(vocab_size=128, seq_len=64, power_a=0)
    with pytest.raises(ValueError, match="num_kv_pairs must be an int >= 1"):
        MQAR(vocab_size=128, seq_len=64, num_kv_pairs=0)


def test_selective_copy():
    task = SelectiveCopy(vocab_size=10, seq_len=24, num_tokens=5)
    batch = task.generate(30, seed=0)
    ctx = task.context_end
    assert ctx == 18 and torch.all(batch.inputs[:, ctx] == 1)
    for inp, lab in zip(batch.inputs, batch.labels):
        data = inp[:ctx][inp[:ctx] != 0]
        assert len(data) == 5
        assert torch.equal(lab[ctx : ctx + 5], data)  # recall in order, starting at the separator
        assert torch.all(lab[:ctx] == IGNORE) and lab[-1] == IGNORE
    with pytest.raises(ValueError, match="cannot hold"):
        SelectiveCopy(seq_len=10, num_tokens=5)


def test_compression():
    task = Compression(vocab_size=12, seq_len=20)
    batch = task.generate(10, seed=0)
    k = task.context_end
    assert k == 9 and torch.all(batch.inputs[:, k] == 1)
    assert torch.equal(batch.labels[:, k : 2 * k], batch.inputs[:, :k])
    assert torch.all(batch.labels[:, 2 * k :] == IGNORE) and torch.all(batch.labels[:, :k] == IGNORE)
    with pytest.raises(ValueError, match="even"):
        Compression(seq_len=21)


def test_registry():
    assert set(TASKS) == {"mqar", "selective_copy", "compression"}


@pytest.mark.parametrize("task", [MQAR(vocab_size=40, seq_len=32, num_kv_pairs=4), SelectiveCopy(vocab_size=12),
                                  Compression(vocab_size=12)], ids=lambda t: type(t).__name__)
def test_chance_accuracy_is_one_over_the_answers_a_guess_picks_from(task):
    # every answer is drawn uniformly from 1 / chance tokens: a large batch shows all of them
    labels = task.generate(400, seed=3).labels
    answers = labels[labels != IGNORE].unique()
    assert len(answers) * task.chance_accuracy == pytest.approx(1.0)
