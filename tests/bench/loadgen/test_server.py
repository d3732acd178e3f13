"""served_levels: the SAIT_LEVELS a bench's server gets."""

from bench.loadgen.server import served_levels


def test_dense_first_then_the_pinned_levels_once_each():
    assert served_levels("l040") == "dense,l040"
    assert served_levels("dense", "l070", "l050", "l070") == "dense,l070,l050"
    assert served_levels() == "dense"
