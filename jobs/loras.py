"""LoRA adapters as client resources: upload (checked against the model), list, read, delete, and
what a job's ``loras`` resolve to (with the adapters' recommended settings).

An upload is checked by its safetensors header alone (keys and shapes against the model's DiT, in
``spec.lora_keys``, which imports no torch), so a wrong file is refused before it is stored.
Visibility: a client sees its own adapters and those an admin published (``public``); another
client's private adapter is a 404, as for jobs.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from jobs.errors import Forbidden, InvalidParameter, NotFound, PayloadTooLarge
from jobs.ids import new_ulid
from jobs.models import ApiKey, Lora
from jobs.pages import SortOrder, keyset_page
from jobs.storage import Storage
from jobs.validation import LoraChoice, check_flow_shift
from spec.lora_keys import DIT_SHAPES, LoraFormatError, check_adapter, read_header
from spec.registry import MAX_GUIDANCE, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS, UnknownModelError, get_spec

LORA_ID_PREFIX = "lora_"
MAX_LORAS_PER_JOB = 4
MIN_SCALE, MAX_SCALE = -4.0, 4.0
MAX_NAME_CHARS = 200
MAX_PAGE = 100


def lora_storage_key(lora_id: str) -> str:
    return f"loras/{lora_id}.safetensors"


@dataclass(frozen=True)
class Recommended:
    """Settings an adapter is meant to run with (a step-distilled adapter: 4 steps, guidance 1)."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    flow_shift: float | None = None

    def __post_init__(self) -> None:
        if self.num_inference_steps is not None and not MIN_STEPS <= self.num_inference_steps <= MAX_STEPS:
            raise InvalidParameter(f"steps must be in [{MIN_STEPS}, {MAX_STEPS}]", param="num_inference_steps")
        if self.guidance_scale is not None and not MIN_GUIDANCE <= self.guidance_scale <= MAX_GUIDANCE:
            raise InvalidParameter(f"guidance must be in [{MIN_GUIDANCE}, {MAX_GUIDANCE}]", param="guidance_scale")
        check_flow_shift(self.flow_shift)

    def to_dict(self) -> dict[str, Any] | None:
        values = {k: v for k, v in self.__dict__.items() if v is not None}
        return values or None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Recommended:
        return cls(**(values or {}))


def _visible(owner: ApiKey):  # type: ignore[no-untyped-def]
    return or_(Lora.owner_id == owner.id, Lora.public.is_(True))


def create_lora(
    *,
    session: Session,
    owner: ApiKey,
    storage: Storage,
    name: str,
    model: str,
    file: BinaryIO,
    size_bytes: int,
    max_bytes: int,
    recommended: Recommended | None = None,
    public: bool = False,
) -> Lora:
    """Check the file against ``model``'s DiT, store it, and record it (flushed, not committed).

    ``file`` is a seekable binary file of ``size_bytes``; 422s name the field (``file`` for a file
    that is not a LoRA for this model), a file over ``max_bytes`` is a ``file_too_large`` 422.
    """
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise InvalidParameter(f"name must be 1 to {MAX_NAME_CHARS} characters", param="name")
    try:
        spec = get_spec(model)
    except UnknownModelError as exc:
        raise InvalidParameter(str(exc), param="model") from None
    dit = DIT_SHAPES.get(spec.name)
    if dit is None:
        supported = ", ".join(sorted(DIT_SHAPES))
        raise InvalidParameter(f"{spec.name} takes no LoRA adapters (these do: {supported})", param="model")
    if public and not owner.is_admin:
        raise Forbidden("only an admin can publish an adapter to every client", param="public")
    if size_bytes > max_bytes:
        raise PayloadTooLarge(f"the file is {size_bytes} bytes; the limit is {max_bytes}", param="file")
    try:
        file.seek(0)
        shapes, _metadata = read_header(file)
        _layout, summary = check_adapter(shapes, dit)
    except LoraFormatError as exc:
        raise InvalidParameter(f"not a LoRA for {spec.name}: {exc}", param="file", code="invalid_lora") from None

    file.seek(0)
    digest = hashlib.sha256()
    for chunk in iter(lambda: file.read(2**20), b""):
        digest.update(chunk)
    lora = Lora(
        id=LORA_ID_PREFIX + new_ulid(),
        owner_id=owner.id,
        name=name,
        model=spec.name,
        format=summary.format,
        rank=summary.rank,
        size_bytes=size_bytes,
        sha256=digest.hexdigest(),
        recommended=(recommended or Recommended()).to_dict(),
        public=public,
        use_count=0,
    )
    lora.storage_key = lora_storage_key(lora.id)
    file.seek(0)
    _put(storage, lora.storage_key, file)
    session.add(lora)
    session.flush()
    return lora


def _put(storage: Storage, key: str, file: BinaryIO) -> None:
    """Storage takes paths; an upload already spooled to a named file is sent from there."""
    name = getattr(file, "name", None)
    if isinstance(name, str) and Path(name).is_file():
        storage.put_file(key, Path(name), "application/octet-stream")
        return
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as spooled:
        shutil.copyfileobj(file, spooled)
        spooled.flush()
        storage.put_file(key, Path(spooled.name), "application/octet-stream")


def list_loras(
    *, session: Session, owner: ApiKey, limit: int = 20, after: str | None = None, order: SortOrder = "desc"
) -> tuple[list[Lora], bool]:
    """The client's own adapters and the published ones, newest first; (page, has_more)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidParameter(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    return keyset_page(session, select(Lora).where(_visible(owner)), Lora.id, limit=limit, after=after, order=order)


def get_lora(*, session: Session, owner: ApiKey, lora_id: str) -> Lora:
    lora = session.scalar(select(Lora).where(Lora.id == lora_id, _visible(owner)))
    if lora is None:
        raise NotFound(f"no LoRA adapter {lora_id!r}", param="lora_id")
    return lora


def delete_lora(*, session: Session, owner: ApiKey, lora_id: str, storage: Storage) -> None:
    """An owner deletes its adapters; a published one only an admin. Jobs keep their record of it."""
    lora = get_lora(session=session, owner=owner, lora_id=lora_id)
    if lora.owner_id != owner.id and not owner.is_admin:
        raise Forbidden("a published adapter can only be deleted by an admin", param="lora_id")
    storage.delete(lora.storage_key)
    session.delete(lora)


def resolve_job_loras(
    *, session: Session, owner: ApiKey, choices: tuple[LoraChoice, ...], model: str
) -> tuple[list[dict[str, Any]], Recommended]:
    """Check a request's adapters and return what the job records and the settings they
    recommend (the first adapter, in request order, that names a field wins). Counts a use of
    each adapter.

    An entry is recorded as ``{"id", "name", "scale"}``: on a two-expert model (Wan2.2 A14B) it
    goes into both experts. An entry with ``id_2`` or ``scale_2`` (two-expert models only) also
    records ``{"id_2", "name_2", "scale_2"}``: ``id`` at ``scale`` in the high-noise expert,
    ``id_2`` at ``scale_2`` in the low-noise one. No expert gets the same adapter twice."""
    if len(choices) > MAX_LORAS_PER_JOB:
        raise InvalidParameter(f"at most {MAX_LORAS_PER_JOB} adapters per job", param="loras")
    try:
        spec = get_spec(model)
    except UnknownModelError as exc:
        raise InvalidParameter(str(exc), param="model") from None
    if not spec.two_experts and any(choice.per_expert for choice in choices):
        raise InvalidParameter(
            f"id_2 and scale_2 are for two-expert models (Wan2.2 A14B); {spec.name} has one transformer",
            param="loras",
        )
    for expert_ids in ([c.id for c in choices], [c.id_2 or c.id for c in choices]):
        if len(set(expert_ids)) != len(expert_ids):
            raise InvalidParameter("an adapter is listed twice", param="loras")
    entries: list[dict[str, Any]] = []
    recommended = Recommended()
    for choice in choices:
        for scale in (choice.scale, choice.scale_2):
            if scale is not None and not (math.isfinite(scale) and MIN_SCALE <= scale <= MAX_SCALE):
                raise InvalidParameter(f"scale must be in [{MIN_SCALE}, {MAX_SCALE}]", param="loras")
        entry: dict[str, Any] = {}
        ids = [choice.id] if choice.id_2 is None or choice.id_2 == choice.id else [choice.id, choice.id_2]
        for suffix, lora_id in zip(("", "_2"), ids, strict=False):
            lora = _usable_lora(session=session, owner=owner, lora_id=lora_id, model=spec.name)
            entry |= {f"id{suffix}": lora.id, f"name{suffix}": lora.name}
            theirs = Recommended.from_dict(lora.recommended)
            recommended = replace(
                recommended,
                **{k: v for k, v in theirs.__dict__.items() if v is not None and getattr(recommended, k) is None},
            )
            lora.use_count += 1
        entry["scale"] = choice.scale
        if choice.per_expert:
            entry.setdefault("id_2", entry["id"])
            entry.setdefault("name_2", entry["name"])
            entry["scale_2"] = choice.scale if choice.scale_2 is None else choice.scale_2
        entries.append(entry)
    return entries, recommended


def _usable_lora(*, session: Session, owner: ApiKey, lora_id: str, model: str) -> Lora:
    """Adapter `lora_id`, visible to `owner` and made for `model` (locked: its use is counted)."""
    lora = session.scalar(select(Lora).where(Lora.id == lora_id, _visible(owner)).with_for_update())
    if lora is None:
        raise InvalidParameter(f"no LoRA adapter {lora_id!r}", param="loras", code="lora_not_found")
    if lora.model != model:
        raise InvalidParameter(f"{lora.id} is an adapter for {lora.model}, not {model}", param="loras")
    return lora


def lora_to_public(lora: Lora) -> dict[str, Any]:
    from jobs.public import unix

    return {
        "id": lora.id,
        "object": "lora",
        "name": lora.name,
        "model": lora.model,
        "format": lora.format,
        "rank": lora.rank,
        "size_bytes": lora.size_bytes,
        "sha256": lora.sha256,
        "recommended": lora.recommended or {},
        "public": lora.public,
        "use_count": lora.use_count,
        "created_at": unix(lora.created_at),
    }


def all_loras(*, session: Session, limit: int = 500) -> list[Lora]:
    """Every client's adapters, most used first (the admin dashboard)."""
    return list(session.scalars(select(Lora).order_by(Lora.use_count.desc(), Lora.id.desc()).limit(limit)))
