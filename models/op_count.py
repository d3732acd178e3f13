"""How many operators a level's forward dispatches: a deterministic count, on the CPU.

On a GPU every operator is at least one kernel launch, and a reduction point made of many
small operators costs more launches than the attention and MLP work it saves (issue 18). The
count is exact and repeatable (every shape is static, nothing depends on the data), so it
can be a test and a column of the level card, where a wall-clock time on a shared machine
cannot.

What is counted: the ATen operators that reach the dispatcher below autograd (a
`TorchDispatchMode`), i.e. what eager mode runs. Views (`view`, `expand`, `transpose`,
slices...) only rewrite a tensor's metadata and launch nothing, so they are reported apart
(`views`) and `ops` counts the rest. Composite operators arrive decomposed (`linear` as
`t` + `addmm`), as they run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# Not marked as views in their schemas, but they only alias or reshape metadata.
_METADATA_OPS = frozenset({"_unsafe_view", "_reshape_alias", "alias", "detach", "lift_fresh"})


@dataclass(frozen=True)
class OpCount:
    """Operators of one forward.

    Args:
        ops: operators that compute or allocate (each at least one kernel on a GPU).
        views: view and metadata-only operators (no kernel).
        by_op: ops per operator name (views left out), most frequent first.
    """

    ops: int
    views: int
    by_op: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"ops": self.ops, "views": self.views, "by_op": dict(self.by_op)}


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.is_view or name in _METADATA_OPS:
            self.views += 1
        else:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_forward_ops(fn, *args, **kwargs) -> OpCount:
    """Run `fn(*args, **kwargs)` once without gradients and count what it dispatched."""
    counter = _Counter()
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return OpCount(ops=sum(counter.ops.values()), views=counter.views, by_op=dict(counter.ops.most_common()))


def count_level_ops(model: nn.Module, level: str, *, batch: int = 1) -> OpCount:
    """Operators of `model(x, level)` for a batch of `batch` images (random input, on the CPU).

    The count does not depend on the input's values, and on the batch size only where an
    operator's choice does (none here); batch 1 is the cheapest to run.
    """
    param = next(model.parameters())
    x = torch.randn((batch, *model.data_config.input_size), device=param.device, dtype=param.dtype)
    return count_forward_ops(model, x, level)


def count_all_levels(model: nn.Module, levels: tuple[str, ...] | None = None, *, batch: int = 1) -> dict[str, OpCount]:
    """`count_level_ops` for each level (default: all of the model's)."""
    return {name: count_level_ops(model, name, batch=batch) for name in (levels or tuple(model.levels))}
