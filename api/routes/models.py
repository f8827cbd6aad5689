"""``/v1/models``: the models this service renders, in OpenAI's list shape, with vidq's per-model facts
(sizes, frame rule, fps, defaults, image input, GPU memory) so clients need not provoke 422s."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentKey
from api.openapi import errors
from api.schemas import ModelList, ModelPublic
from jobs.catalog import get_model, list_models

router = APIRouter(prefix="/v1/models", tags=["models"], responses=errors(401))


@router.get("", response_model=ModelList)
def list_models_route(key: CurrentKey) -> ModelList:
    return ModelList(data=[ModelPublic.from_spec(spec) for spec in list_models()])


@router.get("/{model_id}", response_model=ModelPublic, responses=errors(404))
def retrieve_model(model_id: str, key: CurrentKey) -> ModelPublic:
    return ModelPublic.from_spec(get_model(model_id))
