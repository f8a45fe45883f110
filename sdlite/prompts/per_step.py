"""A batch's text conditioning at each denoising step, with A1111's prompt syntax (`--prompt-syntax a1111`).

Each prompt's prompt-editing schedule is encoded once, its variants together (A1111 rescales emphasis over them);
at step i (counted from 0 over the steps that run) an image reads the first variant whose last step is >= i, as
A1111's `reconstruct_cond_batch` picks it. Prompts of different lengths in one batch are evened with their last
vector (A1111's `stack_conds`); positive and negative with the empty prompt's chunk (A1111's `pad_cond_uncond`),
except that a negative SDXL zeroes (an empty one) is evened with zeros, which attention cannot tell from none.
The pipeline gets the tensors of step 0; a step-end callback swaps in the next step's when they change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sdlite.prompts.conditioning import Conditioning, Encoder, empty, encode, pad_with, stack
from sdlite.prompts.editing import schedule


class PromptSchedule:
    """One prompt's variants (with SDXL's second prompt, if any) and the last step each is read at."""

    def __init__(
        self, encoders: Sequence[Encoder], text: str, text_2: str | None, steps: int, first_pass: int | None = None
    ) -> None:
        plain = encoders[0].plain  # the text as it is: no prompt editing either
        first = [(steps, text)] if plain else schedule(text, steps, first_pass)
        second = None if text_2 is None else [(steps, text_2)] if plain else schedule(text_2, steps, first_pass)
        self.ends = sorted({end for end, _ in first} | {end for end, _ in second or []})
        texts = [_text_at(first, end) for end in self.ends]
        texts_2 = [_text_at(second, end) for end in self.ends] if second is not None else None
        self.texts, self.texts_2 = texts, texts_2
        self.cond = encode(encoders, texts, texts_2)

    def index(self, step: int) -> int:
        return next((i for i, end in enumerate(self.ends) if step <= end), len(self.ends) - 1)


def _text_at(pairs: list[tuple[int, str]], step: int) -> str:
    return next(text for end, text in pairs if step <= end)


class BatchConditioning:
    """What a batch's pipeline call reads at each step: `arguments()` for the call, `swap` as its step-end callback."""

    def __init__(
        self,
        encoders: Sequence[Encoder],
        prompts: Sequence[tuple[str, str | None]],
        negatives: Sequence[tuple[str, str | None]],
        steps: int,
        zero_empty_negative: bool,
        first_pass: int | None = None,
    ) -> None:
        """`first_pass`: for a hires fix's second pass, the first pass's steps (A1111 schedules prompt editing over
        both passes)."""
        self.encoders, self.sdxl = encoders, any(enc.pooled for enc in encoders)
        cache: dict[tuple[str, str | None], PromptSchedule] = {}

        def scheduled(text: str, text_2: str | None) -> PromptSchedule:
            if (text, text_2) not in cache:
                cache[(text, text_2)] = PromptSchedule(encoders, text, text_2, steps, first_pass)
            return cache[(text, text_2)]

        self.positive = [scheduled(*p) for p in prompts]
        self.zero_negative = zero_empty_negative and all(not n and not n2 for n, n2 in negatives)
        self.negative = [] if self.zero_negative else [scheduled(*n) for n in negatives]
        self._empty: Conditioning | None = None  # the empty prompt's, encoded when first needed
        self._made: dict[tuple[int, ...], tuple[Conditioning, Conditioning]] = {}

    @property
    def empty(self) -> Conditioning:
        """The empty prompt's conditioning: what the shorter of prompt and negative prompt is evened with."""
        if self._empty is None:
            import torch

            with torch.no_grad():
                self._empty = empty(self.encoders)
        return self._empty

    @property
    def changes(self) -> bool:
        """Whether any prompt's conditioning changes during sampling (prompt editing or alternation)."""
        return any(len(s.ends) > 1 for s in self.positive + self.negative)

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        """(positive, negative) at step `step` (from 0), evened to one length."""
        import torch

        key = tuple(s.index(step) for s in self.positive + self.negative)
        if key not in self._made:
            positive = stack([s.cond[i : i + 1] for s, i in zip(self.positive, key, strict=False)])
            if self.zero_negative:
                pooled = None if positive.pooled is None else torch.zeros_like(positive.pooled)
                negative = Conditioning(torch.zeros_like(positive.states), pooled)
            else:
                picks = key[len(self.positive) :]
                negative = stack([s.cond[i : i + 1] for s, i in zip(self.negative, picks, strict=True)])
                if positive.length != negative.length:
                    length = max(positive.length, negative.length)
                    positive, negative = pad_with(positive, self.empty, length), pad_with(negative, self.empty, length)
            self._made[key] = (positive, negative)
        return self._made[key]

    def arguments(self) -> dict[str, Any]:
        """The pipeline call's conditioning arguments (step 0's)."""
        positive, negative = self.at(0)
        arguments = {"prompt_embeds": positive.states, "negative_prompt_embeds": negative.states}
        if self.sdxl:
            arguments |= {"pooled_prompt_embeds": positive.pooled, "negative_pooled_prompt_embeds": negative.pooled}
        return arguments

    def tensor_inputs(self) -> list[str]:
        """What the step-end callback replaces."""
        return ["prompt_embeds", "add_text_embeds"] if self.sdxl else ["prompt_embeds"]

    def swapping(self, then: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        """A step-end callback: `then` (progress, Ctrl-C), and the next step's conditioning where it changes."""
        import torch

        def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            kwargs = then(pipe, step, timestep, kwargs)
            if self.at(step + 1) is self.at(step):
                return kwargs
            positive, negative = self.at(step + 1)
            current = kwargs["prompt_embeds"]
            guided = pipe.do_classifier_free_guidance
            states = torch.cat([negative.states, positive.states]) if guided else positive.states
            kwargs["prompt_embeds"] = states.to(current)
            if self.sdxl:
                pooled = torch.cat([negative.pooled, positive.pooled]) if guided else positive.pooled
                kwargs["add_text_embeds"] = pooled.to(kwargs["add_text_embeds"])
            return kwargs

        return callback
