"""Step caching as a hook around the DiT's block stack: on steps where the blocks' input barely
changed since the last computed step, reuse that step's residual instead of running the blocks.

`StepCache.attached(model)` replaces `model.run_blocks` on the instance for one request and puts
it back afterwards; the model's code has no branch for it. The denoising loop calls
`begin_step(i)` before each step's transformer call. Three methods decide when to skip:

- TeaCache (Liu et al. 2024): the relative L1 change of the timestep projection (`timestep_proj`,
  what modulates every block's input), rescaled by a per-model polynomial, accumulated since the
  last computed step; skip while the sum stays under the threshold. Skipped: all blocks.
- MagCache (Ma et al. 2025): the calibrated ratio of residual magnitudes between consecutive steps
  (`calibration.MAGCACHE_RATIOS`), multiplied up since the last computed step; the accumulated
  |1 - ratio| is the error estimate. Needs no tensor from the run (no host sync). Skipped: all blocks.
- First-block cache (Cache-DiT / diffusers' FirstBlockCache): the first block always runs; when its
  residual changed less than the threshold (relative L1) from the last computed step's, the other
  blocks are skipped and their cached residual is added.

Rules around every method: steps before `warmup_steps` and the last `final_steps` are computed,
a skip run never exceeds `max_consecutive_skips`, threshold 0 never skips (so it reproduces the
uncached output exactly), and a forced `skip_steps` schedule replaces all of it.

Two experts (Wan2.2 A14B): one cache is attached to both transformers, and the loop calls
`start_segment(i)` when the other expert takes over at step i. Everything cached is dropped there
(the residual, the last indicator, the method's accumulated change): a residual of the high-noise
expert added to a step of the low-noise one would be another model's output, and a change measured
across the switch compares two models' projections. The new expert's first `warmup_steps` are then
computed, like the run's first ones, and a forced `skip_steps` schedule cannot skip its first step
(there is nothing of its own to reuse yet). The report records, for every skipped step, the step
whose residual it reused (`reused_from`), which is how the tests see that nothing crosses.

Batched CFG: cond and uncond are one batch, so one decision covers both and each keeps its own
cached residual (rows of one tensor). CFG parallel and sequence parallel: the statistics are summed
over every rank of the job and the decision is reduced again (skip only if every rank would), so
all ranks always skip the same steps: a rank that skipped while another computed would deadlock
in the next collective. Layer-wise offload: skipped blocks never run their hooks, so their
weights are not streamed. Compiled blocks: only `block.forward` is compiled; this hook is eager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from engine.acceleration.calibration import StepCacheCalibration, magcache_schedule
from engine.models.wan_transformer import WanTransformer3DModel
from engine.parallel.attention import current_shard
from spec.acceleration import AccelerationError, AccelerationOptions

RunBlocks = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


def _job_group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _valid_rows(t: torch.Tensor) -> torch.Tensor:
    """t [B, S_local, ...] without the zero padding a sequence-parallel rank's shard may end with."""
    shard = current_shard()
    if shard is None or t.dim() < 2:
        return t
    start = shard.state.sequence_rank * shard.local_len
    return t[:, : max(0, min(shard.local_len, shard.valid_len - start))]


def _relative_l1(current: torch.Tensor, previous: torch.Tensor, *, per_token: bool) -> float:
    """sum|current - previous| / sum|previous| over this rank's part, summed over every rank of
    the job (float64, so every rank holds the same value): the single-process value. `per_token`:
    the tensors are [B, S_local, C] activations, whose shard padding is left out."""
    if per_token:
        current, previous = _valid_rows(current), _valid_rows(previous)
    sums = torch.stack([(current.float() - previous.float()).abs().sum(), previous.float().abs().sum()]).double()
    if _job_group_size() > 1:
        dist.all_reduce(sums)
    difference, reference = sums.tolist()
    return difference / max(reference, 1e-30)


def _all_ranks_agree(skip: bool, device: torch.device) -> bool:
    """True only when every rank of the job proposes to skip (`device`: where the backend reduces)."""
    if _job_group_size() == 1:
        return skip
    flag = torch.tensor([1 if skip else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class _TeaCachePolicy:
    def __init__(self, threshold: float, coefficients: tuple[float, ...] | None) -> None:
        self.threshold = threshold
        self.coefficients = coefficients
        self.accumulated = 0.0

    def rescale(self, change: float) -> float:
        if self.coefficients is None:  # uncalibrated model: the raw relative change
            return change
        value = 0.0
        for coefficient in self.coefficients:  # Horner, highest power first (numpy.poly1d order)
            value = value * change + coefficient
        return value

    def propose(self, change: float) -> bool:
        return self.accumulated + self.rescale(change) < self.threshold

    def update(self, change: float | None, skipped: bool) -> None:
        self.accumulated = self.accumulated + self.rescale(change) if skipped and change is not None else 0.0


class _MagCachePolicy:
    def __init__(self, threshold: float, schedule: list[float]) -> None:
        self.threshold = threshold
        self.schedule = schedule
        self._reset()

    def _reset(self) -> None:
        self.ratio, self.error = 1.0, 0.0

    def _next(self, step: int) -> tuple[float, float]:
        ratio = self.ratio * self.schedule[step]
        return ratio, self.error + abs(1.0 - ratio)

    def propose(self, step: int) -> bool:
        return self._next(step)[1] < self.threshold

    def update(self, step: int, skipped: bool) -> None:
        if skipped:
            self.ratio, self.error = self._next(step)
        else:
            self._reset()


@dataclass
class StepCacheReport:
    """What a run did: 0-based indices of the computed and skipped steps; for each skipped step, the
    computed step whose residual it reused; the steps where a new expert started (cache reset)."""

    computed_steps: list[int] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    reused_from: dict[int, int] = field(default_factory=dict)
    segment_starts: list[int] = field(default_factory=list)


class StepCache:
    """One request's step cache over one transformer (see the module docstring).

    `num_steps` is the request's step count; `calibration` holds the model's published numbers.
    Raises `AccelerationError` at construction when the method needs a calibration the model lacks.
    """

    def __init__(self, options: AccelerationOptions, calibration: StepCacheCalibration, num_steps: int) -> None:
        if options.cache is None:
            raise ValueError("StepCache needs a cache method")
        self.options = options
        self.num_steps = num_steps
        self.method = options.cache
        self.report = StepCacheReport()
        self._step = -1
        self._called_in_step = False
        self._segment_start = 0  # the step the current expert started at (0 with one expert)
        self._consecutive_skips = 0
        self._residual: torch.Tensor | None = None  # float32, what the skipped blocks add
        self._residual_step = -1  # the computed step `_residual` comes from
        self._previous: torch.Tensor | None = (
            None  # the indicator at the last step (teacache) or computed step (fbcache)
        )
        self._teacache: _TeaCachePolicy | None = None
        self._magcache: _MagCachePolicy | None = None
        self._calibration = calibration
        if self.method == "magcache" and calibration.magcache_ratios is None and options.skip_steps is None:
            raise AccelerationError("acceleration.cache", "magcache needs a calibrated schedule for this model")
        self._reset_policies()

    def _reset_policies(self) -> None:
        options, calibration = self.options, self._calibration
        if self.method == "teacache":
            self._teacache = _TeaCachePolicy(options.threshold, calibration.teacache_coefficients)
        elif self.method == "magcache":
            ratios = calibration.magcache_ratios or (1.0,)
            self._magcache = _MagCachePolicy(options.threshold, magcache_schedule(ratios, self.num_steps))

    # -- the denoising loop's side ---------------------------------------------------------------

    def begin_step(self, index: int) -> None:
        """Called before step `index`'s transformer call (once per step, on every rank)."""
        self._step = index
        self._called_in_step = False

    def start_segment(self, index: int) -> None:
        """Another transformer (the next expert) runs from step `index` on: drop everything cached
        from the last one and warm up again (see the module docstring). Same on every rank."""
        self._segment_start = index
        self._consecutive_skips = 0
        self._residual = self._previous = None
        self._residual_step = -1
        self._reset_policies()
        self.report.segment_starts.append(index)

    @contextlib.contextmanager
    def attached(self, *models: WanTransformer3DModel) -> Iterator[StepCache]:
        """Wrap each model's `run_blocks` for the duration of the block (one request); two-expert
        models pass both experts (the loop's `start_segment` keeps their states apart)."""
        if any("run_blocks" in vars(model) for model in models):
            raise RuntimeError("a step cache is already attached to this model")
        try:
            for model in models:
                original: RunBlocks = model.run_blocks
                blocks = model.blocks

                def run_blocks(x, context, timestep_proj, rope, original=original, blocks=blocks):  # type: ignore[no-untyped-def]
                    return self._run(original, blocks, x, context, timestep_proj, rope)

                model.run_blocks = run_blocks  # type: ignore[method-assign]
            yield self
        finally:
            for model in models:
                vars(model).pop("run_blocks", None)
            self._residual = self._previous = None  # free the cached activations with the request

    def simulate(self, indicators: list[torch.Tensor | None], segment_starts: Collection[int] = ()) -> list[int]:
        """The steps this cache would skip, decided without running a block: TeaCache and MagCache
        decide from what is known before the run (each step's timestep projection, or the
        calibrated schedule), so a benchmark can find the threshold that meets a skip budget.
        `indicators[i]` is step i's `timestep_proj` (TeaCache) or None (MagCache);
        `segment_starts`: the steps where a second expert takes over."""
        if self.method == "fbcache":
            raise ValueError("the first-block cache decides from the run's activations; it cannot be simulated")
        placeholder = torch.zeros(())
        for step, indicator in enumerate(indicators):
            if step in segment_starts:
                self.start_segment(step)
            skip = self._decide(step, indicator, placeholder.device)
            if not skip:
                self._residual, self._residual_step = placeholder, step  # "something is cached"
            if indicator is not None:
                self._previous = indicator
            self._record(step, skip)
        return list(self.report.skipped_steps)

    # -- deciding ---------------------------------------------------------------------------------

    def _forced_compute(self, step: int) -> bool:
        """The rules every method obeys, before its own test."""
        options = self.options
        return (
            self._residual is None
            or options.threshold <= 0
            or step < self._segment_start + options.warmup_steps
            or step >= self.num_steps - options.final_steps
            or self._consecutive_skips >= options.max_consecutive_skips
        )

    def _decide(self, step: int, indicator: torch.Tensor | None, device: torch.device) -> bool:
        """Whether to skip this step; updates the method's state with the job-wide decision.

        MagCache's proposal depends only on the step and the options, the same on every rank, so
        it is not reduced (and needs no host sync); the measured methods are."""
        if self.options.skip_steps is not None:
            return step in self.options.skip_steps and self._residual is not None
        change: float | None = None
        if self.method in ("teacache", "fbcache") and indicator is not None and self._previous is not None:
            change = _relative_l1(
                indicator, self._previous, per_token=self.method == "fbcache"
            )  # collective: every rank, every step
        propose = not self._forced_compute(step)
        if propose:
            if self.method == "teacache":
                assert self._teacache is not None
                propose = change is not None and self._teacache.propose(change)
            elif self.method == "magcache":
                assert self._magcache is not None
                propose = self._magcache.propose(step)
            else:
                propose = change is not None and change < self.options.threshold
        skip = propose if self.method == "magcache" else _all_ranks_agree(propose, device)
        if self._teacache is not None:
            self._teacache.update(change, skip)
        if self._magcache is not None:
            self._magcache.update(step, skip)
        return skip

    # -- running ----------------------------------------------------------------------------------

    def _run(self, original: RunBlocks, blocks, x, context, timestep_proj, rope):  # type: ignore[no-untyped-def]
        step = self._step
        if step < 0 or self._called_in_step:
            raise RuntimeError("StepCache: begin_step(i) must precede each step's single transformer call")
        self._called_in_step = True
        if self.method == "fbcache":
            first = blocks[0](x, context, timestep_proj, rope)  # [B, S, C]
            head_residual = first.float() - x.float()
            skip = self._decide(step, head_residual, x.device)
            if skip:
                out = (first.float() + self._residual).type_as(first)
            else:
                out = first
                for block in list(blocks)[1:]:
                    out = block(out, context, timestep_proj, rope)
                self._residual, self._residual_step = out.float() - first.float(), step
                self._previous = head_residual
        else:
            indicator = timestep_proj if self.method == "teacache" else None
            skip = self._decide(step, indicator, x.device)
            if skip:
                out = (x.float() + self._residual).type_as(x)
            else:
                out = original(x, context, timestep_proj, rope)
                self._residual, self._residual_step = out.float() - x.float(), step
            if indicator is not None:
                self._previous = indicator.detach().clone()
        self._record(step, skip)
        return out

    def _record(self, step: int, skip: bool) -> None:
        if skip:
            self._consecutive_skips += 1
            self.report.skipped_steps.append(step)
            self.report.reused_from[step] = self._residual_step
        else:
            self._consecutive_skips = 0
            self.report.computed_steps.append(step)
