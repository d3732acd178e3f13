"""Training data: the labels CSV."""
from __future__ import annotations

from models.train.data import UNLABELED, read_train_labels


def test_labels_csv_reads_empty_class_index_as_unlabeled(pool):
    rows = read_train_labels(pool, pool / "labels.csv")
    assert [r[1] for r in rows] == [0, 7, UNLABELED, 21, 28, UNLABELED]
