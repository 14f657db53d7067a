"""A small fraud-check HTTP service for the order-fulfilment example.

    python examples/fraud_service.py --port 8090 --token s3cret

POST /check {"amount": N} with `Authorization: Bearer <token>` -> {"approved": bool, "score": x}.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel


class Check(BaseModel):
    amount: float


def create_app(token: str) -> FastAPI:
    app = FastAPI(title="fraud-check")
    seen: dict[str, dict[str, object]] = {}

    @app.post("/check")
    def check(
        body: Check,
        authorization: str = Header(""),
        idempotency_key: str | None = Header(None),
    ) -> dict[str, object]:
        if authorization != f"Bearer {token}":
            raise HTTPException(401, "bad token")
        if idempotency_key and idempotency_key in seen:
            return seen[idempotency_key]  # a retried call gets the first answer
        result: dict[str, object] = {
            "approved": body.amount < 5_000,
            "score": min(1.0, body.amount / 10_000),
        }
        if idempotency_key:
            seen[idempotency_key] = result
        return result

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.token), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
