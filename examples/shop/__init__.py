"""Task functions for examples/order-fulfilment.yaml (run with `--tasks shop`)."""

from __future__ import annotations

import asyncio

PRICES_CENTS = {"apple": 120, "pear": 95, "laptop": 129_900, "cable": 1_250}


def validate_order(order_id: str) -> dict[str, object]:
    if not order_id:
        raise ValueError("order_id is empty")
    return {"order_id": order_id, "valid": True}


async def price_item(sku: str, qty: int) -> dict[str, object]:
    await asyncio.sleep(0)  # an async task: stands for a call to a pricing service
    if sku not in PRICES_CENTS:
        raise ValueError(f"unknown sku {sku!r}")
    return {"sku": sku, "qty": qty, "amount": PRICES_CENTS[sku] * qty / 100}


def sum_amounts(amounts: list[dict[str, float]]) -> dict[str, float]:
    return {"amount": round(sum(a["amount"] for a in amounts), 2)}
