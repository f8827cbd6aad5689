"""Webhook endpoints, the default signing secret, and a job's delivery log with replays."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import CurrentKey, SessionDep, SettingsDep, StateDep
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
from jobs.webhooks import endpoints

router = APIRouter(tags=["webhooks"])


def _with_secret(created: endpoints.EndpointWithSecret) -> WebhookEndpointWithSecret:
    public = WebhookEndpointPublic.from_endpoint(created.endpoint)
    return WebhookEndpointWithSecret(**public.model_dump(), secret=created.secret)


@router.post("/v1/webhook_endpoints", status_code=status.HTTP_201_CREATED, response_model=WebhookEndpointWithSecret)
def create_webhook_endpoint(
    body: WebhookEndpointCreate, key: CurrentKey, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    """Register a URL for the events of all your jobs. The `secret` is shown here only."""
    created = endpoints.create_endpoint(
        session=session,
        owner=key,
        url=body.url,
        events=body.events,
        description=body.description,
        allowed_hosts=settings.webhook_allowed_host_set,
    )
    return _with_secret(created)


@router.get("/v1/webhook_endpoints", response_model=WebhookEndpointList)
def list_webhook_endpoints(key: CurrentKey, session: SessionDep) -> WebhookEndpointList:
    return WebhookEndpointList(
        data=[WebhookEndpointPublic.from_endpoint(e) for e in endpoints.list_endpoints(session=session, owner=key)]
    )


@router.get("/v1/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointPublic)
def retrieve_webhook_endpoint(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointPublic:
    return WebhookEndpointPublic.from_endpoint(
        endpoints.get_endpoint(session=session, owner=key, endpoint_id=endpoint_id)
    )


@router.delete("/v1/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointDeleted)
def delete_webhook_endpoint(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointDeleted:
    endpoints.delete_endpoint(session=session, owner=key, endpoint_id=endpoint_id)
    return WebhookEndpointDeleted(id=endpoint_id)


@router.post("/v1/webhook_endpoints/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret)
def rotate_webhook_secret(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointWithSecret:
    """A new secret signs from now on; for 24 hours the old one signs too (a second signature)."""
    return _with_secret(endpoints.rotate_secret(session=session, owner=key, endpoint_id=endpoint_id))


@router.post("/v1/webhook_endpoints/{endpoint_id}/enable", response_model=WebhookEndpointPublic)
def enable_webhook_endpoint(endpoint_id: str, key: CurrentKey, session: SessionDep) -> WebhookEndpointPublic:
    """Turn a disabled endpoint back on (events from now on; replay older ones one by one)."""
    return WebhookEndpointPublic.from_endpoint(
        endpoints.enable_endpoint(session=session, owner=key, endpoint_id=endpoint_id)
    )


@router.get("/v1/webhooks/default/secret", response_model=WebhookSecret)
def default_webhook_secret(key: CurrentKey, session: SessionDep) -> WebhookSecret:
    """The secret that signs webhooks sent to a job's own `webhook_url`."""
    return WebhookSecret(key=endpoints.default_secret(session=session, owner=key))


@router.get("/v1/videos/{video_id}/webhook_deliveries", response_model=WebhookDeliveryList)
def list_webhook_deliveries(video_id: str, key: CurrentKey, session: SessionDep) -> WebhookDeliveryList:
    """Every webhook this job produced, oldest first, with each attempt's status code, latency and answer."""
    deliveries = endpoints.list_deliveries(session=session, owner=key, job_id=video_id)
    return WebhookDeliveryList(data=[WebhookDeliveryPublic.from_delivery(d) for d in deliveries])


@router.post(
    "/v1/videos/{video_id}/webhook_deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
)
def redeliver_webhook(
    video_id: str, delivery_id: str, key: CurrentKey, session: SessionDep, state: StateDep
) -> WebhookDeliveryPublic:
    """Send one delivery again now, with the same `webhook-id`."""
    delivery = endpoints.redeliver(session=session, owner=key, job_id=video_id, delivery_id=delivery_id)
    session.commit()
    state.relay_now()
    session.refresh(delivery)
    return WebhookDeliveryPublic.from_delivery(delivery)
