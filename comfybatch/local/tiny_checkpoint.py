"""Write a tiny random-weight SD1.5 checkpoint that a stock ComfyUI 0.3.75 loads and runs.

Run it with the ComfyUI venv's python (it needs only torch, plus safetensors for that format):

    python tiny_checkpoint.py OUT_PATH [--seed N]

The format follows OUT_PATH's suffix:

- `.ckpt` (recommended, `RECOMMENDED_FILE_NAME`): a `torch.save` state dict whose random tensors
  are overlapping `as_strided` views of one 256 K-element storage per init std, and whose constant
  tensors are stride-0 views of one-element storages, so the file is ~2 MB and builds in
  milliseconds. ComfyUI reads it with `torch.load(weights_only=True)`; `load_state_dict` copies
  the views into ordinary parameters.
- `.safetensors`: every tensor dense fp16 (~278 MB, ~1 s). Safetensors rejects overlapping views.

`CheckpointLoaderSimple` detects the result as SD15 (EPS) with no missing/unexpected-key warnings
(`shared/docs/test-comfyui.md` §5):

- UNet `model.diffusion_model.*`: model_channels 320, channel_mult [1], num_res_blocks 1, one
  depth-1 SpatialTransformer (conv proj_in, context_dim 768) in input_blocks.1, no middle block
  (detected as transformer_depth_middle=-2), two output ResBlocks without attention.
- VAE `first_stage_model.*`: TAESD encoder and decoder with vae_scale 0.18215 / vae_shift 0
  (the SD1.5 values ComfyUI's VAELoader uses for TAESD).
- Text encoder `cond_stage_model.transformer.text_model.*`: the full CLIP-L (ComfyUI builds it
  from a fixed config, so it cannot shrink); `text_projection` and `logit_scale` are left out,
  as in real SD1.5 files.

Init: weights N(0, 0.02), norm weights 1, biases 0; TAESD convs N(0, 0.04) with the decoder's
last bias 0.5 (mid-grey output). The same seed gives identical bytes; the images are noise.

Key names and shapes were taken from ComfyUI 0.3.75 (openaimodel.py, taesd/taesd.py,
clip_model.py, sd1_clip_config.json); re-check them on every ComfyUI upgrade.
"""

import argparse
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

RECOMMENDED_FILE_NAME = "comfybatch-tiny-sd15.ckpt"
SAFETENSORS_FILE_NAME = "comfybatch-tiny-sd15.safetensors"
DEFAULT_SEED = 0

WEIGHT_STD = 0.02
TAESD_STD = 0.04
POOL_ELEMENTS = 256 * 1024

# Init kinds: ("normal", std) draws N(0, std); ("const", value) fills with value.
Init = tuple[str, float]
Entry = tuple[str, tuple[int, ...], Init]

_W: Init = ("normal", WEIGHT_STD)
_TW: Init = ("normal", TAESD_STD)
_ZERO: Init = ("const", 0.0)
_ONE: Init = ("const", 1.0)

_CHANNELS = 320
_TIME_EMBED = 1280
_CONTEXT = 768


def _linear(prefix: str, n_out: int, n_in: int, *, bias: bool = True) -> list[Entry]:
    out: list[Entry] = [(f"{prefix}.weight", (n_out, n_in), _W)]
    if bias:
        out.append((f"{prefix}.bias", (n_out,), _ZERO))
    return out


def _conv(prefix: str, n_out: int, n_in: int, kernel: int, init: Init = _W, *, bias: bool = True) -> list[Entry]:
    out: list[Entry] = [(f"{prefix}.weight", (n_out, n_in, kernel, kernel), init)]
    if bias:
        out.append((f"{prefix}.bias", (n_out,), _ZERO))
    return out


def _norm(prefix: str, channels: int) -> list[Entry]:
    return [(f"{prefix}.weight", (channels,), _ONE), (f"{prefix}.bias", (channels,), _ZERO)]


def _res_block(prefix: str, n_in: int, n_out: int) -> list[Entry]:
    out = _norm(f"{prefix}.in_layers.0", n_in)
    out += _conv(f"{prefix}.in_layers.2", n_out, n_in, 3)
    out += _linear(f"{prefix}.emb_layers.1", n_out, _TIME_EMBED)
    out += _norm(f"{prefix}.out_layers.0", n_out)
    out += _conv(f"{prefix}.out_layers.3", n_out, n_out, 3)
    if n_in != n_out:
        out += _conv(f"{prefix}.skip_connection", n_out, n_in, 1)
    return out


def _spatial_transformer(prefix: str, channels: int, context_dim: int) -> list[Entry]:
    block = f"{prefix}.transformer_blocks.0"
    out = _norm(f"{prefix}.norm", channels)
    out += _conv(f"{prefix}.proj_in", channels, channels, 1)
    for attn, kv_dim in (("attn1", channels), ("attn2", context_dim)):
        out += _linear(f"{block}.{attn}.to_q", channels, channels, bias=False)
        out += _linear(f"{block}.{attn}.to_k", channels, kv_dim, bias=False)
        out += _linear(f"{block}.{attn}.to_v", channels, kv_dim, bias=False)
        out += _linear(f"{block}.{attn}.to_out.0", channels, channels)
    out += _linear(f"{block}.ff.net.0.proj", channels * 8, channels)  # GEGLU: 2 x 4 x channels
    out += _linear(f"{block}.ff.net.2", channels, channels * 4)
    for norm in ("norm1", "norm2", "norm3"):
        out += _norm(f"{block}.{norm}", channels)
    out += _conv(f"{prefix}.proj_out", channels, channels, 1)
    return out


def _unet() -> list[Entry]:
    p = "model.diffusion_model"
    out = _linear(f"{p}.time_embed.0", _TIME_EMBED, _CHANNELS)
    out += _linear(f"{p}.time_embed.2", _TIME_EMBED, _TIME_EMBED)
    out += _conv(f"{p}.input_blocks.0.0", _CHANNELS, 4, 3)
    out += _res_block(f"{p}.input_blocks.1.0", _CHANNELS, _CHANNELS)
    out += _spatial_transformer(f"{p}.input_blocks.1.1", _CHANNELS, _CONTEXT)
    for index in range(2):  # skip connections double the input channels
        out += _res_block(f"{p}.output_blocks.{index}.0", 2 * _CHANNELS, _CHANNELS)
    out += _norm(f"{p}.out.0", _CHANNELS)
    out += _conv(f"{p}.out.2", 4, _CHANNELS, 3)
    return out


def _taesd_block(prefix: str) -> list[Entry]:
    out: list[Entry] = []
    for index in (0, 2, 4):
        out += _conv(f"{prefix}.conv.{index}", 64, 64, 3, _TW)
    return out


def _taesd() -> list[Entry]:
    p = "first_stage_model"
    out: list[Entry] = [(f"{p}.vae_scale", (), ("const", 0.18215)), (f"{p}.vae_shift", (), _ZERO)]
    enc = f"{p}.taesd_encoder"
    out += _conv(f"{enc}.0", 64, 3, 3, _TW)
    for index in (1, 3, 4, 5, 7, 8, 9, 11, 12, 13):
        out += _taesd_block(f"{enc}.{index}")
    for index in (2, 6, 10):  # stride-2 downsampling convs
        out += _conv(f"{enc}.{index}", 64, 64, 3, _TW, bias=False)
    out += _conv(f"{enc}.14", 4, 64, 3, _TW)
    dec = f"{p}.taesd_decoder"
    out += _conv(f"{dec}.1", 64, 4, 3, _TW)
    for index in (3, 4, 5, 8, 9, 10, 13, 14, 15, 18):
        out += _taesd_block(f"{dec}.{index}")
    for index in (7, 12, 17):  # convs after each upsample
        out += _conv(f"{dec}.{index}", 64, 64, 3, _TW, bias=False)
    out += [(f"{dec}.19.weight", (3, 64, 3, 3), _TW), (f"{dec}.19.bias", (3,), ("const", 0.5))]
    return out


def _clip_l() -> list[Entry]:
    p = "cond_stage_model.transformer.text_model"
    width, mlp = 768, 3072
    out: list[Entry] = [
        (f"{p}.embeddings.token_embedding.weight", (49408, width), _W),
        (f"{p}.embeddings.position_embedding.weight", (77, width), _W),
    ]
    for layer in range(12):
        lp = f"{p}.encoder.layers.{layer}"
        out += _norm(f"{lp}.layer_norm1", width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += _linear(f"{lp}.self_attn.{proj}", width, width)
        out += _norm(f"{lp}.layer_norm2", width)
        out += _linear(f"{lp}.mlp.fc1", mlp, width)
        out += _linear(f"{lp}.mlp.fc2", width, mlp)
    out += _norm(f"{p}.final_layer_norm", width)
    return out


def layout() -> list[Entry]:
    """Every (key, shape, init) of the tiny checkpoint, in a fixed order."""
    return _unet() + _taesd() + _clip_l()


def _const(value: float, shape: tuple[int, ...], dtype: torch.dtype, cache: dict[float, torch.Tensor]) -> torch.Tensor:
    if value not in cache:
        cache[value] = torch.full((1,), value, dtype=dtype)
    return cache[value].as_strided(shape, (0,) * len(shape))


def build_dense(seed: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Full, contiguous tensors (for safetensors)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape, (kind, value) in layout():
        if kind == "normal":
            state[key] = torch.empty(shape, dtype=torch.float32).normal_(0.0, value, generator=generator).to(dtype)
        else:
            state[key] = torch.full(shape, value, dtype=dtype)
    return state


def build_shared(seed: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Views into a few small storages (for `torch.save`): ~2 MB on disk whatever the shapes."""
    generator = torch.Generator().manual_seed(seed)
    pools = {
        std: torch.empty(POOL_ELEMENTS, dtype=torch.float32).normal_(0.0, std, generator=generator).to(dtype)
        for std in (WEIGHT_STD, TAESD_STD)
    }
    consts: dict[float, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for key, shape, (kind, value) in layout():
        if kind == "const":
            state[key] = _const(value, shape, dtype, consts)
            continue
        rows, row_len = shape[0], math.prod(shape[1:])
        row_stride = min(row_len, (POOL_ELEMENTS - row_len) // max(rows - 1, 1))
        if row_stride < 1:
            raise ValueError(f"{key} {shape} does not fit a {POOL_ELEMENTS}-element pool")
        span = (rows - 1) * row_stride + row_len
        offset = int(torch.randint(0, POOL_ELEMENTS - span + 1, (1,), generator=generator))
        inner = [math.prod(shape[d + 1 :]) for d in range(1, len(shape))]
        state[key] = pools[value].as_strided(shape, (row_stride, *inner), offset)
    return state


def _save(state: dict[str, torch.Tensor], path: Path, safetensors: bool, seed: int) -> None:
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"comfybatch": "tiny-sd15", "seed": str(seed)})
    else:
        buffer = io.BytesIO()  # in memory, so the archive's inner folder name never varies
        torch.save(state, buffer)
        path.write_bytes(buffer.getvalue())


def write_checkpoint(out_path: Path, seed: int = DEFAULT_SEED) -> int:
    """Write the checkpoint (format from the suffix) atomically; return its size in bytes.

    Atomic (temporary file + rename) so a server listing its models folder never sees half a file.
    """
    suffix = out_path.suffix.lower()
    if suffix not in (".ckpt", ".safetensors"):
        raise ValueError(f"unknown checkpoint suffix {suffix!r}: use .ckpt or .safetensors")
    safetensors = suffix == ".safetensors"
    state = build_dense(seed) if safetensors else build_shared(seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        _save(state, tmp, safetensors, seed)
        tmp.chmod(0o644)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_path", type=Path, help=f"e.g. models/checkpoints/{RECOMMENDED_FILE_NAME}")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        size = write_checkpoint(args.out_path, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{args.out_path}: {size} bytes, seed {args.seed}, {time.perf_counter() - began:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
