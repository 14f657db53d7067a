"""order-fulfilment written with the Python SDK: the same IR (and ir_hash) as the YAML file.

    python examples/order_fulfilment_sdk.py > /tmp/order.json
    PYTHONPATH=examples headrace run /tmp/order.json --tasks shop -i order_id=A-1 \\
        --input-file examples/small-order.json
"""

from __future__ import annotations

import json

from headrace.sdk import Workflow, ref


def build(*, fraud_threshold: int = 100) -> Workflow:
    wf = Workflow(
        "order-fulfilment",
        version=1,
        inputs={"order_id": {"type": "string"}, "items": {"type": "array"}},
        defaults={
            "retry": {
                "max_attempts": 3,
                "backoff": "exponential",
                "initial_interval": "100ms",
                "max_interval": "5s",
            },
            "timeout": "30s",
        },
    )
    validate = wf.task("validate", "shop.validate_order", with_={"order_id": wf.inputs.order_id})
    item = ref("item")
    price = wf.task(
        "price",
        "shop.price_item",
        needs=[validate],
        map=wf.inputs.items,
        as_="item",
        max_concurrency=8,
        with_={"sku": item.sku, "qty": item.qty},
    )
    total = wf.task("total", "shop.sum_amounts", with_={"amounts": price.output})
    fraud = wf.http(
        "fraud_check",
        method="POST",
        url=f"{ref('vars').fraud_url}/check",
        headers={"Authorization": f"Bearer {ref('secrets').fraud_token}"},
        json={"amount": total.output.amount},
        when=total.output.amount > fraud_threshold,
        priority="high",
    )
    approve = wf.wait(
        "approve", signal="approval", timeout="1h", needs=[fraud], when=total.output.amount > 1000
    )
    ship = wf.agent(
        "ship",
        env="local",
        command=["python", "examples/shop/ship.py"],
        limits={"memory": "256Mi", "cpu_seconds": 10},
        needs=[approve],
    )
    wf.outputs(amount=total.output.amount, shipment=ship.output)
    return wf


if __name__ == "__main__":
    print(json.dumps(build().to_dict(), indent=2))
