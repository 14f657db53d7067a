"""JSON codecs for events and bus messages (msgspec: fast, validating)."""

from __future__ import annotations

from typing import Any

import msgspec

from headrace.events.types import CancelJob, Event, Job, Result

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Event)
_job_decoder = msgspec.json.Decoder(Job)
_result_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Result)
_cancel_decoder = msgspec.json.Decoder(CancelJob)

CONTENT_TYPE = "application/json"


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_event(data: bytes) -> Event:
    event: Event = _event_decoder.decode(data)
    return event


def decode_job(data: bytes) -> Job:
    return _job_decoder.decode(data)


def decode_result(data: bytes) -> Result:
    result: Result = _result_decoder.decode(data)
    return result


def decode_cancel(data: bytes) -> CancelJob:
    return _cancel_decoder.decode(data)


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)
