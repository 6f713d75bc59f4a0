"""Template infos the API validates tasks against; the QPY bytes stay in Redis."""
from __future__ import annotations

import time
from collections import OrderedDict

from ..store import Store


class TemplateIndex:
    """Templates expire in Redis after template_ttl_s unused; an entry older than RECHECK_S is checked
    (and its expiry pushed back) before use, so a template in use never expires and a cached one is
    never stale. LRU-bounded."""
    RECHECK_S = 3600.0
    MAX_ENTRIES = 10_000

    def __init__(self, store: Store, ttl_s: int):
        self.store, self.ttl_s = store, ttl_s
        self._infos: OrderedDict[str, tuple[dict, float]] = OrderedDict()

    async def get(self, digest: str) -> dict | None:
        hit = self._infos.get(digest)
        now = time.monotonic()
        if hit and now - hit[1] < self.RECHECK_S:
            self._infos.move_to_end(digest)
            return hit[0]
        info = await self.store.template_info(digest, self.ttl_s)
        if info is None:
            self._infos.pop(digest, None)
            return None
        self.put(digest, info)
        return info

    async def add(self, digest: str, qpy: bytes, info: dict) -> None:
        await self.store.put_template(digest, qpy, info, self.ttl_s)
        self.put(digest, info)

    def put(self, digest: str, info: dict) -> None:
        self._infos[digest] = (info, time.monotonic())
        self._infos.move_to_end(digest)
        while len(self._infos) > self.MAX_ENTRIES:
            self._infos.popitem(last=False)
