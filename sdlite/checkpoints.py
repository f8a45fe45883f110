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

from sdlite.errors import ModelError, ResourceError, UsageError
from sdlite.metadata import sha256_uncached

MANIFEST = "sdlite-checkpoint.json"
FORMAT = 1
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
    """Move a fully written staging folder into place (rename: atomic on one filesystem)."""
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except OSError as exc:
        raise ResourceError(f"cannot write checkpoint {final}: {exc.strerror or exc}") from exc
    return final


def replace_into(staging: Path, out: Path) -> None:
    """Move every entry of a finished staging folder into OUT, replacing entries of the same name."""
    for item in staging.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)


def prune(out: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns the removed folders."""
    if keep is None:
        return []
    removed = list_checkpoints(out)[:-keep]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def list_checkpoints(out: Path) -> list[Path]:
    """Checkpoint folders under OUT, oldest first (staging folders and strays are ignored)."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


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
    extra = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and str(p.relative_to(folder)) not in manifest["files"]
    )
    if extra:
        raise ModelError(f"checkpoint {folder} holds files sdlite did not write: {', '.join(extra[:3])}")
    differing = sorted(k for k in fingerprint if manifest["fingerprint"].get(k) != fingerprint[k])
    if differing:
        details = ", ".join(f"{k}: {manifest['fingerprint'].get(k)!r} -> {fingerprint[k]!r}" for k in differing)
        raise UsageError(f"cannot resume {folder} with different settings ({details})")
    return manifest


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
    state["shadow_params"] = [tensors[k] for k in sorted(tensors)]
    ema.load_state_dict(state)
