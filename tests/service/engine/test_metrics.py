"""Prometheus metrics: the queue depth read at scrape time."""

from __future__ import annotations


def test_queue_depth_is_read_at_scrape_time():
    from service.engine.metrics import Metrics

    metrics = Metrics(levels=("dense", "l040"))
    body, _ = metrics.render()
    assert b'sait_queue_depth{level="l040"} 0.0' in body  # zeros before any queue exists
    depth = {"dense": 3}
    metrics.read_queue_depth(lambda: depth)
    depth["l040"] = 7  # changed after the hook was set: the scrape sees the queues now
    body, _ = metrics.render()
    assert b'sait_queue_depth{level="dense"} 3.0' in body and b'sait_queue_depth{level="l040"} 7.0' in body
