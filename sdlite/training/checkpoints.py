"""Training checkpoints: written atomically, pickle-free, verified by a manifest before resuming.

A checkpoint folder is a usable model (a diffusers folder, or a LoRA adapter file) plus
`training/` (optimizer, LR schedule, EMA, step) and `sdlite-checkpoint.json`, a manifest with the
sha256 of every file. Everything is safetensors or JSON, so resuming never unpickles anything; the
manifest still refuses folders sdlite did not write, or that changed since.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from sdlite.errors import ModelError, UsageError
from sdlite.filecache import sha256_uncached
from sdlite.models.loading import file_format
from sdlite.staging import share

MANIFEST = "sdlite-checkpoint.json"
FORMAT = 1
SAFE_TEXT = (".json", ".txt")
# Settings manifests began to record later, with the value the runs before had (one process, as most did):
# their checkpoints still resume.
RECORDED_LATER = {"num_processes": 1}
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step-{step:06d}"


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where the filesystem allows (frozen weights cost no space)."""

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=link)


def write_manifest(folder: Path, step: int, fingerprint: dict[str, Any]) -> None:
    """Record what this checkpoint is and the sha256 of every file in it."""
    files = {
        str(p.relative_to(folder)): sha256_uncached(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": FORMAT, "writer": "sdlite", "step": step, "fingerprint": fingerprint, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def commit(staging: Path, final: Path) -> Path:
    """Move a fully written staging folder into place. Every step is a rename, so a crash leaves
    either the old folder or the new one under the final name, never a half-deleted or half-written one."""
    share(staging)  # the umask's modes (safetensors writes its files 0600)
    trash = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    try:
        os.replace(staging, final)
    except OSError:
        if trash.exists():
            os.replace(trash, final)  # keep the old checkpoint rather than none
        raise
    shutil.rmtree(trash, ignore_errors=True)
    return final


def clean_staging(out: Path) -> list[Path]:
    """Remove what a killed run left behind: half-written `.step-*` staging folders and old copies."""
    root = Path(out) / "checkpoints"
    stale = [p for p in root.glob(".step-*") if p.is_dir()] if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def replace_into(staging: Path, out: Path) -> None:
    """Move every entry of a finished staging folder into OUT, replacing entries of the same name."""
    share(staging)  # the umask's modes (safetensors writes its files 0600)
    for item in staging.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)


def prune(out: Path, keep: int | None, step: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints up to `step` (the one just written); returns them.

    Checkpoints after `step` (left by a run that went further before this one resumed from an earlier
    point) are not this run's history and are left for it to overwrite. Pruning runs only after a new
    checkpoint is complete, so the one a run resumed from is deleted only once `keep` newer ones exist.
    """
    if keep is None:
        return []
    ours = [p for p in list_checkpoints(out) if _step_of(p) <= step]
    removed = ours[:-keep]
    for folder in removed:
        trash = folder.with_name(f".{folder.name}.old")  # renamed first: a crash never leaves half a checkpoint
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return removed


def _step_of(folder: Path) -> int:
    match = _STEP_DIR.match(folder.name)
    return int(match.group(1)) if match else -1


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders under OUT (their manifest is written last), oldest first;
    staging folders, strays and folders without a manifest are ignored."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / MANIFEST).is_file()]


def find_resume(out: Path, resume: str) -> Path:
    """The folder `--resume` names: `latest` is the newest checkpoint under OUT."""
    if resume == "latest":
        found = list_checkpoints(out)
        if not found:
            raise UsageError(f"--resume latest: no checkpoints under {Path(out) / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        raise UsageError(f"--resume {resume}: no such checkpoint folder")
    return path


def verify(folder: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Check the manifest (written by sdlite, files unchanged) and that the settings match; returns it."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{folder} has no {MANIFEST}: sdlite only resumes from checkpoints it wrote") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is unreadable: {exc}") from exc
    if manifest.get("writer") != "sdlite" or manifest.get("format") != FORMAT:
        raise ModelError(f"{path} was not written by this version of sdlite")
    for name, digest in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise ModelError(f"checkpoint {folder} is incomplete: {name} is missing")
        if sha256_uncached(file) != digest:
            raise ModelError(f"checkpoint {folder} was modified after sdlite wrote it: {name}")
        _check_safe(file)
    extra = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and str(p.relative_to(folder)) not in manifest["files"]
    )
    if extra:
        raise ModelError(f"checkpoint {folder} holds files sdlite did not write: {', '.join(extra[:3])}")
    recorded = {**RECORDED_LATER, **manifest["fingerprint"]}
    differing = sorted(k for k in fingerprint if recorded.get(k) != fingerprint[k])
    if differing:
        details = ", ".join(f"{k}: {recorded.get(k)!r} -> {fingerprint[k]!r}" for k in differing)
        raise UsageError(f"cannot resume {folder} with different settings ({details})")
    return manifest


def _check_safe(file: Path) -> None:
    """Resuming loads only JSON, text and real safetensors: a manifest can be forged, content cannot."""
    if file.suffix in SAFE_TEXT:
        return
    if file.suffix != ".safetensors" or file_format(file) != "safetensors":
        raise ModelError(f"checkpoint file {file} is not safetensors or JSON; sdlite never resumes from pickles")


def save_optimizer(optimizer: Any, folder: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON (hyper-parameters): no pickle."""
    import torch
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: Any, folder: Path) -> None:
    from safetensors.torch import load_file

    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*load_file(folder / "optimizer.safetensors").items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    for group in optimizer.param_groups:  # saved contiguous; a channels_last parameter needs its moments alike
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if getattr(value, "shape", None) == param.shape and value.stride() != param.stride():
                    # fused AdamW walks a parameter and its moments as flat memory: the layouts must agree
                    optimizer.state[param][key] = _like(param, value)


def save_ema(ema: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    state = ema.state_dict()
    tensors = {f"{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(state.pop("shadow_params"))}
    save_file(tensors, folder / "ema.safetensors")
    (folder / "ema.json").write_text(json.dumps(state))


def load_ema(ema: Any, folder: Path) -> None:
    from safetensors.torch import load_file

    state = json.loads((folder / "ema.json").read_text())
    tensors = load_file(folder / "ema.safetensors")
    # Each loaded tensor takes the place of the current shadow: same device, dtype and memory layout.
    state["shadow_params"] = [_like(old, tensors[k]) for old, k in zip(ema.shadow_params, sorted(tensors), strict=True)]
    ema.load_state_dict(state)


def _like(template: Any, value: Any) -> Any:
    """`value` copied into a tensor with `template`'s device, dtype and strides."""
    import torch

    return torch.empty_like(template).copy_(value)
