"""Loss curves of a run as a small PNG."""

from __future__ import annotations

from pathlib import Path


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(history: list[dict], path: str | Path, *, dense: str, sparsest: str) -> Path | None:
    """Total loss, KL of the dense and the sparsest level, and the token term, per step."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    window = max(1, len(history) // 50)
    series = {
        "total loss": [h["loss"] for h in history],
        f"KL {dense}": [h["kd"][dense] for h in history],
        f"KL {sparsest}": [h["kd"][sparsest] for h in history],
        "token KL": [h["token"] for h in history],
    }
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, values in series.items():
        ax.plot(steps, _smooth(values, window), label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving mean over {window} steps)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p
