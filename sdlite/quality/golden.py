"""Golden-image regression checks: `check(config)` regenerates every sdlite PNG under the given folders from its
own metadata and compares the new pixels with the stored ones.

Each golden is replayed exactly as `sample --from-image` replays it (its batch recomputed, its recorded mode,
sampler, seed and LoRAs), optionally with another model or LoRAs. Goldens that share everything that decides
the pipeline (model, mode, LoRAs, precision, device) are made in one `sample` run, so the model loads once per
group, and images of the same batch are recomputed once. Nothing here prints: results stream through
`on_result`, progress through `progress(done, total)` (denoising steps of the whole check).

What passes. Two numbers decide, both on 8-bit RGB: a pixel has *changed* when one of its channels differs by
more than `tolerance` gray levels (default 4), and an image passes while at most `max_changed` of its pixels
(default 0.5%) have changed. The max difference, mean difference and PSNR are reported beside them.

How the defaults were chosen. Measured on this project's CPU machine (2 cores, torch 2.13) with the built-in
model: 20 images of 64x64 (5 prompts x 4 seeds, DDIM 50 steps, guidance 5), each variant against the same
images made one at a time in the default mode (worst image of the 20 for max and PSNR; "changed" is the
share of pixels beyond 4 levels, lowest-highest over the 20; fail = images failing the default rule):

    variant                                  max diff  PSNR      changed (> 4 levels)  fail
    float noise: batch 4 or 2 instead of 1   1         80.6 dB   0                     0/20
                 1 thread instead of 2       1         84.3 dB   0                     0/20
                 --fast's SDPA/channels_last 1         80.6 dB   0                     0/20
                 --low-memory (slicing)      1         86.0 dB   0                     0/20
    bf16 instead of fp32                     54        33.5 dB   0.56-12.1%            20/20
    model trained 1 more step (lr 1e-5)      83        32.9 dB   0.12-23.3%            18/20
    model trained 5 more steps (lr 1e-5)     174       22.0 dB   6.3-46.7%             20/20
    model trained 5 more steps (lr 1e-4)     255       12.8 dB   36-95%                20/20
    a patch of 5% of the pixels, +8 levels   8         43 dB     5%                    1/1

Float noise moves a pixel by at most 1 level on the built-in model (3 on the tiny test model across modes,
see sdlite/sampling/modes.py); 4 levels leave room for other CPUs and GPUs at the same precision, while a visible local
edit (8 levels) or a model trained even one more step changes far more pixels by more. The 0.5% lets a few
outlier pixels through (a sharp edge that float rounding flips, as across devices) without letting through an
edit of more than 1/200 of the image. A different precision (fp16/bf16 goldens checked in fp32) is a real
change by this rule: make goldens at the precision and on the kind of device CI checks them on.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdlite.errors import DataError, ImagesDiffer
from sdlite.models.source import DEFAULT_MODEL
from sdlite.quality.config import DEFAULT_MAX_CHANGED, DEFAULT_TOLERANCE, CheckConfig
from sdlite.sampling.config import SampleConfig
from sdlite.sampling.sources import SampleOverrides, build_sample_config
from sdlite.staging import check_output_place, staged_file

Status = Literal["passed", "failed", "skipped", "error"]
ProgressFn = Callable[[int, int], None]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what `sdlite sample --image-format` writes
_GRID = re.compile(r"^grid-\d+(?:-\d+)?\.png$", re.IGNORECASE)
_PROGRESS = re.compile(r"-progress\.png$", re.IGNORECASE)


@dataclass(frozen=True)
class Metrics:
    """How far a regenerated image is from its golden, on 8-bit RGB."""

    max_diff: int  # the largest channel difference, 0-255
    mean_diff: float  # mean absolute difference over every channel of every pixel
    psnr: float  # dB over all channels; inf when the pixels are identical
    changed: float  # share of pixels with a channel differing by more than the tolerance

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: PSNR of identical images (inf) is null."""
        return {
            **dataclasses.asdict(self),
            "psnr": None if math.isinf(self.psnr) else round(self.psnr, 3),
            "mean_diff": round(self.mean_diff, 5),
            "changed": round(self.changed, 6),
        }


@dataclass(frozen=True)
class CheckResult:
    """One golden: what became of it, how far off it was, and why it failed or was not checked."""

    path: Path
    name: str  # the file's path relative to the folder it was found in (its JUnit test-case name)
    status: Status
    reason: str = ""  # why it failed, was skipped or could not be checked
    metrics: Metrics | None = None
    seconds: float = 0.0  # its share of the denoising time, plus the comparison
    model_hash: str | None = None  # the model it was regenerated with
    golden_model_hash: str | None = None  # the model its metadata records
    diff: Path | None = None  # the heatmap written for it (--diff, failures only)

    @property
    def model_changed(self) -> bool:
        """Whether the model it was regenerated with is not the one its metadata records (by hash)."""
        return bool(self.golden_model_hash and self.model_hash) and not str(self.model_hash).startswith(
            str(self.golden_model_hash).lower()
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `--json` prints per golden)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "status": self.status,
            "reason": self.reason,
            **(self.metrics.to_dict() if self.metrics else dict.fromkeys(("max_diff", "mean_diff", "psnr", "changed"))),
            "seconds": round(self.seconds, 3),
            "model_hash": self.model_hash,
            "golden_model_hash": self.golden_model_hash,
            "diff": str(self.diff) if self.diff else None,
        }


@dataclass(frozen=True)
class CheckReport:
    """Every golden's result in the order found, the reports written, and the cost of the run."""

    results: tuple[CheckResult, ...]
    tolerance: float
    max_changed: float
    seconds: float
    model_loads: int  # one per group of goldens sharing model, mode, LoRAs, precision and device
    junit: Path | None = None

    def count(self, status: Status) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        """Whether CI should pass: every checked golden within tolerance and none unreadable."""
        return not self.count("failed") and not self.count("error")

    def summary(self) -> dict[str, Any]:
        """Counts and settings, as the CLI prints them last."""
        return {
            "checked": self.count("passed") + self.count("failed"),
            "passed": self.count("passed"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "errors": self.count("error"),
            "tolerance": self.tolerance,
            "max_changed": self.max_changed,
            "seconds": round(self.seconds, 3),
            "model_loads": self.model_loads,
            "junit": str(self.junit) if self.junit else None,
        }

    def raise_for_status(self) -> None:
        """DataError (exit 3) when a golden could not be read or replayed (the check is incomplete), else
        ImagesDiffer (exit 7) when one differs beyond tolerance; nothing when CI should pass."""
        errors = [r for r in self.results if r.status == "error"]
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise DataError(f"{len(errors)} golden(s) could not be checked: {errors[0].name}: {errors[0].reason}{more}")
        failed = [r.name for r in self.results if r.status == "failed"]
        if failed:
            names = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
            raise ImagesDiffer(
                f"{len(failed)} of {self.count('passed') + len(failed)} images differ beyond tolerance "
                f"({_rule(self.tolerance, self.max_changed)}): {names}"
            )


def compare(golden: Any, regenerated: Any, tolerance: float = DEFAULT_TOLERANCE) -> Metrics:
    """Metrics of two uint8 RGB arrays of the same shape (H, W, 3)."""
    import numpy as np

    diff = np.abs(golden.astype(np.int16) - regenerated.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return Metrics(
        max_diff=int(diff.max(initial=0)),
        mean_diff=float(diff.mean()) if diff.size else 0.0,
        psnr=math.inf if mse == 0 else 10 * math.log10(255**2 / mse),
        changed=float((diff.max(axis=-1) > tolerance).mean()) if diff.size else 0.0,
    )


def passes(metrics: Metrics, max_changed: float = DEFAULT_MAX_CHANGED) -> bool:
    """The pass rule: at most `max_changed` of the pixels changed beyond the tolerance."""
    return metrics.changed <= max_changed


def check(
    config: CheckConfig,
    progress: ProgressFn | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> CheckReport:
    """Regenerate every golden under `config.paths`, compare, and write the requested reports.

    PNGs without sdlite metadata (other tools' images, grids, progress strips) are reported as skipped;
    unreadable files and goldens whose metadata cannot be replayed (say, a missing init image) are reported as
    errors. A missing model is a ModelError before anything is generated. Returns every result; call
    `report.raise_for_status()` for the CI outcome.
    """
    from sdlite.models.loading import resolve_model

    started = time.perf_counter()
    # Report places first: a device, a file or a read-only folder fails before any golden is regenerated.
    if config.diff_dir is not None:
        check_output_place(config.diff_dir, "--diff")
    if config.junit is not None:
        check_output_place(config.junit, "--junit", "file")
    emit = _Emitter(on_result)
    found = _find_pngs(config.paths)
    if not found:
        raise DataError(f"no PNG files under {', '.join(map(str, config.paths))}")

    # 1. Read every golden's metadata and build its replay config; sort them into groups, one model load each.
    groups: dict[tuple[Any, ...], _Group] = {}
    with tempfile.TemporaryDirectory(prefix="sdlite-check-") as tmp:
        for order, (path, name) in enumerate(found):
            golden = _Golden(order, path, name)
            replay = _replay_config(golden, config, Path(tmp))
            if replay is None:
                assert golden.result is not None
                emit.now(order, golden.result)
                continue
            key = _group_key(replay)
            groups.setdefault(key, _Group(replay, Path(tmp) / f"group-{len(groups)}")).add(golden, replay)
        for group in groups.values():  # a missing or broken model fails before any image is made
            c = group.base
            resolve_model(c.model, c.offline, c.allow_pickle, c.tokenizer, c.ema_weights)

        # 2. Regenerate group by group and compare each image as it is written.
        steps = _StepTotal(progress, sum(g.steps() for g in groups.values()))
        for group in groups.values():
            group.run(config, steps, emit)
    results = emit.results()
    if all(r.status == "skipped" for r in results):  # a check that checked nothing must not pass in CI
        raise DataError(
            f"no sdlite images to check under {', '.join(map(str, config.paths))}: {len(results)} PNG(s) without "
            "sdlite metadata (make goldens with `sdlite sample`)"
        )
    report = CheckReport(results, config.tolerance, config.max_changed, time.perf_counter() - started, len(groups))
    if config.junit is not None:
        write_junit(report, config.junit)
        report = dataclasses.replace(report, junit=config.junit)
    return report


class _Emitter:
    """Collects results (from the sampling writer thread too) and streams each to the caller as it comes."""

    def __init__(self, on_result: Callable[[CheckResult], None] | None) -> None:
        self.on_result = on_result
        self.found: list[tuple[int, CheckResult]] = []  # (place in the listing, result)
        self.lock = threading.Lock()

    def now(self, order: int, result: CheckResult) -> None:
        with self.lock:
            self.found.append((order, result))
        if self.on_result:
            self.on_result(result)

    def results(self) -> tuple[CheckResult, ...]:
        return tuple(result for _, result in sorted(self.found, key=lambda pair: pair[0]))


class _Golden:
    """A PNG found under the goldens: its place in the listing, and its result until it has one."""

    def __init__(self, order: int, path: Path, name: str) -> None:
        self.order, self.path, self.name = order, path, name
        self.result: CheckResult | None = None
        self.golden_hash: str | None = None

    def finish(self, status: Status, reason: str = "", **fields: Any) -> CheckResult:
        self.result = CheckResult(self.path, self.name, status, reason, golden_model_hash=self.golden_hash, **fields)
        return self.result


def _find_pngs(paths: Iterable[str]) -> list[tuple[Path, str]]:
    """Every PNG under the given folders (recursively, sorted) and the given files, each once, with its name
    relative to the folder it was found in."""
    found: dict[Path, str] = {}
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            for file in files:
                found.setdefault(file.resolve(), file.relative_to(path).as_posix())
        elif path.is_file():
            found.setdefault(path.resolve(), path.name)
        else:
            raise DataError(f"goldens {given} do not exist (give a folder of PNGs made by `sdlite sample`, or PNGs)")
    return [(path, name) for path, name in found.items()]


def _replay_config(golden: _Golden, config: CheckConfig, tmp: Path) -> SampleConfig | None:
    """The `--from-image` config that remakes this golden, or None with the golden's result set (skipped or
    error) when it cannot be replayed."""
    from sdlite.formats.png_record import A1111_CHUNK, CHUNK, png_text

    try:
        text = png_text(golden.path)
    except DataError as exc:
        golden.finish("error", str(exc).removeprefix(f"{golden.path} "))
        return None
    if CHUNK not in text:
        golden.finish("skipped", _why_not_sdlite(golden.path, text, A1111_CHUNK))
        return None
    try:
        replay = build_sample_config(
            SampleOverrides(
                from_image=golden.path,
                model=config.model,
                out=tmp / "unused",
                lora=tuple(c.source for c in config.loras),
                lora_scale=tuple(c.scale for c in config.loras),
                dtype=config.dtype,
                device=config.device,
                offline=config.offline,
                allow_pickle=config.allow_pickle,
                tokenizer=config.tokenizer,
                ema_weights=config.ema_weights,
            )
        )
    except DataError as exc:
        golden.finish("error", str(exc).removeprefix(f"{golden.path}: "))
        return None
    golden.golden_hash = replay.expected_model_hash
    if config.model is None and _moved_builtin(replay.model):
        replay = dataclasses.replace(replay, model=str(DEFAULT_MODEL))
    return replay


def _why_not_sdlite(path: Path, text: dict[str, str], a1111_chunk: str) -> str:
    if _GRID.match(path.name):
        return "a contact sheet (grid), not a generated image"
    if _PROGRESS.search(path.name):
        return "a --save-progress strip, not a generated image"
    if a1111_chunk in text:
        return "made by another tool (A1111 parameters only): its pixels cannot be reproduced exactly"
    return "no sdlite metadata (not written by `sdlite sample`)"


def _moved_builtin(model: str) -> bool:
    """Whether a recorded model is the built-in one of another installation (a CI runner's site-packages, a
    developer's checkout): goldens made with the built-in model are checked against this one's."""
    path = Path(model)
    return path.parts[-2:] == DEFAULT_MODEL.parts[-2:] and not path.exists()


def _group_key(replay: SampleConfig) -> tuple[Any, ...]:
    """What decides the loaded pipeline: goldens that share it are made in one run."""
    return (
        replay.model,
        replay.mode,
        replay.loras,
        replay.dtype,
        replay.device,
        replay.tokenizer,
        replay.ema_weights,
        replay.offline,
        replay.allow_pickle,
        replay.vae,
        replay.embeddings,
        replay.embeddings_dirs,
        replay.image_format,
        replay.quality,
    )


class _Group:
    """Goldens made in one `sample` run: each distinct replay (the generations of one recorded batch) once, as a
    batch of its own, its images matched to the goldens by (generation, seed)."""

    def __init__(self, base: SampleConfig, out: Path) -> None:
        self.base, self.out = base, out
        self.units: dict[tuple[Any, ...], int] = {}  # a replay's generations -> the index of its first in the run
        self.generations: list[Any] = []
        self.waiting: dict[tuple[int, int], list[_Golden]] = {}

    def add(self, golden: _Golden, replay: SampleConfig) -> None:
        gens = replay.generations
        if gens not in self.units:
            self.units[gens] = len(self.generations)
            self.generations.extend(gens)
        own = replay.keep_numbers[0] if replay.keep_numbers else 0  # the golden's image: its place in the batch
        for index, gen in enumerate(gens, start=self.units[gens]):
            if own < gen.num_images:
                self.waiting.setdefault((index, gen.seed + own), []).append(golden)
                return
            own -= gen.num_images
        raise RuntimeError(f"sdlite check: {golden.path} is not among the images of its own batch")

    def steps(self) -> int:
        from sdlite.sampling.plan import denoising_steps

        return sum(denoising_steps(g) * g.num_images for g in self.generations)

    def run(self, config: CheckConfig, steps: _StepTotal, emit: _Emitter) -> None:
        from sdlite.sampling.plan import denoising_steps
        from sdlite.sampling.run import sample

        gens = tuple(self.generations)
        # One batch per replay: each starts a new batch, and the largest recorded batch as the batch size makes
        # every replay (its recomputed batch, or a single image) exactly one pipeline call of its own images.
        replay = dataclasses.replace(
            self.base,
            generations=gens,
            out=self.out,
            batch_size=max(sum(g.num_images for g in unit) for unit in self.units),
            batch_breaks=tuple(self.units.values()),
            keep_numbers=(),
            expected_model_hash=None,
            grid=False,
            save_progress=None,
        )
        clock = _Clock([denoising_steps(g) * g.num_images for g in gens])
        expected = [(i, g.seed + j) for i, g in enumerate(gens) for j in range(g.num_images)]
        matcher = _Matcher(expected, self.waiting, config, emit, clock)
        steps.start_group(clock)
        sample(replay, progress=steps, on_image=matcher)
        if matcher.done != len(expected):
            raise RuntimeError(f"sdlite check: sampling wrote {matcher.done} of {len(expected)} images")
        shutil.rmtree(self.out, ignore_errors=True)


class _Clock:
    """When each generation of a group's run finished denoising, from the step reports, so each golden's
    test case gets its own batch's time (not the model load)."""

    def __init__(self, steps: list[int]) -> None:
        self.ends = [sum(steps[: i + 1]) for i in range(len(steps))]
        self.first: float | None = None
        self.finished: dict[int, float] = {}

    def step(self, done: int) -> None:
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        while len(self.finished) < len(self.ends) and done >= self.ends[len(self.finished)]:
            self.finished[len(self.finished)] = now

    def seconds(self, index: int) -> float:
        end = self.finished.get(index, time.perf_counter())
        start = self.finished.get(index - 1, self.first if self.first is not None else end)
        return max(end - start, 0.0)


class _Matcher:
    """The `on_image` of a group's run (called on sampling's writer thread): compares each written image with
    the goldens waiting for it, in the run's order of (generation, seed)."""

    def __init__(
        self,
        expected: list[tuple[int, int]],
        waiting: dict[tuple[int, int], list[_Golden]],
        config: CheckConfig,
        emit: _Emitter,
        clock: _Clock,
    ) -> None:
        self.expected, self.waiting, self.config, self.emit, self.clock = expected, waiting, config, emit, clock
        self.per_generation = {i: sum(len(v) for k, v in waiting.items() if k[0] == i) for i, _ in expected}
        self.done = 0

    def __call__(self, result: Any) -> None:
        key = self.expected[self.done]
        self.done += 1
        if result.seed != key[1]:  # the run's order is the generations' order; a mismatch is a bug
            raise RuntimeError(f"sdlite check: expected seed {key[1]}, sampling wrote seed {result.seed}")
        goldens = self.waiting.get(key, [])
        if not goldens:  # an image of a recomputed batch that is not itself a golden
            return
        share = self.clock.seconds(key[0]) / max(self.per_generation[key[0]], 1)
        regenerated = _pixels(result.path)
        for golden in goldens:
            started = time.perf_counter()
            checked = self._judge(golden, regenerated, result.model_hash)
            self.emit.now(golden.order, dataclasses.replace(checked, seconds=share + time.perf_counter() - started))

    def _judge(self, golden: _Golden, regenerated: Any, model_hash: str) -> CheckResult:
        config = self.config
        try:
            stored = _pixels(golden.path)
        except DataError as exc:
            return golden.finish("error", str(exc), model_hash=model_hash)
        if stored.shape != regenerated.shape:
            (h, w), (rh, rw) = stored.shape[:2], regenerated.shape[:2]
            return golden.finish(
                "failed", f"the golden is {w}x{h}, the regenerated image {rw}x{rh}", model_hash=model_hash
            )
        metrics = compare(stored, regenerated, config.tolerance)
        fields: dict[str, Any] = {"metrics": metrics, "model_hash": model_hash}
        if passes(metrics, config.max_changed):
            return golden.finish("passed", **fields)
        reason = (
            f"{metrics.changed:.2%} of pixels differ by more than {_levels(config.tolerance)} gray levels (at most "
            f"{config.max_changed:.2%} may); max diff {metrics.max_diff}, PSNR {_psnr(metrics.psnr)}"
        )
        if golden.golden_hash and not model_hash.startswith(golden.golden_hash.lower()):
            reason += f"; the model differs from the golden's (hash {golden.golden_hash[:10]} -> {model_hash[:10]})"
        if config.diff_dir is not None:
            where = _diff_path(config.diff_dir, golden.name)
            fields["diff"] = write_heatmap(stored, regenerated, where, golden.name, metrics, config.tolerance)
        return golden.finish("failed", reason, **fields)


class _StepTotal:
    """Progress over the whole check: each group's `(done, total)` steps added to those of the groups before."""

    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.total, self.before, self.current = progress, total, 0, 0
        self.clock: _Clock | None = None

    def start_group(self, clock: _Clock) -> None:
        self.before, self.current, self.clock = self.before + self.current, 0, clock

    def __call__(self, done: int, total: int) -> None:
        self.current = total
        if self.clock is not None:
            self.clock.step(done)
        if self.progress:
            self.progress(min(self.before + done, self.total), self.total)


def _pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path} is not a readable image: {exc}") from exc


def _levels(value: float) -> str:
    return f"{value:g}"


def _psnr(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f} dB"


def _rule(tolerance: float, max_changed: float) -> str:
    return f"at most {max_changed:.2%} of pixels beyond {_levels(tolerance)} gray levels"


def _diff_path(folder: Path, name: str) -> Path:
    relative = Path(name)
    return Path(folder) / relative.with_name(f"{relative.stem}-diff.png")


# Heatmaps: small images are enlarged (nearest neighbour) so single pixels stay visible.
MIN_PANEL = 192
_PAD, _LABEL = 6, 14


def write_heatmap(golden: Any, regenerated: Any, path: Path, title: str, metrics: Metrics, tolerance: float) -> Path:
    """golden | regenerated | |difference| (black 0, through red and yellow, to white at the max difference),
    labelled, with the metrics underneath. Written whole or not at all."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    diff = np.abs(golden.astype(np.int16) - regenerated.astype(np.int16)).max(axis=-1).astype(np.float32)
    x = diff / max(float(diff.max()), 1.0)
    heat = (np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], -1) * 255).round()
    panels = [Image.fromarray(a.astype(np.uint8)) for a in (golden, regenerated, heat)]
    height, width = golden.shape[:2]
    scale = max(1, math.ceil(MIN_PANEL / max(height, width)))
    size = (width * scale, height * scale)
    labels = ["golden", "regenerated", f"|diff|: white = {metrics.max_diff} levels"]
    footer = [
        title,
        f"max {metrics.max_diff}, mean {metrics.mean_diff:.3f}, PSNR {_psnr(metrics.psnr)}, "
        f"{metrics.changed:.2%} of pixels > {_levels(tolerance)} levels",
    ]
    sheet = Image.new("RGB", (3 * size[0] + 4 * _PAD, size[1] + 2 * _PAD + _LABEL * (1 + len(footer))), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        left = _PAD + i * (size[0] + _PAD)
        draw.text((left, _PAD // 2), label, fill="black", font=font)
        sheet.paste(panel.resize(size, Image.Resampling.NEAREST), (left, _PAD + _LABEL))
    for n, line in enumerate(footer):
        draw.text((_PAD, 2 * _PAD + _LABEL + size[1] + n * _LABEL - _PAD // 2), line, fill="black", font=font)
    path = Path(path)
    with staged_file(path, "difference heatmap") as temp:
        sheet.save(temp, format="PNG")
    return path


def write_junit(report: CheckReport, path: Path) -> Path:
    """A JUnit XML report: one <testsuite name="sdlite check">, one <testcase> per golden named by its file name
    (relative to its folder), <failure>/<skipped>/<error> as CI systems display them. Written atomically."""
    import datetime
    import socket
    import xml.etree.ElementTree as ET

    counts = {
        "tests": len(report.results),
        "failures": report.count("failed"),
        "errors": report.count("error"),
        "skipped": report.count("skipped"),
        "time": f"{report.seconds:.3f}",
    }
    root = ET.Element("testsuites", name="sdlite check", **{k: str(v) for k, v in counts.items()})
    suite = ET.SubElement(
        root,
        "testsuite",
        name="sdlite check",
        **{k: str(v) for k, v in counts.items()},
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        hostname=_xml_text(socket.gethostname()),
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("tolerance", _levels(report.tolerance)),
        ("max_changed", f"{report.max_changed:g}"),
        ("model_loads", str(report.model_loads)),
    ):
        ET.SubElement(properties, "property", name=key, value=value)
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname="sdlite.check",
            name=_xml_text(result.name),
            file=_xml_text(str(result.path)),
            time=f"{result.seconds:.3f}",
        )
        reason = _xml_text(result.reason)
        if result.status == "failed":
            failure = ET.SubElement(case, "failure", message=reason, type="ImagesDiffer")
            failure.text = reason + (f"\ndifference heatmap: {result.diff}" if result.diff else "")
        elif result.status == "skipped":
            ET.SubElement(case, "skipped", message=reason)
        elif result.status == "error":
            ET.SubElement(case, "error", message=reason, type="DataError")
        if result.metrics is not None:
            m = result.metrics
            out = ET.SubElement(case, "system-out")
            out.text = (
                f"max diff {m.max_diff}, mean diff {m.mean_diff:.4f}, PSNR {_psnr(m.psnr)}, "
                f"{m.changed:.4%} of pixels > {_levels(report.tolerance)} levels; "
                f"model hash {(result.model_hash or '?')[:10]} (golden: {(result.golden_model_hash or '?')[:10]})"
            )
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
    path = Path(path)
    with staged_file(path, "JUnit report") as temp:
        temp.write_bytes(data)
    return path


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold (control characters and lone surrogates in a file name become U+FFFD)."""
    return _XML_INVALID.sub("\ufffd", text)
