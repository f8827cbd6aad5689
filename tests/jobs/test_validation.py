import pytest

from jobs.errors import InvalidParameter
from jobs.validation import MAX_SEED, JobRequest, resolve_job_params


def request(**fields: object) -> JobRequest:
    base: dict[str, object] = {"prompt": "a cat", "model": "tiny-wan"}
    base.update(fields)
    return JobRequest(**base)  # type: ignore[arg-type]


def test_defaults_come_from_the_registry_and_a_seed_is_drawn() -> None:
    params = resolve_job_params(request())
    assert (params.width, params.height, params.num_frames, params.num_inference_steps) == (64, 64, 9, 4)
    assert params.queue == "gpu.wan"
    assert 0 <= params.seed <= MAX_SEED
    # two requests without a seed get (almost surely) different seeds, each recorded
    assert len({resolve_job_params(request()).seed for _ in range(20)}) > 1


def test_given_values_are_kept() -> None:
    params = resolve_job_params(
        request(size="96x64", num_frames=17, num_inference_steps=7, guidance_scale=3.5, seed=42, fps=12)
    )
    assert (params.width, params.height, params.num_frames) == (96, 64, 17)
    assert (params.num_inference_steps, params.guidance_scale, params.seed, params.fps) == (7, 3.5, 42, 12)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "sora-9"}, "model"),
        ({"size": "1920x1080"}, "size"),
        ({"size": "big"}, "size"),
        ({"num_frames": 10}, "num_frames"),  # not 4k+1
        ({"num_frames": 1}, "num_frames"),  # below range
        ({"num_frames": 101}, "num_frames"),  # 4k+1 but above range
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 201}, "num_inference_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": 50.0}, "guidance_scale"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"negative_prompt": "x" * 5000}, "negative_prompt"),
        ({"seed": -1}, "seed"),
        ({"fps": 0}, "fps"),
        ({"num_gpus": 3}, "num_gpus"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParameter) as excinfo:
        resolve_job_params(request(**fields))
    assert excinfo.value.param == param


def test_jobs_route_to_the_queue_of_their_gpu_group_size() -> None:
    assert resolve_job_params(request()).queue == "gpu.wan"
    two = resolve_job_params(request(num_gpus=2))
    assert (two.queue, two.num_gpus) == ("gpu.wan.x2", 2)


def test_a_one_gpu_model_refuses_a_multi_gpu_job_instead_of_queueing_it_forever() -> None:
    assert resolve_job_params(request(model="tiny-ltx-video", num_frames=9)).queue == "gpu.ltx"
    with pytest.raises(InvalidParameter) as excinfo:
        resolve_job_params(request(model="tiny-ltx-video", num_frames=9, num_gpus=2))
    assert excinfo.value.param == "num_gpus"
    assert "at most 1 GPU" in excinfo.value.message
