"""JSON codecs for events and bus messages (msgspec: fast, validating).

Every bus message names its format in a header (headrace/bus/base.py, CONTENT_TYPE_HEADER):
`CONTENT_TYPE` for these codecs. A second codec (Protobuf) will add a value of its own, and
consumers decode by the value, so messages of both formats can share a topic."""

from __future__ import annotations

from typing import Any

import msgspec

from headrace.events.types import CancelJob, Event, Job, Result

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Event)
_job_decoder = msgspec.json.Decoder(Job)
_result_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Result)
_cancel_decoder = msgspec.json.Decoder(CancelJob)
_events_decoder: msgspec.json.Decoder[list[Any]] = msgspec.json.Decoder(list[Event])

CONTENT_TYPE = "application/json"  # the format `encode` writes and the decoders read


def unreadable(content_type: str) -> str | None:
    """Why a payload in `content_type` cannot be decoded here (a reason that names it), or
    None when it can. Compared exactly: the runtime writes the value, it is never free text."""
    if content_type == CONTENT_TYPE:
        return None
    return f"unknown content-type {content_type!r} (this version reads {CONTENT_TYPE})"


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_event(data: bytes) -> Event:
    event: Event = _event_decoder.decode(data)
    return event


def decode_events(data: bytes) -> list[Event]:
    """A `workflow.events` message: one transition's events, in seq order."""
    events: list[Event] = _events_decoder.decode(data)
    return events


def decode_job(data: bytes) -> Job:
    return _job_decoder.decode(data)


def decode_result(data: bytes) -> Result:
    result: Result = _result_decoder.decode(data)
    return result


def decode_cancel(data: bytes) -> CancelJob:
    return _cancel_decoder.decode(data)


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)
