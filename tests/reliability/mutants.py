"""Proof that the reliability suite has teeth: break sdlite on purpose, one way at a time, and check
that the tests meant to catch each break fail, and that every test in the suite fails at least once.

    .venv/bin/python tests/reliability/mutants.py [NAME...]      (`make mutants`; about 10 minutes, two at a time)

Each mutant is a copy of the working tree with one source edit; its tests run against the copy
(PYTHONPATH puts the copy first, for subprocesses too). Not part of `make test`: it reruns the
suite many times.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "tests/reliability"
JOBS = 2  # mutants tested at a time: one per core of the 2-core machines this runs on


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: str  # a pytest -k expression, run within the suite
    suite: str = SUITE  # where those tests live (features outside the reliability suite name their own file)


MUTANTS = [
    Mutant("pickle-in-folder-allowed", "sdlite/models/loading.py", "    if not allow_pickle:\n        raise ModelError(\n            f\"{folder} holds only pickle",
           "    if False:\n        raise ModelError(\n            f\"{folder} holds only pickle", "pickle_weights_inside"),
    Mutant("single-pickle-not-recognised", "sdlite/models/loading.py", 'if head[:1] == b"\\x80" or', "if False or",
           "crafted_checkpoint or torch_zip"),
    Mutant("disguised-pickle-trusted", "sdlite/models/loading.py", 'if file_format(file) != "safetensors":', "if False:",
           "renamed_safetensors"),
    Mutant("resume-skips-content-check", "sdlite/training/checkpoints.py", "        _check_safe(file)\n", "", "forged"),
    Mutant("truncation-unchecked", "sdlite/models/loading.py", "    if end > data_size:", "    if False:", "damaged"),
    Mutant("resume-forgets-optimizer", "sdlite/training/unet.py", "    checkpoints.load_optimizer(optimizer, folder / \"training\")\n",
           "", "sigkill or resumed"),
    Mutant("resume-forgets-ema", "sdlite/training/unet.py", "        checkpoints.load_ema(ema, folder / \"training\")\n",
           "        pass\n", "sigkill or resumed"),
    Mutant("data-order-from-global-rng", "sdlite/data/buckets.py",
           "        generator = torch.Generator().manual_seed(mix(seed, epoch))",
           "        generator = torch.default_generator", "sigkill or resumed"),
    Mutant("loss-log-not-truncated-on-resume", "sdlite/training/reporting.py", "if int(row.split(\",\")[0]) <= start_step]", "]",
           "resumed_run"),
    Mutant("stale-staging-kept", "sdlite/training/out_folder.py", "        checkpoints.clean_staging(config.out)\n", "", "checkpoint_write"),
    Mutant("prune-ignores-step", "sdlite/training/checkpoints.py", "if _step_of(p) <= step]", "]", "never_deletes"),
    Mutant("half-checkpoints-listed", "sdlite/training/checkpoints.py", "if (p / MANIFEST).is_file()]", "]", "never_deletes"),
    Mutant("ranks-read-the-same-data", "sdlite/training/steps.py", "+ rank * plan.batch_size", "", "two_processes"),
    Mutant("every-rank-logs", "sdlite/training/unet.py", "log = LossLog(config.out, start_step, accelerator.is_main_process)",
           "log = LossLog(config.out, start_step, True)", "two_processes"),
    Mutant("bad-images-always-skipped", "sdlite/data/images.py", "if bad and not skip_bad_images:", "if False:",
           "first_bad_file"),
    Mutant("bomb-limit-off", "sdlite/data/images.py", "            warnings.simplefilter(\"error\", Image.DecompressionBombWarning)\n",
           "            Image.MAX_IMAGE_PIXELS = None\n", "bomb or skip_bad_images"),
    Mutant("bad-image-skipped-silently", "sdlite/data/images.py", "            bad.append(size)\n", "            pass\n", "skip_bad_images"),
    Mutant("no-exif-transpose", "sdlite/data/images.py", "upright = ImageOps.exif_transpose(opened)", "upright = opened",
           "exif"),
    Mutant("transparency-on-black", "sdlite/data/images.py", "(255, 255, 255", "(0, 0, 0", "composited or transparency"),
    Mutant("modes-converted-naively", "sdlite/data/images.py", "    image = _to_rgb(upright)", "    image = upright.convert(\"RGB\")",
           "16bit or float or cmyk or tiff or palette or gray or rgb_exact or la_ or rgba"),
    Mutant("decode-errors-escape", "sdlite/data/images.py", "    except _DECODE_ERRORS as exc:", "    except KeyError as exc:",
           "corrupt or truncated_png or empty_or_missing"),
    Mutant("nan-loss-applied", "sdlite/training/steps.py", "        if math.isfinite(loss):", "        if True:", "nan_loss"),
    Mutant("checkpoint-after-bad-step", "sdlite/training/unet.py", "if due and guard.in_row == 0:", "if due:",
           "repeated_nan"),
    Mutant("nan-samples-saved", "sdlite/sampling/run.py", "    if not np.isfinite(pixels).all():", "    if False:",
           "nan_latents_or_pixels and vae or each_kind"),
    Mutant("nan-latents-not-watched", "sdlite/sampling/interrupt.py", "        if watch and not latents.isfinite().all():", "        if False:",
           "nan_latents_or_pixels and unet"),
    Mutant("partial-png-kept", "sdlite/sampling/outputs.py", "        temp.unlink(missing_ok=True)\n",
           "        pass\n", "enospc"),
    Mutant("safetensors-io-error-unmapped", "sdlite/errors.py", 'if type(exc).__name__ != "SafetensorError"',
           "if True", "disk_full_during_training"),
    Mutant("disk-errors-unmapped", "sdlite/errors.py", "    except OSError as exc:\n        reason", "    except KeyError as exc:\n        reason",
           "unwritable or full_disk or enospc"),
    Mutant("out-created-late", "sdlite/training/unet.py", "    prepare_out(config, accelerator, fresh=resume is None)\n", "", "unwritable_training"),
    Mutant("resource-code-changed", "sdlite/errors.py", "    exit_code = 5", "    exit_code = 1", "each_kind"),
    Mutant("oom-is-internal", "sdlite/cli/failures.py", 'if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":',
           "if False:", "unexpected_exceptions"),
    Mutant("ctrl-c-unhandled", "sdlite/cli/failures.py", "    except KeyboardInterrupt:\n        typer.echo(\"interrupted\", err=True)\n        raise typer.Exit(130) from None\n",
           "", "unexpected_exceptions or ctrl_c"),
    Mutant("usage-code-changed", "sdlite/errors.py", "    exit_code = 2", "    exit_code = 3", "each_kind or table"),
    Mutant("data-code-changed", "sdlite/errors.py", "    exit_code = 3", "    exit_code = 2", "each_kind or first_bad_file"),
    Mutant("model-code-changed", "sdlite/errors.py", "    exit_code = 4", "    exit_code = 1", "each_kind or untrusted"),
    Mutant("numerical-code-changed", "sdlite/errors.py", "    exit_code = 6", "    exit_code = 1", "each_kind or repeated_nan"),
    Mutant("sample-never-succeeds", "sdlite/sampling/run.py", "    return SampleResult(\n        path=path, index=index, model=facts.ref,",
           "    raise RuntimeError\n    return SampleResult(\n        path=path, index=index, model=facts.ref,",
           "each_kind"),
    Mutant("full-stdout-unmapped", "sdlite/cli/failures.py", "if isinstance(exc, OSError) and exc.errno in DISK_FULL:", "if False:",
           "full_standard_output"),
    Mutant("internal-error-multiline", "sdlite/cli/failures.py", "message = str(exc).strip().splitlines()[0]", "message = str(exc)",
           "unexpected_exceptions"),
    Mutant("opaque-modes-grayscaled", "sdlite/data/images.py", '    return image.convert("RGB")\n\n\ndef _high_depth',
           '    return image.convert("L").convert("RGB")\n\n\ndef _high_depth',
           "cmyk or palette_without or exif_orientation_png or rgb_exact or ycbcr"),
    Mutant("quantized-through-palette", "sdlite/data/images.py", '    return image.convert("RGB")\n\n\ndef _high_depth',
           '    return image.convert("P").convert("RGB")\n\n\ndef _high_depth', "gray_and_bilevel or rgb_exact"),
    Mutant("gray-taken-for-high-depth", "sdlite/data/images.py", 'if image.mode in ("I", "F") or image.mode.startswith("I;16"):',
           'if image.mode in ("I", "F", "L") or image.mode.startswith("I;16"):', "gray_and_bilevel"),
    Mutant("torch-zip-not-recognised", "sdlite/models/loading.py", "(zipfile.is_zipfile(path) and _zip_holds_pickle(path))",
           "False", "torch_zip"),
    Mutant("header-length-unbounded", "sdlite/models/loading.py", "if 2 <= header_len <= min(_MAX_HEADER, size - 8):",
           "if 2 <= header_len:", "damaged"),
    Mutant("ctrl-c-only-between-batches", "sdlite/sampling/interrupt.py", "        self.stop.check()\n        latents = kwargs",
           "        latents = kwargs", "ctrl_c_while_sampling"),
    Mutant("ctrl-c-waits-for-long-operations", "sdlite/sampling/interrupt.py",
           "wakeup = self._watch() if installed and self.grace is not None else None", "wakeup = None",
           "long_operation"),
    Mutant("inpaint-original-not-kept", "sdlite/sampling/run.py", "                image = runner.image_processor.apply_overlay(",
           "                image = image or runner.image_processor.apply_overlay(", "inpainting", "tests/sampling/test_img2img.py"),
    Mutant("changed-init-image-replayed", "sdlite/sampling/sources.py", "        if digest == expected:", "        if True:",
           "from_image_replays", "tests/sampling/test_img2img.py"),
    Mutant("progress-changes-pixels", "sdlite/sampling/previews.py", "            self.frames.append((int(timestep), x0.detach().clone()))",
           "            self.frames.append((int(timestep), x0.detach().clone()))\n            output.prev_sample.mul_(1.001)",
           "save_progress", "tests/sampling/test_img2img.py"),
    Mutant("strength-ignored", "sdlite/sampling/run.py", "extra.update(image=[given.image] * len(seeds), strength=gen.strength)",
           "extra.update(image=[given.image] * len(seeds), strength=1.0)", "img2img_pixels or strength", "tests/sampling/test_img2img.py"),
    Mutant("draws-keyed-by-micro-batch", "sdlite/training/steps.py",
           "manual_seed(mix(seed, self.step, p, *salt)) for p in self.positions]",
           "manual_seed(mix(seed, self.step, p - self.positions[0], *salt)) for p in self.positions]",
           "same_global_batch"),
    Mutant("epoch-order-per-micro-batch", "sdlite/training/steps.py", "        batch = layout.order.batch(step, config.seed)",
           "        batch = layout.order.batch(step * config.grad_accum + micro, config.seed)", "same_global_batch"),
    Mutant("buckets-ignored-by-cache", "sdlite/training/encoding_cache.py", "pixels = preprocess(image, size,",
           "pixels = preprocess(image, (size[0], size[0]),", "non_square_latents"),
    Mutant("sdxl-told-no-crop", "sdlite/training/encoding_cache.py",
           'numbers = crop_of(image.size, size, "center", False, 0).micro_conditioning()',
           "numbers = (*image.size[::-1], 0, 0, *size[::-1])", "original_size_and_crop"),
    Mutant("second-text-adapter-unsaved", "sdlite/training/unet.py",
           "[(f\"{name}_adapter.safetensors\", m) for name, m in zip(family.text_encoders, text_encoders, strict=True)]",
           "[(f\"{name}_adapter.safetensors\", m) for name, m in zip(family.text_encoders[:1], text_encoders, strict=False)]",
           "both_text_encoders_resumes"),
    Mutant("small-buckets-dropped", "sdlite/data/buckets.py", "        if not small or len(counts) == 1:",
           "        if True:", "merged", "tests/data/test_buckets.py"),
    Mutant("prior-loss-dropped", "sdlite/training/unet.py", "loss = loss + run.config.prior_loss_weight * _denoising_loss(run, class_inputs)",
           "loss = loss + 0 * _denoising_loss(run, class_inputs)", "dreambooth", "tests/training/test_data_sources.py"),
    Mutant("moments-reloaded-contiguous", "sdlite/training/checkpoints.py", "optimizer.state[param][key] = _like(param, value)",
           "pass", "channels_last_resumes_exactly", "tests/training/test_levers.py"),
    Mutant("file-facts-outlive-edits", "sdlite/filecache.py", 'return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"',
           'return f"{path}"', "unchanged or file_changed or decodes_nothing", "tests/test_filecache.py"),
    Mutant("compiled-wrapper-saved", "sdlite/training/unet.py", "keep_torch_compile=False", "keep_torch_compile=True",
           "plain_keys", "tests/training/test_data_sources.py"),
    Mutant("vae-step-outside-ddp", "sdlite/training/vae.py", "recon, kl = model_step(pixels,",
           "recon, kl = accelerator.unwrap_model(model_step)(pixels,", "train_the_vae"),
    Mutant("gpu-tensors-pinned", "sdlite/training/unet.py", 'if tensor.device.type == "cpu" and torch.device(device).type == "cuda":',
           'if torch.device(device).type == "cuda":', "pinned", "tests/training/test_levers.py"),
    Mutant("first-process-always-blamed", "sdlite/launch.py", "    rank = failed[0]  # the first process", "    rank = 0  # the first process",
           "first_failure", "tests/test_launch.py"),
    Mutant("moved-image-reuses-a-planned-index", "sdlite/sampling/resume.py",
           "        numbering.after(first + batches[-1].first_number + len(batches[-1].seeds) - 1)", "        pass",
           "moved_by", "tests/sampling/test_resume.py"),
    Mutant("resume-ignores-precision", "sdlite/sampling/resume.py", "and run.get(\"dtype\") == facts.dtype", "",
           "made_alike", "tests/sampling/test_resume.py"),
    Mutant("help-table-dropped", "sdlite/cli/app.py", "for code, text in EXIT_CODES.items())", "for code, text in [])", "table"),
]  # fmt: skip


def collected() -> set[str]:
    listing = subprocess.run([sys.executable, "-m", "pytest", SUITE, "--collect-only", "-q"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {line for line in listing.splitlines() if "::" in line}


def run_mutant(mutant: Mutant, work: Path) -> set[str]:
    """The test ids that failed against this mutant."""
    tree = work / mutant.name
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", "build", "__pycache__", "*.egg-info"))
    source = tree / mutant.file
    text = source.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: the text to break occurs {text.count(mutant.old)} times in {mutant.file}")
    source.write_text(text.replace(mutant.old, mutant.new))
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}  # two mutants at a time, one thread each
    result = subprocess.run([sys.executable, "-m", "pytest", mutant.suite, "-q", "-rf", "-p", "no:cacheprovider", "-k",
                             mutant.tests], cwd=tree, env=env, capture_output=True, text=True)  # fmt: skip
    shutil.rmtree(tree, ignore_errors=True)
    return set(re.findall(r"^FAILED (\S+)", result.stdout, flags=re.MULTILINE)) | set(
        re.findall(r"^ERROR (\S+)", result.stdout, flags=re.MULTILINE)
    )


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    for mutant in chosen:  # every edit must still apply before minutes are spent on any of them
        found = (ROOT / mutant.file).read_text().count(mutant.old)
        if found != 1:
            raise SystemExit(f"{mutant.name}: the text to break occurs {found} times in {mutant.file}")
    everything, caught, missed = collected(), set(), []
    with tempfile.TemporaryDirectory(prefix="sdlite-mutants-") as work, ThreadPoolExecutor(JOBS) as pool:
        runs = pool.map(lambda m: (m, run_mutant(m, Path(work))), chosen)  # reported in order, as each finishes
        for mutant, failed in runs:
            caught |= failed
            verdict = f"caught by {len(failed)} test(s)" if failed else "MISSED"
            if not failed:
                missed.append(mutant.name)
            print(f"{mutant.name:36} {verdict}", flush=True)
            for test in sorted(failed):
                print(f"    {test}", flush=True)
    never = sorted(everything - caught)
    print(f"\n{len(chosen) - len(missed)}/{len(chosen)} mutants caught; "
          f"{len(everything) - len(never)}/{len(everything)} suite tests seen failing")  # fmt: skip
    for test in never:
        print(f"    never failed: {test}")
    return 1 if missed or (never and not names) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
