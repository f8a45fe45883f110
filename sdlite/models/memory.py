"""Memory a run needs, estimated from the model's configs before any weights load, and what the device has.

`check_sample` and `check_train` refuse a run that cannot fit (ResourceError, exit 5, one line with the
estimate and the limit) in the time it takes to read a few config files, instead of letting it grow
until the kernel kills it.

The estimate follows the tensors a run holds at its peak:
- sampling: the weights, then the larger of denoising (the UNet's skip connections plus the working
  tensors of its widest level, for the whole batch, doubled by classifier-free guidance; plus the
  self-attention matrices, heads x tokens^2, where the attention kernel materialises them) and VAE
  decoding (the decoder's full-resolution levels, per tile with --low-memory's VAE tiling);
- training: the weights, gradients, AdamW's two moments and the EMA copy, plus every activation the
  backward pass keeps (only block inputs with gradient checkpointing), plus VAE encoding of the batch.
The per-layer multipliers (K_* below) were calibrated against the measured peak resident memory of real
CPU runs: sampling with the tiny, sd1-tiny, built-in shapes and SD v1.5 (random weights) models at 64-1536 px,
batch 1-4, with and without guidance and --low-memory (estimate / measured 0.88-1.26); training at 64-512 px,
batch 1-16, with gradient checkpointing, text encoder, LoRA, EMA, VAE and without the cache (1.01-1.08).
torch's scaled-dot-product attention never materialises the attention matrix on a CPU (flash kernel),
nor on CUDA for the UNet's head widths, so there the tokens^2 term is absent; diffusers' sliced attention
(--low-memory) materialises half the heads of one image at a time (8.9 GB at 512x512 for the built-in model,
against 1 GB without it).
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite.errors import ResourceError

MIB = 1024**2
GIB = 1024**3
# Python with torch, diffusers and transformers imported and a pipeline's small parts (tokenizer,
# scheduler, allocator arenas): measured 530 MiB resident for the 1M-parameter tiny model on a CPU.
RUNTIME = 520 * MIB
TRAIN_RUNTIME = 540 * MIB  # measured 548 MiB for the tiny model at batch 1
CUDA_RUNTIME = 300 * MIB  # on a GPU: cuBLAS/cuDNN workspaces and the caching allocator's slack
# Activation multipliers: tensors of (channels x latent pixels) alive at the peak of each kind of layer.
K_SKIP = 1.0  # each kept skip connection
K_RESNET = 4.0  # a resnet's input, normalised, activated and convolved copies
K_TRANSFORMER = 36.0  # a transformer block: q/k/v, their copies, the GEGLU feed-forward (8x then 4x width)
K_DECODER = 6.0  # a VAE decoder level at its resolution: upsampled input, norm/activation/conv copies
K_ENCODER = 6.0
K_IMAGE = 4.0  # float pixels, the [0,1] copy, numpy and PIL copies of each decoded image (x 3 channels)
ATTENTION_COPIES = 2  # scores and probabilities exist together while the softmax runs
# Training: tensors autograd keeps per layer (channels x pixels), and per block under checkpointing.
K_TRAIN_RESNET = 16.0
K_TRAIN_TRANSFORMER = 56.0
K_TRAIN_LORA = 1.2  # each adapted projection also keeps its input and low-rank activations
K_TRAIN_RECOMPUTE = 3.0  # a checkpointed block is rebuilt for its backward pass, with its gradients
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2, "no": 4}
FLASH_HEAD_DIM = 256  # wider heads (the SD VAE's 512) leave CUDA's flash kernel for the plain one


@dataclass(frozen=True)
class Estimate:
    """Bytes a run keeps for its whole life (`fixed`) plus the largest of its phases (`phases`)."""

    fixed: dict[str, int]
    phases: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.fixed.values()) + max(self.phases.values(), default=0)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k]) if self.phases else ""


@dataclass(frozen=True)
class Limit:
    """The most memory this process may use on the device, and where that figure comes from."""

    bytes: int
    source: str


# ---------------------------------------------------------------------------------------------------
# What the device has


def device_limit(device: str) -> Limit | None:
    """Memory available to this process on `device`; None when it cannot be told."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        free, _total = torch.cuda.mem_get_info(torch.cuda.current_device() if index is None else index)
        return Limit(free, f"free memory on {torch.cuda.get_device_name(index)}")
    return host_limit()


def host_limit() -> Limit | None:
    """RAM this process may still use: the least of the machine's available memory, its cgroup's
    headroom and its address-space limit, each plus what the process already holds."""
    resident, virtual = _own_memory()
    found: list[Limit] = []
    available = _meminfo("MemAvailable")
    if available is not None:
        found.append(Limit(available + resident, "available RAM"))
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append(Limit(headroom + resident, "the cgroup memory limit"))
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append(Limit(max(soft - virtual, 0) + resident, "the address-space limit (ulimit -v)"))
    return min(found, key=lambda limit: limit.bytes) if found else None


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_memory() -> tuple[int, int]:
    """(resident, virtual) bytes of this process now."""
    values = {"VmRSS": 0, "VmSize": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values["VmRSS"], values["VmSize"]


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes left under the tightest cgroup memory limit over this process (v2, else v1); None if unlimited."""
    folders = [root]
    try:
        for line in membership.read_text().splitlines():
            hierarchy, _controllers, path = line.split(":", 2)
            if hierarchy == "0" and path not in ("", "/"):  # v2: this process's own group and its parents
                own = root / path.lstrip("/")
                folders = [own, *own.parents]
                folders = [f for f in folders if f == root or root in f.parents]
    except (OSError, ValueError):
        pass
    best: int | None = None
    for folder in folders:
        limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
        if limit is not None and used is not None:
            best = min(best, limit - used) if best is not None else limit - used
    v1 = root / "memory"
    limit, used = _read_int(v1 / "memory.limit_in_bytes"), _read_int(v1 / "memory.usage_in_bytes")
    if limit is not None and used is not None and limit < 1 << 60:  # v1 says "unlimited" with a huge number
        best = min(best, limit - used) if best is not None else limit - used
    return None if best is None else max(best, 0)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) reads as None


# ---------------------------------------------------------------------------------------------------
# Model geometry from configs


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters per component (unet, vae, each text encoder), from safetensors headers; pickles by file size."""
    names = model.family.weight_components
    if model.single_file is not None:
        return {name: int(model.single_file.parameters.get(name, 0)) for name in names}
    from sdlite.formats.single_file import read_header

    counts = dict.fromkeys(names, 0)
    for file in model.weight_files:
        name = Path(file).parent.name
        if name not in counts:
            continue
        if Path(file).suffix == ".safetensors":
            shapes = read_header(file)[0]
            counts[name] += sum(math.prod(shape) for shape in shapes.values())
        else:
            counts[name] += Path(file).stat().st_size // 4  # pickled weights: fp32 is the rule
    return counts


def _per_level(value: Any, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


@dataclass(frozen=True)
class _Level:
    channels: int
    pixels: int  # latent pixels (tokens) at this level
    attention: bool
    heads: int
    layers: int  # resnets per down block (up blocks have one more)
    depth: int  # transformer layers per attention


def _unet_levels(cfg: dict[str, Any], height: int, width: int) -> list[_Level]:
    """The UNet's resolution levels for latents of height x width."""
    channels = list(cfg["block_out_channels"])
    n = len(channels)
    heads = _per_level(cfg.get("num_attention_heads") or cfg.get("attention_head_dim") or 8, n)
    depth = _per_level(cfg.get("transformer_layers_per_block") or 1, n)
    layers = _per_level(cfg.get("layers_per_block") or 1, n)
    levels = []
    for i, c in enumerate(channels):
        pixels = math.ceil(height / 2**i) * math.ceil(width / 2**i)
        attention = "CrossAttn" in cfg["down_block_types"][i] or (
            i == n - 1 and "CrossAttn" in str(cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn")
        )
        levels.append(_Level(c, pixels, attention, heads[i], layers[i], depth[i]))
    return levels


def _attention_matrices(level: _Level, images: int, kernel: str) -> int:
    """Elements of the self-attention matrices alive at once at `level` (heads x tokens^2 per image)."""
    if not level.attention or kernel == "flash":
        return 0
    if kernel == "sliced":  # diffusers' SlicedAttnProcessor: half the heads of one image at a time
        return ATTENTION_COPIES * max(level.heads // 2, 1) * level.pixels**2
    return ATTENTION_COPIES * images * level.heads * level.pixels**2


def unet_inference_elements(cfg: dict[str, Any], height: int, width: int, images: int, kernel: str) -> int:
    """Activation elements at the UNet's peak for `images` latents of height x width (guidance counted by the caller)."""
    levels = _unet_levels(cfg, height, width)
    skips = levels[0].channels * levels[0].pixels
    for i, level in enumerate(levels):
        skips += level.layers * level.channels * level.pixels
        if i + 1 < len(levels):
            skips += level.channels * levels[i + 1].pixels
    work = 0
    for level in levels:
        per_image = (K_TRANSFORMER if level.attention else K_RESNET) * level.channels * level.pixels
        work = max(work, int(images * per_image) + _attention_matrices(level, images, kernel))
    return int(images * K_SKIP * skips) + work


def unet_training_elements(cfg: dict[str, Any], height: int, width: int, checkpointing: bool) -> int:
    """Activation elements autograd keeps for one image through the UNet (forward and backward)."""
    kept, largest = 0, 0
    for level in _unet_levels(cfg, height, width):
        cp = level.channels * level.pixels
        blocks = 2 * level.layers + 1  # down resnets, up resnets (one more)
        resnet, transformer = K_TRAIN_RESNET * cp, K_TRAIN_TRANSFORMER * cp * level.depth
        if checkpointing:  # only block inputs are kept; one block at a time is recomputed
            kept += blocks * cp * (3 if level.attention else 2)
            largest = max(largest, int(K_TRAIN_RECOMPUTE * (transformer if level.attention else resnet)))
        else:
            kept += blocks * (resnet + (transformer if level.attention else 0))
    return int(kept) + largest


def _vae_levels(cfg: dict[str, Any], height: int, width: int) -> list[tuple[int, int]]:
    """(channels, pixels) of each VAE level, full resolution first, for an image of height x width."""
    channels = list(cfg["block_out_channels"])
    return [(c, math.ceil(height / 2**i) * math.ceil(width / 2**i)) for i, c in enumerate(channels)]


def vae_decode_elements(cfg: dict[str, Any], height: int, width: int, images: int, attention: str, tiled: bool) -> int:
    """Elements at the VAE decoder's peak for `images` images of height x width (one at a time when tiled)."""
    factor = 2 ** (len(cfg["block_out_channels"]) - 1)
    tile = cfg.get("sample_size") or 512
    tile = int(tile[0] if isinstance(tile, (list, tuple)) else tile)
    if tiled and (height > tile or width > tile):
        # Tiles of `tile` pixels decoded one by one, overlapping by a quarter; all kept until blended.
        tiles = math.ceil(height / (0.75 * tile)) * math.ceil(width / (0.75 * tile))
        one = vae_decode_elements(cfg, tile, tile, 1, attention, tiled=False)
        return one + tiles * 3 * tile * tile + 2 * 3 * height * width
    levels = _vae_levels(cfg, height, width)
    peak = 0
    for i, (c, pixels) in enumerate(levels):
        wider = max(c, levels[i + 1][0]) if i + 1 < len(levels) else c  # the upsampled input of this level
        peak = max(peak, int(K_DECODER * wider * pixels))
    latent = math.ceil(height / factor) * math.ceil(width / factor)
    head = levels[-1][0]
    if attention == "math" or (attention == "cuda" and head > FLASH_HEAD_DIM):  # the mid block's single head
        peak = max(peak, ATTENTION_COPIES * latent**2 + 2 * head * latent)
    return images * peak


def vae_training_elements(cfg: dict[str, Any], size: int) -> int:
    """Activation elements autograd keeps for one image through the VAE's encoder and decoder."""
    layers = int(cfg.get("layers_per_block") or 1)
    return int(sum((2 * layers + 1) * K_TRAIN_RESNET * c * pixels for c, pixels in _vae_levels(cfg, size, size)))


def vae_encode_elements(cfg: dict[str, Any], size: int, images: int) -> int:
    return images * max(int(K_ENCODER * c * pixels) for c, pixels in _vae_levels(cfg, size, size))


# ---------------------------------------------------------------------------------------------------
# Sampling


def sample_estimate(
    configs: dict[str, dict[str, Any]],
    params: dict[str, int],
    height: int,
    width: int,
    batch: int,
    guidance: bool,
    dtype: str,
    device: str,
    mode: str,
    single_file_bytes: int = 0,
) -> Estimate:
    """Peak memory of sampling `batch` images of height x width at once."""
    unet, vae = configs["unet"], configs["vae"]
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    lat_h, lat_w = math.ceil(height / factor), math.ceil(width / factor)
    size = DTYPE_BYTES[dtype]
    low = mode == "low-memory"
    kernel = "sliced" if low else ("math" if device == "mps" else "flash")
    vae_attention = "math" if device == "mps" else ("cuda" if device.startswith("cuda") else "flash")
    unet_images = batch * (2 if guidance else 1)
    # diffusers decodes in fp32 when the VAE asks for it (SD v1's does: fp16 overflows in its decoder).
    vae_size = 4 if vae.get("force_upcast") and size == 2 else size
    weights = {name: count * size for name, count in params.items()}
    offload = low and device != "cpu"  # model CPU offload: one component at a time on the device
    fixed = {"weights": max(weights.values(), default=0) if offload else sum(weights.values())}
    fixed["runtime"] = CUDA_RUNTIME if device.startswith("cuda") else RUNTIME
    phases = {
        "denoising": size * unet_inference_elements(unet, lat_h, lat_w, unet_images, kernel)
        + 4 * size * unet_images * unet["in_channels"] * lat_h * lat_w,  # latents, noise, guidance halves
        "VAE decoding": vae_size * vae_decode_elements(vae, height, width, 1 if low else batch, vae_attention, low)
        + 4 * K_IMAGE * 3 * height * width * batch,
    }
    if single_file_bytes:
        phases["loading"] = single_file_bytes  # the file's state dict and the built model exist together
    return Estimate(fixed, phases)


def check_sample(
    model: Any, config: Any, device: str, dtype: str, sizes: list[tuple[int, int]] | None = None
) -> Estimate:
    """Refuse (ResourceError) a sampling run whose largest batch cannot fit in the device's memory.

    `sizes` are each generation's (height, width) when known (an init image decides them); else the
    generation's own, or the model's native size.
    """
    configs = model.configs()
    params = parameter_counts(model)
    native = model.native_size()
    single = Path(model.path).stat().st_size if model.single_file is not None else 0
    worst: tuple[Estimate, Any, int, int, int] | None = None
    for n, gen in enumerate(config.generations):
        height, width = sizes[n] if sizes else (gen.height or native, gen.width or native)
        batch = min(config.batch_size, gen.num_images)
        estimate = sample_estimate(
            configs, params, height, width, batch, gen.guidance > 1, dtype, device, config.mode, single
        )
        if worst is None or estimate.total > worst[0].total:
            worst = (estimate, gen, height, width, batch)
    if worst is None:
        return Estimate({})
    estimate, gen, height, width, batch = worst
    limit = device_limit(device)
    if limit is None or estimate.total <= limit.bytes:
        return estimate
    what = f"sampling {batch} image{'s' if batch > 1 else ''} at {width}x{height}"
    advice = []
    if config.mode != "low-memory":
        low = sample_estimate(
            configs, params, height, width, batch, gen.guidance > 1, dtype, device, "low-memory", single
        )
        if low.total < estimate.total:
            advice.append(f"--low-memory (about {size_text(low.total)})")
    if batch > 1:
        advice.append("a smaller --batch-size")
    fits = _largest_fitting(
        lambda s: (
            sample_estimate(configs, params, s, s, batch, gen.guidance > 1, dtype, device, config.mode, single).total
        ),
        limit.bytes,
        factor_of(configs),
    )
    advice.append(
        f"a smaller --height/--width (at most about {fits}x{fits} fits{' at this batch' if batch > 1 else ''})"
        if fits
        else "a smaller model"
    )
    raise ResourceError(_refusal(what, estimate, limit, advice))


def factor_of(configs: dict[str, dict[str, Any]]) -> int:
    return 2 ** (len(configs["vae"]["block_out_channels"]) - 1)


def _largest_fitting(total: Any, limit: int, step: int) -> int:
    """The largest multiple of `step` (a square side, a batch size) whose `total` fits `limit`, by bisection;
    0 if none."""
    low, high = 0, 1
    while total(high * step) <= limit and high < 1 << 20:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if total(middle * step) <= limit else (low, middle)
    return low * step


def _refusal(what: str, estimate: Estimate, limit: Limit, advice: list[str]) -> str:
    largest = estimate.peak_phase
    detail = f"{largest} {size_text(estimate.phases[largest])}" if largest else ""
    weights = estimate.fixed.get("weights")
    parts = ", ".join(p for p in (f"weights {size_text(weights)}" if weights else "", detail) if p)
    return (
        f"{what} needs about {size_text(estimate.total)} of memory ({parts}), more than the {size_text(limit.bytes)} "
        f"this process can use ({limit.source}); try {', or '.join(advice)}"
    )


def size_text(value: int | None) -> str:
    if value is None:
        return "?"
    if value >= 1024 * 1024 * GIB:
        return f"{value / (1024 * 1024 * GIB):,.3g} PiB"
    if value >= 1024 * GIB:
        return f"{value / (1024 * GIB):,.3g} TiB"
    if value >= GIB:
        return f"{value / GIB:.3g} GiB"
    return f"{value / MIB:.0f} MiB"


# ---------------------------------------------------------------------------------------------------
# Training


def train_estimate(
    configs: dict[str, dict[str, Any]],
    params: dict[str, int],
    config: Any,
    resolution: int,
    device: str,
    lora_params: int = 0,
    batch_size: int | None = None,
) -> Estimate:
    """Peak memory of one training process at `resolution` and `batch_size` (default: the config's)."""
    unet, vae = configs["unet"], configs["vae"]
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    latent = math.ceil(resolution / factor)
    frozen = DTYPE_BYTES[config.mixed_precision]
    # Prior preservation runs a class image beside each instance image: both graphs live until backward.
    batch = (batch_size or config.batch_size) * (2 if getattr(config, "class_prompt", None) else 1)
    fixed = {"runtime": CUDA_RUNTIME if device.startswith("cuda") else TRAIN_RUNTIME}
    if config.component == "vae":  # the autoencoder alone, trained in full at the resolution
        fixed["weights"] = 4 * params["vae"]
        fixed["gradients and AdamW state"] = 3 * 4 * params["vae"]
        return Estimate(fixed, {"training step": 4 * batch * vae_training_elements(vae, resolution)})
    text_trained = config.train_text_encoder
    text = sum(count for name, count in params.items() if name.startswith("text_encoder"))  # SDXL has two
    trained = lora_params if config.lora else params["unet"] + (text if text_trained else 0)
    fixed["weights"] = 4 * params["unet"] + frozen * params["vae"] + (4 if text_trained else frozen) * text
    fixed["gradients and AdamW state"] = 3 * 4 * trained
    if config.ema:
        fixed["EMA"] = 4 * params["unet"]
    if config.mixed_precision != "no":
        fixed["half-precision weight copies"] = 2 * params["unet"]
    act = _activation_bytes(config.mixed_precision, device)
    step = batch * act * unet_training_elements(unet, latent, latent, config.gradient_checkpointing)
    if config.lora:
        step *= K_TRAIN_LORA
    cached = config.cache_choice()[0] if hasattr(config, "cache_choice") else bool(config.cache)
    encode = 0 if cached else frozen * vae_encode_elements(vae, resolution, batch)
    phases = {"training step": int(step + encode)}
    if config.validation_prompts:  # one image at a time, with guidance, between steps
        validation = sample_estimate(configs, {}, resolution, resolution, 1, True, "float32", device, "default")
        phases["validation"] = max(validation.phases.values())
    return Estimate(fixed, phases)


def _activation_bytes(mixed_precision: str, device: str) -> float:
    """Bytes per counted activation element (unet_training_elements).

    CPU (calibrated on resident memory): 4 in fp32, 3 under autocast (it keeps some fp32 tensors beside
    the half ones). CUDA under fp16/bf16 autocast: SD v1.5 at 512, batch 8, measured 21 GiB peak allocated
    on an H200 (../shared/reference.md, "GPU runs") of which 14.8 GiB are weights, gradients, AdamW moments
    and autocast's weight copies: 0.78 GiB of activations per image, 1.0 byte per counted element (CUDA's
    attention and fused kernels keep fewer intermediates than the CPU's); 1.25 keeps a margin. CUDA in
    fp32 is not measured yet and keeps the CPU's 4.
    """
    if device.startswith("cuda") and mixed_precision in ("fp16", "bf16"):
        return 1.25
    return 4.0 if mixed_precision == "no" else 3.0


def lora_parameters(unet: dict[str, Any], rank: int) -> int:
    """Parameters of a LoRA of `rank` on every attention projection (to_q/k/v/out) of the UNet."""
    total = 0
    cross = unet.get("cross_attention_dim") or 768
    for level in _unet_levels(unet, 1, 1):
        if level.attention:
            c = level.channels
            # self-attention q/k/v/out (c -> c), cross-attention q/out (c -> c) and k/v (cross -> c)
            per_block = rank * (2 * c) * 4 + rank * (2 * c) * 2 + rank * (c + cross) * 2
            total += per_block * level.depth * (3 * level.layers + 1)
    return total


@dataclass(frozen=True)
class TrainFit:
    """A training process's memory estimate, what its device has, and the largest batch size that fits."""

    estimate: Estimate
    limit: Limit | None
    largest_batch: int | None  # None when the device's memory cannot be told


def train_device() -> str:
    """The device accelerate gives this training process: its local GPU, else the CPU (MPS shares the
    host's memory)."""
    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def check_train(model: Any, config: Any, resolution: int, num_processes: int) -> TrainFit:
    """Refuse (ResourceError) a training run that cannot fit, before any image is read or weight loaded."""
    device = train_device()
    configs = model.configs()
    params = parameter_counts(model)
    lora = lora_parameters(configs["unet"], config.lora_rank) if config.lora else 0
    estimate = train_estimate(configs, params, config, resolution, device, lora)
    limit = device_limit(device)
    if limit is None:
        return TrainFit(estimate, None, None)
    # Processes on one machine share its RAM; on GPUs each process has its own device.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes)) if device == "cpu" else 1

    def need(batch: int) -> int:
        return local * train_estimate(configs, params, config, resolution, device, lora, batch).total

    largest = _largest_fitting(need, limit.bytes, 1)
    if estimate.total * local <= limit.bytes:
        return TrainFit(estimate, limit, largest)
    what = f"training at {resolution}x{resolution} with batch {config.batch_size}" + (
        f" on {local} processes" if local > 1 else ""
    )
    advice = []
    if largest:
        advice.append(f"--batch-size {largest} or less (with --grad-accum for the same effective batch)")
    if not config.gradient_checkpointing and config.component != "vae":
        advice.append("--gradient-checkpointing")
    fits = _largest_fitting(
        lambda side: local * train_estimate(configs, params, config, side, device, lora).total,
        limit.bytes,
        factor_of(configs),
    )
    advice.append(f"a smaller --resolution (at most about {fits} fits)" if fits else "a smaller model")
    scaled = Estimate(
        {k: v * local for k, v in estimate.fixed.items()}, {k: v * local for k, v in estimate.phases.items()}
    )
    raise ResourceError(_refusal(what, scaled, limit, advice))
