"""SaiT-style training: one weight-shared model distilled for every density level.

`python -m models.train --help`; the loop is in models.train.loop.
"""

from models.train.config import TrainConfig
from models.train.loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
