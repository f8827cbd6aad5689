"""A job with LoRA adapters rendered by render_job: adapters fetched from storage, applied, reported."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from safetensors.torch import save

from engine.lora.synthetic import random_adapter
from jobs.crud import create_job
from jobs.db import session_scope
from jobs.keys import create_key
from jobs.loras import Recommended, create_lora, delete_lora
from jobs.models import Job
from jobs.settings import Settings
from jobs.validation import JobRequest, LoraChoice
from spec.lora_keys import DIT_SHAPES
from worker.context import WorkerContext, build_context
from worker.render import RenderOutcome, render_job


@pytest.fixture(scope="module")
def ctx(database_url: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    settings = Settings(
        database_url=database_url, models_dir=models_dir, data_dir=tmp_path_factory.mktemp("data"), device="cpu"
    )
    return build_context(settings)


def upload(ctx: WorkerContext, owner, fmt: str, **recommended) -> str:  # type: ignore[no-untyped-def]
    data = save(random_adapter(DIT_SHAPES["tiny-wan"], 4, fmt, seed=11))
    with session_scope(ctx.session_factory) as session:
        lora = create_lora(
            session=session,
            owner=session.merge(owner),
            storage=ctx.storage,
            name=f"{fmt} adapter",
            model="tiny-wan",
            file=io.BytesIO(data),
            size_bytes=len(data),
            max_bytes=2**30,
            recommended=Recommended(**recommended),
        )
        return lora.id


def test_a_job_with_adapters_renders_with_their_recommended_settings(ctx: WorkerContext) -> None:
    with session_scope(ctx.session_factory) as session:
        owner = create_key(session=session, name="lora-render").record
        session.expunge(owner)
    distill = upload(ctx, owner, "distill", num_inference_steps=2, guidance_scale=1.0, flow_shift=5.0)
    with session_scope(ctx.session_factory) as session:
        job, _ = create_job(
            session=session,
            owner=session.merge(owner),
            request=JobRequest(prompt="a cat", model="tiny-wan", num_frames=5, loras=(LoraChoice(distill, 0.9),)),
        )
        job_id = job.id
        assert (job.num_inference_steps, job.guidance_scale, job.flow_shift) == (2, 1.0, 5.0)

    assert render_job(job_id, ctx=ctx) is RenderOutcome.COMPLETED
    with session_scope(ctx.session_factory) as session:
        job = session.get(Job, job_id)
        assert job.status == "completed" and "lora" in job.stage_timings
        assert job.loras == [{"id": distill, "name": "distill adapter", "scale": 0.9}]
    assert ctx.engines.warm_adapters() == [distill]  # what the worker publishes for the dispatcher


def test_a_job_whose_adapter_was_deleted_fails_with_a_clear_code(ctx: WorkerContext) -> None:
    with session_scope(ctx.session_factory) as session:
        owner = create_key(session=session, name="lora-gone").record
        session.expunge(owner)
    style = upload(ctx, owner, "diffusers")
    with session_scope(ctx.session_factory) as session:
        job, _ = create_job(
            session=session,
            owner=session.merge(owner),
            request=JobRequest(
                prompt="a cat", model="tiny-wan", num_frames=5, num_inference_steps=1, loras=(LoraChoice(style),)
            ),
        )
        job_id = job.id
        delete_lora(session=session, owner=session.merge(owner), lora_id=style, storage=ctx.storage)
    assert render_job(job_id, ctx=ctx) is RenderOutcome.FAILED
    with session_scope(ctx.session_factory) as session:
        assert session.get(Job, job_id).error_code == "lora_unavailable"


def test_a_two_expert_job_puts_each_file_of_a_pair_into_its_expert(ctx: WorkerContext) -> None:
    model = "tiny-wan2.2-t2v-a14b"
    with session_scope(ctx.session_factory) as session:
        owner = session.merge(create_key(session=session, name="lora-pair").record)
        ids = []
        for seed in (21, 22):
            data = save(random_adapter(DIT_SHAPES[model], 4, "diffusers", seed=seed))
            lora = create_lora(
                session=session,
                owner=owner,
                storage=ctx.storage,
                name=f"pair {seed}",
                model=model,
                file=io.BytesIO(data),
                size_bytes=len(data),
                max_bytes=2**30,
                recommended=Recommended(),
            )
            ids.append(lora.id)
        high, low = ids
        request = JobRequest(
            prompt="a cat",
            model=model,
            num_frames=5,
            num_inference_steps=2,
            loras=(LoraChoice(high, 1.0, id_2=low, scale_2=0.5),),
        )
        job_id = create_job(session=session, owner=owner, request=request)[0].id

    assert render_job(job_id, ctx=ctx) is RenderOutcome.COMPLETED
    engine = ctx.engines.get(model)
    assert [applier.active for applier in engine.loras] == [((high, 1.0),), ((low, 0.5),)]
    assert set(ctx.engines.warm_adapters()) >= {high, low}
