"""Pure-PyTorch side of sait-serve: the sparse ViT, its levels, weights and evaluation.

Never imports service/, FastAPI or Prometheus.
"""

from models.levels import DENSE, Level, ReductionStep
from models.loader import load_model
from models.sparse_vit import SparseViT
from models.weights import TINY_TEST_MODEL, WeightsError

__all__ = ["DENSE", "TINY_TEST_MODEL", "Level", "ReductionStep", "SparseViT", "WeightsError", "load_model"]
