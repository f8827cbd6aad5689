"""A small Python client for the vidq API, and webhook verification for receivers.

    from vidq.client import Client

    with Client("http://127.0.0.1:8000", api_key="vq_...") as client:
        video = client.create_and_wait(prompt="a red fox in the snow", on_progress=print)
        client.download(video["id"], "fox.mp4")

Jobs come back as the API's JSON objects (dicts). Errors are typed after the API's error body
(``{"error": {"code", "message", "param"}}``): ``NotFoundError``, ``InvalidRequestError`` and so
on, each with ``status_code``, ``code``, ``message`` and ``param``. Idempotent calls (reads,
cancel, delete, and create, which always carries an ``Idempotency-Key``) are retried with
exponential backoff on 429, 5xx and connection errors, honouring ``Retry-After``.

For webhook receivers: ``verify_webhook(secret, headers, body)`` checks a Standard Webhooks
signature in constant time and returns the parsed event.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from jobs.webhooks.signing import InvalidSecret, signature_matches

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
ProgressCallback = Callable[[dict[str, Any]], None]


class VidqError(Exception):
    """Base of every error this client raises."""


class APIError(VidqError):
    """The API answered with an error body."""

    def __init__(
        self, message: str, *, status_code: int, code: str = "error", param: str | None = None, body: Any = None
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}" + (f" (param: {param})" if param else ""))
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.body = body


class AuthenticationError(APIError):  # 401
    pass


class PermissionDeniedError(APIError):  # 403
    pass


class NotFoundError(APIError):  # 404
    pass


class ConflictError(APIError):  # 409, e.g. content before the video is completed
    pass


class GoneError(APIError):  # 410, e.g. expired results
    pass


class InvalidRequestError(APIError):  # 422, ``param`` names the field
    pass


class RateLimitError(APIError):  # 429
    pass


class ServerError(APIError):  # 5xx
    pass


class APIConnectionError(VidqError):
    """The API could not be reached (after the retries); ``url`` is the address tried."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the vidq API at {url} ({reason}): start it (`vidq api`) or point "
            "VIDQ_BASE_URL / --base-url at it"
        )
        self.url = url
        self.reason = reason


class VideoFailedError(VidqError):
    """``create_and_wait``: the job ended ``failed`` or ``cancelled``; ``video`` holds the final job."""

    def __init__(self, video: dict[str, Any]) -> None:
        error = video.get("error") or {}
        super().__init__(f"video {video['id']} {video['status']}: {error.get('message', '')}".rstrip(": "))
        self.video = video


class WaitTimeout(VidqError):
    pass


class WebhookVerificationError(VidqError):
    pass


_ERRORS_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def _error_from(response: httpx.Response) -> APIError:
    try:
        body = response.json()
        error = body["error"]
        message, code, param = str(error.get("message", "")), str(error.get("code", "error")), error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        body, message, code, param = response.text, response.text[:500] or response.reason_phrase, "error", None
    cls = _ERRORS_BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else APIError)
    return cls(message, status_code=response.status_code, code=code, param=param, body=body)


def _reason(exc: httpx.TransportError) -> str:
    """A short cause: "connection refused", "timed out", or the error's own first line."""
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _retryable(status_code: int) -> bool:
    return status_code == 429 or status_code >= 500


def iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from a text/event-stream; comments (heartbeats) are skipped."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


class Client:
    """The vidq REST API. ``base_url`` and ``api_key`` default to ``VIDQ_BASE_URL`` and ``VIDQ_API_KEY``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = (base_url or os.environ.get("VIDQ_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        api_key = api_key or os.environ.get("VIDQ_API_KEY")
        if not api_key:
            raise VidqError("an API key is needed: pass api_key= or set VIDQ_API_KEY")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not retry or attempt >= self.max_retries:
                    raise APIConnectionError(self.base_url, _reason(exc)) from exc
                self._sleep_before_retry(attempt, None)
                attempt += 1
                continue
            if response.is_success or response.is_redirect:
                return response
            if retry and _retryable(response.status_code) and attempt < self.max_retries:
                self._sleep_before_retry(attempt, response.headers.get("retry-after"))
                attempt += 1
                continue
            raise _error_from(response)

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)  # exponential, with full-ish jitter
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(min(delay, 60.0))

    # -- videos --------------------------------------------------------------------------------

    def create(self, prompt: str, *, idempotency_key: str | None = None, **fields: Any) -> dict[str, Any]:
        """Submit a job (``model``, ``size``, ``num_frames``, ``num_inference_steps``, ``seed``,
        ``webhook_url``, ``acceleration`` (``"fast"``, ``"balanced"`` or a dict of options), ... as
        keyword arguments). An ``Idempotency-Key`` is generated when none is given, so a retried
        create never makes a second job."""
        body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key or f"vidq-client-{uuid.uuid4()}"}
        return self._request("POST", "/v1/videos", retry=True, json=body, headers=headers).json()  # type: ignore[no-any-return]

    def retrieve(self, video_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/videos/{video_id}", retry=True).json()  # type: ignore[no-any-return]

    def list(
        self, *, limit: int = 20, after: str | None = None, status: str | None = None, order: str | None = None
    ) -> dict[str, Any]:
        """One page; ``order`` "desc" (newest first, the default) or "asc"; ``after`` is a page's ``last_id``."""
        query = {"limit": limit, "after": after, "status": status, "order": order}
        params = {k: v for k, v in query.items() if v is not None}
        return self._request("GET", "/v1/videos", retry=True, params=params).json()  # type: ignore[no-any-return]

    def cancel(self, video_id: str) -> dict[str, Any]:
        # Safe to retry: cancelling a cancelled job answers 200 with the job.
        return self._request("POST", f"/v1/videos/{video_id}/cancel", retry=True).json()  # type: ignore[no-any-return]

    def delete(self, video_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/videos/{video_id}", retry=True).json()  # type: ignore[no-any-return]

    # -- LoRA adapters -------------------------------------------------------------------------

    def add_lora(
        self, path: str | Path, *, name: str, model: str, public: bool = False, **recommended: float | int | None
    ) -> dict[str, Any]:
        """Upload a .safetensors adapter for `model`; `recommended` takes `num_inference_steps`,
        `guidance_scale` and `flow_shift` (what jobs with it default to)."""
        fields = {"name": name, "model": model, "public": "true" if public else "false"}
        fields.update({k: str(v) for k, v in recommended.items() if v is not None})
        with Path(path).open("rb") as handle:
            files = {"file": (Path(path).name, handle, "application/octet-stream")}
            return self._request("POST", "/v1/loras", retry=False, data=fields, files=files).json()  # type: ignore[no-any-return]

    def list_loras(self, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"limit": limit, "after": after}.items() if v is not None}
        return self._request("GET", "/v1/loras", retry=True, params=params).json()  # type: ignore[no-any-return]

    def delete_lora(self, lora_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/loras/{lora_id}", retry=True).json()  # type: ignore[no-any-return]

    def download(self, video_id: str, path: str | Path, *, variant: str = "video") -> Path:
        """Write the video (or ``variant="thumbnail"``) to ``path``; the presigned URL is fetched
        without the API key."""
        path = Path(path)
        response = self._request(
            "GET", f"/v1/videos/{video_id}/content", retry=True, params={"variant": variant}, follow_redirects=False
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if response.is_redirect:
            with httpx.stream("GET", response.headers["location"], timeout=self._http.timeout) as stored:
                stored.raise_for_status()
                with path.open("wb") as fh:
                    for chunk in stored.iter_bytes():
                        fh.write(chunk)
        else:
            path.write_bytes(response.content)
        return path

    def events(self, video_id: str) -> Iterator[dict[str, Any]]:
        """The job's Server-Sent Events as dicts (each with ``type`` and ``status``), until it ends."""
        with self._http.stream(
            "GET", f"/v1/videos/{video_id}/events", timeout=httpx.Timeout(self._http.timeout.connect, read=None)
        ) as response:
            if not response.is_success:
                response.read()
                raise _error_from(response)
            for _, data in iter_sse(response.iter_lines()):
                yield data

    def wait(
        self,
        video_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
    ) -> dict[str, Any]:
        """Block until the job ends; return the final job. Follows the event stream and falls back
        to polling if the stream is unavailable or breaks."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self.events(video_id):
                if on_progress is not None:
                    on_progress(event)
                if event.get("status") in TERMINAL:
                    return self.retrieve(video_id)
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"video {video_id} did not finish within {timeout} s")
        except (httpx.HTTPError, APIConnectionError, ServerError, ValueError):
            pass  # no stream (an old server, a proxy that buffers): poll instead
        while True:
            video = self.retrieve(video_id)
            if on_progress is not None:
                on_progress(video)
            if video["status"] in TERMINAL:
                return video
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"video {video_id} did not finish within {timeout} s")
            time.sleep(poll_interval)

    def create_and_wait(
        self,
        prompt: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        **fields: Any,
    ) -> dict[str, Any]:
        """Create a job and wait for it; return the completed job, or raise VideoFailedError."""
        video = self.create(prompt, **fields)
        video = self.wait(video["id"], on_progress=on_progress, timeout=timeout, poll_interval=poll_interval)
        if video["status"] != "completed":
            raise VideoFailedError(video)
        return video


def verify_webhook(
    secret: str, headers: Mapping[str, str], body: bytes | str, *, tolerance: int = 300, now: float | None = None
) -> dict[str, Any]:
    """Check a Standard Webhooks signature and return the event; raise WebhookVerificationError.

    ``headers`` may use any case. A message is accepted if any of its ``v1`` signatures matches
    (there are two while a secret rotates) and its timestamp is within ``tolerance`` seconds of now
    (replays of old messages are refused).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, timestamp_text, signatures = (
            lowered["webhook-id"],
            lowered["webhook-timestamp"],
            lowered["webhook-signature"],
        )
        timestamp = int(timestamp_text)
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook-id/-timestamp/-signature headers") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("the message timestamp is outside the tolerance")
    try:
        matched = signature_matches(secret, msg_id, timestamp, body, signatures)
    except InvalidSecret as exc:
        raise WebhookVerificationError(str(exc)) from None
    if not matched:
        raise WebhookVerificationError("no matching signature")
    return json.loads(body)  # type: ignore[no-any-return]
