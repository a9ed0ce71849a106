"""Optional py-spy sampling of bench processes (`pip install py-spy` into .venv), summarised as text."""

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_RATE_HZ = 100
_LINE_NUMBER = re.compile(r":\d+\)$")


class SpyRecorder:
    """Run `py-spy record` on some pids between `start` and `stop` (collapsed stacks, on-CPU samples only)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.executable = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, label: str) -> Path:
        return self.out_dir / f"py-spy-{label}.txt"

    def start(self, pids: dict[str, int]) -> None:
        """Record each pid alone (not its children: the bench's children are the servers)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for label, pid in pids.items():
            command = [self.executable, "record", "--pid", str(pid), "--rate", str(_RATE_HZ), "--format", "raw",
                       "--nonblocking", "-o", str(self.path(label))]  # fmt: skip
            self._running[label] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        """SIGINT makes py-spy write its file; only the recorders this object started are signalled."""
        for process in self._running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for label, process in self._running.items():
            try:
                _, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
            if not self.path(label).exists():
                print(f"py-spy {label}: no profile written: {stderr.decode(errors='replace')[-500:]}")

    def summarise(self, *, top: int = 20) -> None:
        for label in self._running:
            if self.path(label).exists():
                print(summarise_collapsed(self.path(label), label=label, top=top))


def summarise_collapsed(path: Path, *, label: str, top: int = 20) -> str:
    """Top functions by self and by inclusive on-CPU samples, from a py-spy raw (collapsed) file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"py-spy {label}: {total} on-CPU samples at {_RATE_HZ} Hz (~{total / _RATE_HZ:.1f} CPU s); {path}"]
    lines.append("  self:")
    lines += [f"    {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)
