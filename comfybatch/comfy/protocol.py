"""Pydantic shapes of ComfyUI's HTTP answers (0.3.75), lenient about extra keys."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Payload(BaseModel):
    # Servers and custom nodes add keys freely; keep them rather than fail.
    model_config = ConfigDict(extra="allow", frozen=True)


class QueuedPrompt(_Payload):
    """Answer of `POST /prompt` (200)."""

    prompt_id: str
    number: float | int = 0
    node_errors: dict[str, Any] = Field(default_factory=dict)


class OutputFile(_Payload):
    """One file a node produced, as listed in `/history` outputs or an `executed` event."""

    node_id: str
    media: str = "images"  # the output key: images, gifs, audio, video…
    filename: str
    subfolder: str = ""
    type: str = "output"  # output | temp | input

    @property
    def view_params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


class HistoryStatus(_Payload):
    status_str: str | None = None
    completed: bool = False
    messages: list[list[Any]] = Field(default_factory=list)

    def message(self, event: str) -> dict[str, Any] | None:
        """The data of the first `event` message recorded for this prompt."""
        for item in self.messages:
            if len(item) == 2 and item[0] == event and isinstance(item[1], dict):
                return item[1]
        return None


class HistoryEntry(_Payload):
    """One finished prompt in `GET /history/{prompt_id}`."""

    prompt: list[Any] = Field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    status: HistoryStatus = Field(default_factory=HistoryStatus)

    @property
    def succeeded(self) -> bool:
        return self.status.status_str == "success"

    @property
    def execution_s(self) -> float | None:
        """Seconds the server spent executing the prompt, by its own clock: `execution_start` to
        `execution_success` (both `timestamp` in ms); None when either is missing."""
        start, success = self.status.message("execution_start"), self.status.message("execution_success")
        began, ended = (start or {}).get("timestamp"), (success or {}).get("timestamp")
        if not isinstance(began, int | float) or not isinstance(ended, int | float) or ended < began:
            return None
        return (ended - began) / 1000.0

    def output_files(self) -> list[OutputFile]:
        """Every file-like output (`{media: [{"filename", ...}]}`), in node order."""
        return list_output_files(self.outputs)


def list_output_files(outputs: dict[str, dict[str, Any]]) -> list[OutputFile]:
    """Flatten `{node_id: {media_key: [items]}}`, keeping only items that name a file."""
    files: list[OutputFile] = []
    for node_id, node_output in outputs.items():
        for media, items in node_output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    files.append(OutputFile(node_id=node_id, media=media, **item))
    return files


class QueueItem(_Payload):
    number: float | int
    prompt_id: str


class QueueState(_Payload):
    """`GET /queue`, pending items sorted by priority (the server sends its raw heap)."""

    running: list[QueueItem]
    pending: list[QueueItem]

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> "QueueState":
        def items(key: str) -> list[QueueItem]:
            return [QueueItem(number=row[0], prompt_id=row[1]) for row in raw.get(key, []) if len(row) >= 2]

        return cls(running=items("queue_running"), pending=sorted(items("queue_pending"), key=lambda i: i.number))

    def position(self, prompt_id: str) -> Literal["running", "pending"] | None:
        if any(item.prompt_id == prompt_id for item in self.running):
            return "running"
        if any(item.prompt_id == prompt_id for item in self.pending):
            return "pending"
        return None

    @property
    def depth(self) -> int:
        return len(self.running) + len(self.pending)


class DeviceStats(_Payload):
    name: str = ""
    type: str = ""
    vram_total: int = 0
    vram_free: int = 0


class SystemInfo(_Payload):
    comfyui_version: str = "unknown"
    python_version: str = ""
    pytorch_version: str = ""
    ram_total: int = 0
    ram_free: int = 0


class SystemStats(_Payload):
    """`GET /system_stats`: the readiness probe."""

    system: SystemInfo = Field(default_factory=SystemInfo)
    devices: list[DeviceStats] = Field(default_factory=list)


class UploadedFile(_Payload):
    """Answer of `POST /upload/image`: always use the returned `name` (clashes are renamed)."""

    name: str
    subfolder: str = ""
    type: str = "input"

    @property
    def ref(self) -> str:
        """The value a `LoadImage.image` input takes."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name
