"""``/v1/loras``: upload, list, read and delete LoRA adapters (the domain is ``jobs.loras``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from api.deps import CurrentKey, SessionDep, SettingsDep, StorageDep
from api.openapi import errors
from api.schemas import LoraDeleted, LoraList, LoraPublic
from jobs import loras
from jobs.pages import SortOrder

router = APIRouter(prefix="/v1/loras", tags=["loras"], responses=errors(401))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=LoraPublic, responses=errors(403, 413, 422))
def upload_lora(
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    file: Annotated[UploadFile, File(description="The adapter, a .safetensors file.")],
    name: Annotated[str, Form(max_length=loras.MAX_NAME_CHARS)],
    model: Annotated[str, Form(description="The model it is for, e.g. `wan2.1-t2v-1.3b`.")],
    num_inference_steps: Annotated[int | None, Form()] = None,
    guidance_scale: Annotated[float | None, Form()] = None,
    flow_shift: Annotated[float | None, Form()] = None,
    public: Annotated[bool, Form(description="Admins only: every client may use it.")] = False,
) -> LoraPublic:
    """Multipart upload; a file that is not a LoRA for `model` (by its keys and shapes) is a 422 on `file`."""
    recommended = loras.Recommended(num_inference_steps, guidance_scale, flow_shift)
    lora = loras.create_lora(
        session=session,
        owner=key,
        storage=storage,
        name=name,
        model=model,
        file=file.file,
        size_bytes=file.size if file.size is not None else _size(file),
        max_bytes=settings.lora_max_upload_mb * 2**20,
        recommended=recommended,
        public=public,
    )
    session.commit()
    return LoraPublic.from_lora(lora)


def _size(upload: UploadFile) -> int:
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    return size


@router.get("", response_model=LoraList, responses=errors(422))
def list_loras(
    key: CurrentKey,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=loras.MAX_PAGE)] = 20,
    after: str | None = None,
    order: Annotated[SortOrder, Query(description="`desc`: newest first (the default).")] = "desc",
) -> LoraList:
    """Your adapters and the published ones, newest first."""
    page, has_more = loras.list_loras(session=session, owner=key, limit=limit, after=after, order=order)
    data = [LoraPublic.from_lora(lora) for lora in page]
    return LoraList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )


@router.get("/{lora_id}", response_model=LoraPublic, responses=errors(404))
def retrieve_lora(lora_id: str, key: CurrentKey, session: SessionDep) -> LoraPublic:
    return LoraPublic.from_lora(loras.get_lora(session=session, owner=key, lora_id=lora_id))


@router.delete("/{lora_id}", response_model=LoraDeleted, responses=errors(403, 404))
def delete_lora(lora_id: str, key: CurrentKey, session: SessionDep, storage: StorageDep) -> LoraDeleted:
    """Jobs that used it keep their record of it; queued ones that still need it fail."""
    loras.delete_lora(session=session, owner=key, lora_id=lora_id, storage=storage)
    session.commit()
    return LoraDeleted(id=lora_id)
