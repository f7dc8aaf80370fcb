"""The obvious consumer, for comparison: prefetch 1, call, sleep 1 s, ack. Nothing else.

No classification, no retries, no pacing beyond the sleep: whatever the API answers, the message
is acked. Run as its own process (`python -m bench.baseline`) with the worker's variables
TIM_SDKAPPID, TIM_SECRET_KEY, TIM_BASE_URL, RECALL_AMQP_URL and RECALL_QUEUE (a plain durable
classic queue). For the bench it prints one JSON line per call: TaskId and ErrorCode.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time

import aio_pika
import httpx

from consumer.core.usersig import make_usersig


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main() -> None:
    env = os.environ
    sdkappid = int(env["TIM_SDKAPPID"])
    usersig = make_usersig(
        sdkappid, "administrator", env["TIM_SECRET_KEY"], 86400, int(time.time())
    )
    url = env["TIM_BASE_URL"] + "/v4/timpush/revoke"
    connection = await aio_pika.connect(env["RECALL_AMQP_URL"])
    async with connection, httpx.AsyncClient(timeout=10.0) as http:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(env["RECALL_QUEUE"], durable=True)
        async with queue.iterator() as messages:
            say(event="consuming")
            async for message in messages:
                params = {
                    "sdkappid": str(sdkappid),
                    "identifier": "administrator",
                    "usersig": usersig,
                    "random": str(secrets.randbelow(2**32)),
                    "contenttype": "json",
                }
                answer = await http.post(url, params=params, content=message.body)
                say(
                    event="called",
                    task_id=json.loads(message.body).get("TaskId"),
                    code=answer.json().get("ErrorCode"),
                )
                await asyncio.sleep(1)
                await message.ack()


if __name__ == "__main__":
    asyncio.run(main())
