"""Webhook endpoints, the default signing secret, and a job's delivery log with replays.

Every write commits before it answers, so a read right after it sees the change."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentKey, SessionDep, SettingsDep, StateDep
from api.openapi import errors
from api.schemas import (
    WebhookDeliveryList,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointPublic,
    WebhookEndpointWithSecret,
    WebhookSecret,
)
from jobs.crud import MAX_PAGE
from jobs.pages import SortOrder
from jobs.webhooks import endpoints

router = APIRouter(tags=["webhooks"], responses=errors(401))


def _with_secret(created: endpoints.EndpointWithSecret) -> WebhookEndpointWithSecret:
    public = WebhookEndpointPublic.from_endpoint(created.endpoint)
    return WebhookEndpointWithSecret(**public.model_dump(), secret=created.secret, signing_secret=created.secret)


@router.post(
    "/v1/webhook_endpoints",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookEndpointWithSecret,
    responses=errors(422),
)
def create_webhook_endpoint(
    body: WebhookEndpointCreate, key: CurrentKey, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    """Register a URL for the events of all your jobs. The `secret` (`signing_secret`) is shown here only."""
    created = endpoints.create_endpoint(
        session=session,
        owner=key,
        url=body.url,
        events=body.chosen_events(),
        description=body.chosen_description(),
        allowed_hosts=settings.webhook_allowed_host_set,
    )
    session.commit()
    return _with_secret(created)


@router.get("/v1/webhook_endpoints", response_model=WebhookEndpointList, responses=errors(422))
def list_webhook_endpoints(
    key: CurrentKey,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    after: str | None = None,
    order: Annotated[SortOrder, Query(description="`desc`: newest first (the default); `asc`: oldest first.")] = "desc",
) -> WebhookEndpointList:
    """Your endpoints, newest first, in pages like `GET /v1/videos` (`after` = the previous page's `last_id`)."""
    found, has_more = endpoints.list_endpoints(session=session, owner=key, limit=limit, after=after, order=order)
    data = [WebhookEndpointPublic.from_endpoint(e) for e in found]
    return WebhookEndpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/v1/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointPublic, responses=errors(404))
def retrieve_webhook_endpoint(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointPublic:
    return WebhookEndpointPublic.from_endpoint(
        endpoints.get_endpoint(session=session, owner=key, endpoint_id=endpoint_id)
    )


@router.delete("/v1/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointDeleted, responses=errors(404))
def delete_webhook_endpoint(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointDeleted:
    endpoints.delete_endpoint(session=session, owner=key, endpoint_id=endpoint_id)
    session.commit()
    return WebhookEndpointDeleted(id=endpoint_id)


@router.post(
    "/v1/webhook_endpoints/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret, responses=errors(404)
)
def rotate_webhook_secret(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointWithSecret:
    """A new secret signs from now on; for 24 hours the old one signs too (a second signature)."""
    rotated = endpoints.rotate_secret(session=session, owner=key, endpoint_id=endpoint_id)
    session.commit()
    return _with_secret(rotated)


@router.post("/v1/webhook_endpoints/{endpoint_id}/enable", response_model=WebhookEndpointPublic, responses=errors(404))
def enable_webhook_endpoint(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointPublic:
    """Turn a disabled endpoint back on (events from now on; replay older ones one by one)."""
    endpoint = endpoints.enable_endpoint(session=session, owner=key, endpoint_id=endpoint_id)
    session.commit()
    return WebhookEndpointPublic.from_endpoint(endpoint)


@router.get("/v1/webhooks/default/secret", response_model=WebhookSecret)
def default_webhook_secret(key: CurrentKey, session: SessionDep) -> WebhookSecret:
    """The secret that signs webhooks sent to a job's own `webhook_url` (created on first use)."""
    secret = endpoints.default_secret(session=session, owner=key)
    session.commit()
    return WebhookSecret(key=secret)


@router.get("/v1/videos/{video_id}/webhook_deliveries", response_model=WebhookDeliveryList, responses=errors(404, 422))
def list_webhook_deliveries(
    video_id: str,
    key: CurrentKey,
    session: SessionDep,
    order: Annotated[SortOrder, Query(description="`asc`: oldest first (the default); `desc`: newest first.")] = "asc",
) -> WebhookDeliveryList:
    """Every webhook this job produced, with each attempt's status code, latency and answer."""
    deliveries = endpoints.list_deliveries(session=session, owner=key, job_id=video_id, order=order)
    return WebhookDeliveryList(data=[WebhookDeliveryPublic.from_delivery(d) for d in deliveries])


@router.post(
    "/v1/videos/{video_id}/webhook_deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
    responses=errors(404, 409),
)
def redeliver_webhook(
    video_id: str, delivery_id: str, key: CurrentKey, session: SessionDep, state: StateDep
) -> WebhookDeliveryPublic:
    """Send one delivery again now, with the same `webhook-id`."""
    delivery = endpoints.redeliver(session=session, owner=key, job_id=video_id, delivery_id=delivery_id)
    session.commit()
    state.sweeper.kick()  # publish it now, not at the next sweep (a delivery, not a state change)
    session.refresh(delivery)
    return WebhookDeliveryPublic.from_delivery(delivery)
