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
# A DNS name or an IP literal ([v6] in brackets, as in a Host header).
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.\-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


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
    levels: str = Field(
        "auto",
        description="'auto' (the levels the level card's speed table for this device offers; all "
        "without one), 'all', or a comma list of level names",
    )
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
    max_request_pixels: int = Field(
        100_000_000, ge=1, description="sum of the pixels of one request's encoded images (400 above it)"
    )
    max_json_bytes: int = Field(
        4_194_304, ge=1024, description="JSON part of a v2 request (413 above it; binary tensor data is not counted)"
    )
    max_json_depth: int = Field(32, ge=8, le=1000, description="nesting depth of a v2 request's JSON (400 above it)")
    max_number_digits: int = Field(
        40, ge=20, le=4000, description="digits of one number in a v2 request's JSON (400 above it)"
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, le=1_048_576, description="request line and headers (431 above it; 414 for the URL alone)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="time for a request's line and headers once it has begun (408, then close)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="time for a whole request body once its headers are in (408, then close)"
    )
    idle_timeout_s: float = Field(
        5.0, gt=0, le=3600, description="a connection with no request in progress is closed after this"
    )
    max_connections: int = Field(
        1024, ge=1, le=1_000_000, description="open connections; one more gets 503 and is closed"
    )
    max_pipelined_requests: int = Field(
        8, ge=1, le=1024, description="requests one connection may have in flight (HTTP/1.1 pipelining)"
    )
    api_keys_file: str | None = Field(
        None, description="file of API keys, one a line: every route but the health probes needs 'Bearer <key>'"
    )
    tls_cert_file: str | None = Field(None, description="PEM certificate (chain): serve HTTPS (with tls_key_file)")
    tls_key_file: str | None = Field(None, description="PEM private key of tls_cert_file")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="serve /metrics on this port only, plain HTTP, no key (0: on the main port)"
    )
    openapi: bool = Field(True, description="serve /docs, /redoc and /openapi.json")
    allowed_hosts: str = Field(
        "auto",
        description="Host headers accepted: comma list of names, '*' for any, 'auto' for "
        "localhost names when bound to loopback (against DNS rebinding), else any",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto, fp32, bf16, fp16")
    cuda_graphs: bool = Field(True, description="capture CUDA graphs on CUDA")
    compile: bool = Field(
        False,
        description="torch.compile each level's step, one program per level and batch bucket, all at "
        "warm-up (minutes); CUDA graphs are captured of the compiled programs",
    )
    drain_timeout_s: float = Field(30.0, ge=0, le=3600, description="SIGTERM: time given to in-flight requests")
    api_processes: int | Literal["auto"] = Field(
        "auto",
        description="HTTP front-end processes; 0: one process serves HTTP and runs the engine; N >= 1: the engine "
        "in its own process and N API processes on the one port; auto: 0 on a CPU, on CUDA half the cores less one "
        "(1..8)",
    )
    shm_slots: int = Field(
        0, ge=0, le=65536, description="shared-memory image slots per API process (0: twice its share of the queue)"
    )
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
        if v in ("all", "auto"):
            return v
        names = [n.strip() for n in v.split(",")]
        if not names or any(not n for n in names):
            raise ValueError("must be 'auto', 'all' or a comma list of level names such as 'dense,l070,l050'")
        if len(set(names)) != len(names):
            raise ValueError("lists a level twice")
        return ",".join(names)

    @field_validator("api_processes", mode="before")
    @classmethod
    def _api_processes(cls, v):
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ValueError("must be 'auto' or a whole number from 0 to 64") from None
        if not 0 <= n <= 64:
            raise ValueError("must be 'auto' or a whole number from 0 to 64")
        return n

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "*"):
            return v
        names = [n.strip() for n in v.split(",")]
        if not names or any(not _HOST_NAME.fullmatch(n) for n in names):
            raise ValueError("must be 'auto', '*' or a comma list of host names such as 'sait.example.com,localhost'")
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
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file: set both (HTTPS) or neither (HTTP)")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("metrics_port: must differ from port (0 serves /metrics on the main port)")
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The name clients use in v2 URLs."""
        return self.served_model_name or self.model

    @property
    def level_names(self) -> tuple[str, ...] | None:
        """None for 'all' and 'auto' (service.engine.cards.requested_levels resolves 'auto'), else
        the requested names in order."""
        return None if self.levels in ("all", "auto") else tuple(self.levels.split(","))

    @property
    def host_names(self) -> frozenset[str] | None:
        """Host header names accepted (lower case, without port), or None for any."""
        if self.allowed_hosts == "*":
            return None
        if self.allowed_hosts == "auto":
            return LOOPBACK_NAMES if self.host in LOOPBACK_NAMES else None
        return frozenset(self.allowed_hosts.split(","))

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
