"""Call events for webhooks: `outbox` (the durable LMDB FIFO and the engine's EventSink)
and `webhook` (the asyncio task that POSTs them, signed, at least once)."""
