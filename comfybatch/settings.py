"""Process settings (env `COMFYBATCH_*`, `.env`); read through `get_settings()`, never at import."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from comfybatch.notify.signing import secret_bytes


class Settings(BaseSettings):
    """Knobs of one comfybatch process. Fleet and secrets live in blocks; per-run intent in BatchSpec."""

    # hide_input_in_errors: a malformed COMFYBATCH_API_KEYS must not be echoed (it holds keys).
    model_config = SettingsConfigDict(
        env_prefix="COMFYBATCH_", env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    comfyui_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("COMFYUI_URLS", "COMFYBATCH_COMFYUI_URLS"),
        description="Comma-separated ComfyUI URLs: the fleet, when no comfybatch.toml names it.",
    )
    demo_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="ComfyUI URLs of the demo fleet `comfybatch up --demo` started (set by up)."
    )
    config_file: Path = Field(Path("comfybatch.toml"), description="Optional fleet file ([[servers]] tables).")
    output_root: str = Field("out", description="Folder or fsspec URL batches write into.")
    default_slots: int = Field(2, ge=1, le=8, description="Prompts in flight per server (1 running + queued).")
    start_timeout_s: float = Field(900.0, gt=0, description="A queued prompt must start within this.")
    idle_timeout_s: float = Field(180.0, gt=0, description="A started prompt must send an event within this.")
    job_retries: int = Field(2, ge=0, le=10, description="Prefect retries of a job after failover is exhausted.")
    retry_backoff_s: float = Field(10.0, ge=0, description="Base of the exponential retry back-off.")
    max_unrecorded_task_runs: int = Field(
        1000, ge=0, description="Start no new job while the Prefect server has this many of the batch's task runs "
        "still to record (its in-memory event queue drops messages beyond 10,000); 0 = never wait.",
    )  # fmt: skip
    task_runs_per_s: float = Field(
        20.0, ge=0, description="Task runs a second the Prefect server is trusted to record: while the fleet renders "
        "faster, each task run takes several images (`render-images`, each image still on its own); 0 = always one.",
    )  # fmt: skip
    warm_routing: bool = Field(
        True, description="Send a job to a free server that has its checkpoint, LoRA, VAE… loaded already, rather "
        "than the least-loaded one (false: least-loaded only, as for a benchmark against it).",
    )  # fmt: skip
    shard_size: int = Field(
        1000, ge=1, le=100_000, description="A batch with more images than this to render runs as shards (child "
        "flow runs on the work pool, this many images each) when it runs from a deployment; one flow run otherwise.",
    )  # fmt: skip
    run_attempts: int = Field(
        3, ge=1, le=10, description="Executions of one batch run or shard at most: one that crashed (its worker or "
        "machine died) runs again by itself, resuming from the journal, until this many have started.",
    )  # fmt: skip
    inbox: str = Field("inbox", description="Folder or fsspec URL where job sheets are dropped.")
    inbox_workflow: str | None = Field(None, description="Workflow for inbox sheets that name none.")
    inbox_cron: str = Field("*/5 * * * *", description="When scheduled-production looks at the inbox.")
    inbox_interval_s: float | None = Field(None, gt=0, description="An interval instead of the cron (tests).")
    timezone: str = Field("UTC", description="Time zone of the schedules.")
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="Dashboard API keys, `name:key,name2:key2`; the name is what gets recorded."
    )
    api_auth_disabled: bool = Field(False, description="No API keys at all: only for a local single-user setup.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed cross-origin; none when empty."
    )
    dashboard_port: int = Field(8600, ge=1, le=65535, description="Port of `python -m comfybatch.dashboard`.")
    dashboard_host: str = Field("127.0.0.1", description="Address the dashboard listens on (0.0.0.0 in a container).")
    api_quota_images: int | None = Field(
        None, ge=1, description="Unfinished images one API key may have queued; 429 beyond. No limit when empty."
    )
    api_quota_gpu_seconds_daily: float | None = Field(
        None, gt=0, description="GPU-seconds one API key may use per UTC day; new batches get 429 beyond. No limit "
        "when empty.",
    )  # fmt: skip
    max_upload_bytes: int = Field(20_000_000, ge=1, description="Largest sheet `PUT /api/uploads/{name}` accepts.")
    max_request_bytes: int = Field(10_000_000, ge=1, description="Largest JSON body of a batch or validate request.")
    max_input_pixels: int = Field(
        50_000_000, ge=1, description="Largest input image (width x height) a batch may bring; larger ones are refused."
    )
    max_input_bytes: int = Field(200_000_000, ge=1, description="Largest input image file a batch may bring.")
    input_allow_private_urls: bool = Field(
        False, description="Fetch input image URLs on loopback, private or link-local addresses (SSRF: off by default)."
    )
    input_allow_http_urls: bool = Field(False, description="Fetch input image URLs over plain http, not only https.")
    input_local_root: str | None = Field(
        None, description="A folder or fsspec prefix whose image files requests over the API may name (sheet cells, "
        "`images`) besides uploads and https URLs; none when empty.",
    )  # fmt: skip
    webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks signing secret, `whsec_<base64 of 24-64 random bytes>`; webhooks need it."
    )
    webhook_allow_private: bool = Field(
        False, description="Send webhooks to loopback, private or link-local addresses (SSRF: off by default)."
    )
    api_key_webhooks: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="Webhook URL per API key, `name:url,name2:url2`: every batch the key submits."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="One webhook attempt's deadline.")
    webhook_retry_s: float = Field(300.0, gt=0, description="A webhook is retried (back-off, jitter) for this long.")
    webhook_attempts: int = Field(10, ge=1, le=100, description="At most this many attempts per webhook.")
    webhook_drain_s: float = Field(
        5.0, ge=0, description="The longest a batch's end waits for its undelivered webhooks before leaving them."
    )

    @field_validator("comfyui_urls", "demo_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in value.split(","))):
            name, sep, key = pair.partition(":")
            if not (sep and name.strip() and key.strip()):
                raise ValueError("expected `name:key` pairs separated by commas")  # never echo the key
            keys[name.strip()] = key.strip()
        return keys

    @field_validator("api_key_webhooks", mode="before")
    @classmethod
    def _parse_key_webhooks(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        hooks: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in value.split(","))):
            name, sep, url = pair.partition(":")  # key names hold no colon; the URL's own colons stay in `url`
            if not (sep and name.strip() and url.strip()):
                raise ValueError("expected `name:url` pairs separated by commas")
            hooks[name.strip()] = url.strip()
        return hooks

    @field_validator("webhook_secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_bytes(value.get_secret_value())  # ValueError naming the format, never the secret
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (cached; tests build `Settings(...)` directly)."""
    return Settings()
