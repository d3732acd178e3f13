"""Service settings: environment (`SAIT_*`) and command-line flags with the same names.

Names and defaults are fixed by docs/contract.md (the chart and the load tests use them).
Flags override the environment, which overrides the defaults. Every value is validated at
start-up; a bad one stops the process with one line that names the setting and the reason.
"""

from __future__ import annotations

import argparse
import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.dial import parse_density
from service.errors import BadRequest

ENV_PREFIX = "SAIT_"
_LEVEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class SettingsError(ValueError):
    """A setting that cannot be used; the message is one line naming it and why."""


class Settings(BaseSettings):
    """Everything the server reads at start-up (see docs/contract.md for the table)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    model: str = Field("deit_tiny_patch16_224", description="timm model name (or vit_tiny_test)")
    weights: str | None = Field(None, description="local .safetensors/.pth; else pretrained via HF_HOME")
    served_model_name: str | None = Field(None, description="name in /v2/models/{name} (default: the model)")
    level_card: str | None = Field(
        None,
        description="level card JSON, or 'none' to serve without accuracy figures (default: the served "
        "weights' card: <weights>.card.json beside them, else models/cards/ by their sha256)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda")
    levels: str = Field("all", description="'all' or a comma list of level names")
    max_batch_size: int = Field(32, ge=1, le=1024, description="largest batch")
    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000, description="longest wait to fill a batch")
    queue_limit: int = Field(512, ge=1, description="queued images before 429")
    policy: str = Field("adaptive", description="adaptive or fixed:<density> (fixed:dense = fixed:1.0)")
    default_budget_ms: float = Field(1000.0, gt=0, le=3_600_000, description="budget for requests that give none")
    safety_margin: float = Field(0.1, ge=0, lt=1, description="fraction of the budget kept as margin")
    degrade_from: float = Field(
        0.3,
        ge=0,
        le=1,
        description="share of the usable budget queued work may fill before the densest level is skipped (1: off)",
    )
    max_utilization: float = Field(
        0.85,
        gt=0,
        le=1,
        description="share of a level's full-batch capacity the "
        "arrival rate may take before the controller serves a sparser rung",
    )
    overload_wait_share: float = Field(
        0.6,
        gt=0,
        le=1,
        description="when arrivals reach 1.5x the sparsest "
        "level's capacity, share of the usable budget queued work may fill before "
        "shedding; from 1x to 1.5x it tightens from 1 to this (1: off)",
    )
    idle_probe_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="after this many idle seconds the worker times "
        "one small batch of the sparsest level, to keep the latency model current (0: off)",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="torch intra-op threads for the model (0: torch's "
        "default, one per core); fewer leaves cores to HTTP and decoding on a CPU host",
    )
    max_body_bytes: int = Field(20_971_520, ge=1024, description="larger bodies get 413")
    max_image_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb guard")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto, fp32, bf16, fp16")
    cuda_graphs: bool = Field(True, description="capture CUDA graphs on CUDA")
    drain_timeout_s: float = Field(30.0, ge=0, le=3600, description="SIGTERM: time given to in-flight requests")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="bind port")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        v = v.strip()
        if v == "adaptive":
            return v
        density = v.removeprefix("fixed:") if v.startswith("fixed:") else None
        if not density:
            raise ValueError("must be 'adaptive' or 'fixed:<density>' (a level name or a number in (0, 1])")
        try:
            parsed = parse_density(density)
        except BadRequest as exc:
            raise ValueError(f"fixed {exc.message}") from None
        if isinstance(parsed, str) and not _LEVEL_NAME.fullmatch(parsed):
            raise ValueError(f"fixed density {density!r} is neither a level name nor a number")
        return v

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: str) -> str:
        v = v.strip()
        if v == "all":
            return v
        names = [n.strip() for n in v.split(",")]
        if not names or any(not n for n in names):
            raise ValueError("must be 'all' or a comma list of level names such as 'dense,l070,l050'")
        if len(set(names)) != len(names):
            raise ValueError("lists a level twice")
        return ",".join(names)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _names(self) -> Settings:
        if not self.model.strip():
            raise ValueError("model: must not be empty")
        if self.served_model_name is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.served_model_name):
            raise ValueError("served_model_name: use letters, digits, '_', '-' and '.' only")
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The name clients use in v2 URLs."""
        return self.served_model_name or self.model

    @property
    def level_names(self) -> tuple[str, ...] | None:
        """None for 'all', else the requested names in order."""
        return None if self.levels == "all" else tuple(self.levels.split(","))

    @property
    def fixed_density(self) -> str | float | None:
        """For `fixed:<density>` the density (a level name, or a number in (0, 1]), else None."""
        return parse_density(self.policy[len("fixed:") :]) if self.policy.startswith("fixed:") else None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """Flags named like the settings (`--max-batch-size` = SAIT_MAX_BATCH_SIZE)."""
    parser = argparse.ArgumentParser(
        prog="sait-serve",
        description="Serve one weight-shared sparse ViT with a per-request token-density dial.",
        epilog="Every flag can also be set as an environment variable SAIT_<NAME>.",
    )
    for name, field in Settings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        if field.annotation is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f"{field.description} [{env}, default {field.default}]",
            )
        else:
            parser.add_argument(
                _flag(name),
                dest=name,
                default=None,
                metavar=name.upper(),
                help=f"{field.description} [{env}, default {field.default}]",
            )
    return parser


def load_settings(argv: list[str] | None = None, **overrides) -> Settings:
    """Flags (argv) over environment over defaults; raises SettingsError with one line."""
    args = build_parser().parse_args(argv if argv is not None else [])
    values = {k: v for k, v in vars(args).items() if v is not None}
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p]
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    if loc:
        name = loc[0]
        return f"invalid setting {ENV_PREFIX}{name.upper()} ({_flag(name)}): {msg}"
    return f"invalid settings: {msg}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment only (flags are read by service.__main__)."""
    return load_settings([])
