"""What --masked-loss leaves unlearned, measured: the same training images with masks that keep only their right
half, trained with and without the masks, then each model's denoising error on the left and right halves of those
images (fixed noise and timesteps, the base model's error as the reference).

    python benchmarks/masked_loss_effect.py [--steps 300] [--images 16]

A model trained with the masks should improve on the right halves like the unmasked run, and stay near the base
model on the left halves. Prints the mean squared error per half for base, unmasked and masked. CPU here.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def half_errors(model: Path, data: Path, seed: int = 0) -> tuple[float, float]:
    """Mean squared noise-prediction error on the left and right latent halves of every image in `data`."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from sdlite.data.images import load_image, preprocess

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    left = right = 0.0
    images = sorted(p for p in data.glob("*.png") if not p.stem.endswith("_mask"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for path in images:
            caption = path.with_suffix(".txt").read_text().strip() if path.with_suffix(".txt").exists() else ""
            pixels = preprocess(load_image(path), 64, "center", False, 0)[None]
            latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer([caption], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids  # fmt: skip
            text = pipe.text_encoder(ids)[0]
            for timestep in (100, 300, 500, 700, 900):
                noise = torch.randn(latents.shape, generator=generator)
                t = torch.tensor([timestep])
                noisy = scheduler.add_noise(latents, noise, t)
                error = (pipe.unet(noisy, t, encoder_hidden_states=text).sample - noise) ** 2
                half = error.shape[-1] // 2
                left += float(error[..., :half].mean())
                right += float(error[..., half:].mean())
    count = len(images) * 5
    return left / count, right / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()

    from PIL import Image

    from sdlite.testing import make_shapes_dataset, make_tiny_model
    from sdlite.training.config import TrainConfig
    from sdlite.training.unet import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "model")
        data = make_shapes_dataset(root / "data", n=args.images)
        for image in data.glob("*.png"):
            with Image.open(image) as opened:
                width, height = opened.size
            mask = Image.new("L", (width, height), 255)
            mask.paste(0, (0, 0, width // 2, height))  # the left half is masked out
            mask.save(image.with_name(f"{image.stem}_mask.png"))
        common = {"model": str(model), "data": data, "max_steps": args.steps, "batch_size": 4, "lr": 1e-3}
        train(TrainConfig(out=root / "plain", **common))
        train(TrainConfig(out=root / "masked", masked_loss=True, **common))
        print(f"{'model':<10} {'left (masked out)':>18} {'right (kept)':>14}")
        for name, folder in (("base", model), ("unmasked", root / "plain"), ("masked", root / "masked")):
            left, right = half_errors(folder, data)
            print(f"{name:<10} {left:>18.5f} {right:>14.5f}")


if __name__ == "__main__":
    main()
