"""The feature layout in Redis, one hash per user, so that everything one recommendation needs
is a single HMGET (one round trip, one command):

    kiln:v1:u:{user_id}     the namespace, the layout's schema version, the user's source id
        h                   recent interactions, JSON [[item_id, unix_ts], ...], oldest first,
                            capped at the model's history length (re-seen items move to the end)
        h:ts                unix time of the newest interaction
        v:{model}:{version} the user vector that model version computed: float32 bytes
        v:{model}:{version}:ts   unix time it was computed

Every feature carries its own timestamp and is judged at read time (fresh, stale, missing)
against its TTL, whatever Redis expiry does. A vector is keyed by model version, so a promoted
version never reads its predecessor's vectors; events delete a user's vectors of every version
in the same atomic script that appends them (Lua, one round trip per batch of users).
"""

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast

import numpy as np
import redis
import redis.asyncio
from pydantic import BaseModel, BeforeValidator, Field, StrictInt, StrictStr

SCHEMA_VERSION = 1
State = Literal["fresh", "stale", "missing"]

# KEYS[1]: the user's hash. ARGV: new [[item, ts], ...] as JSON, history cap, replace (0/1).
UPDATE_HISTORY = """
local items = {}
if ARGV[3] == '0' then
  local current = redis.call('HGET', KEYS[1], 'h')
  if current then items = cjson.decode(current) end
end
for _, event in ipairs(cjson.decode(ARGV[1])) do
  for i = #items, 1, -1 do
    if items[i][1] == event[1] then table.remove(items, i) end
  end
  table.insert(items, event)
end
table.sort(items, function(a, b) return a[2] < b[2] end)
while #items > tonumber(ARGV[2]) do table.remove(items, 1) end
local newest = 0
if #items > 0 then newest = items[#items][2] end
redis.call('HSET', KEYS[1], 'h', cjson.encode(items), 'h:ts', newest)
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, 2) == 'v:' then redis.call('HDEL', KEYS[1], name) end
end
return #items
"""


def _whole_number(value: Any) -> Any:
    """7.0 is the integer 7, as JSON Schema counts it; anything else is left to the type."""
    return int(value) if type(value) is float and value.is_integer() else value


# Strict: a JSON true is not the id 1, nor false the time 0.
SourceId = Annotated[StrictStr | StrictInt, BeforeValidator(_whole_number)]


class Event(BaseModel):
    """One interaction, as clients post it: ids are the source data's (e.g. MovieLens ids)."""

    user_id: SourceId
    item_id: SourceId
    type: str = Field("interaction", max_length=64, description="view, click, rating, ...")
    timestamp: float | None = Field(
        None, strict=True, description="unix seconds; default: when received"
    )


@dataclass
class UserFeatures:
    history: list[tuple[str, float]] = field(default_factory=list)  # (item_id, unix ts)
    history_state: State = "missing"
    vector: np.ndarray | None = None
    vector_state: State = "missing"


class FeatureStore:
    def __init__(
        self,
        client: redis.Redis,
        history_len: int,
        namespace: str = "kiln",
        vector_ttl_s: float = 3600.0,
        history_ttl_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.client, self.history_len, self.clock = client, history_len, clock
        self.prefix = f"{namespace}:v{SCHEMA_VERSION}:u:"
        self.vector_ttl_s, self.history_ttl_s = vector_ttl_s, history_ttl_s
        self._update = client.register_script(UPDATE_HISTORY)

    def key(self, user_id: str | int) -> str:
        return f"{self.prefix}{user_id}"

    # --- reads ----------------------------------------------------------------------------

    def read(self, user_id: str | int, model: str, version: int) -> UserFeatures:
        """History and this version's vector, in one HMGET."""
        return self.parse(self.client.hmget(*self.read_request(user_id, model, version)))

    def read_request(self, user_id: str | int, model: str, version: int) -> tuple[str, list[str]]:
        """The key and fields of the HMGET that `parse` reads."""
        vector = f"v:{model}:{version}"
        return self.key(user_id), ["h", "h:ts", vector, f"{vector}:ts"]

    def parse(self, raw: Any) -> UserFeatures:
        history, history_ts, vector_bytes, vector_ts = cast(list[Any], raw)  # bytes or None
        features = UserFeatures()
        if history is not None:
            features.history = [(str(i), float(t)) for i, t in json.loads(history)]
            features.history_state = self._state(history_ts, self.history_ttl_s)
        if vector_bytes is not None:
            features.vector_state = self._state(vector_ts, self.vector_ttl_s)
            if features.vector_state == "fresh":
                features.vector = np.frombuffer(vector_bytes, dtype=np.float32)
        return features

    def _state(self, written: Any, ttl_s: float | None) -> State:
        if written is None:
            return "missing"
        age = self.clock() - float(written)
        return "fresh" if ttl_s is None or age <= ttl_s else "stale"

    # --- writes ---------------------------------------------------------------------------

    def write_vector(
        self, user_id: str | int, model: str, version: int, vector: np.ndarray
    ) -> None:
        key, fields = self.vector_write(user_id, model, version, vector)
        self.client.hset(key, mapping=fields)

    def vector_write(
        self, user_id: str | int, model: str, version: int, vector: np.ndarray
    ) -> tuple[str, dict[Any, Any]]:
        """The key and fields that store a version's user vector."""
        name = f"v:{model}:{version}"
        data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        return self.key(user_id), {name: data, f"{name}:ts": self.clock()}

    def append_events(self, events: Iterable[Event]) -> int:
        """Append to each user's history and drop their cached vectors, atomically per user,
        all users in one pipelined round trip. Returns the number of events written."""
        by_user = self.by_user(events)
        self._update_histories(by_user, replace=False)
        return sum(len(v) for v in by_user.values())

    def by_user(self, events: Iterable[Event]) -> dict[str, list[list[Any]]]:
        """Events as each user's new [[item_id, ts], ...]; no timestamp means now."""
        by_user: dict[str, list[list[Any]]] = {}
        now = self.clock()
        for event in events:
            stamp = event.timestamp if event.timestamp is not None else now
            by_user.setdefault(str(event.user_id), []).append([str(event.item_id), stamp])
        return by_user

    def replace_histories(self, histories: dict[str, list[tuple[str, float]]]) -> None:
        """Bulk materialisation: each user's history becomes exactly these (the newest
        `history_len`); running it twice leaves the same contents."""
        self._update_histories(
            {str(u): [[str(i), float(t)] for i, t in h] for u, h in histories.items()},
            replace=True,
        )

    def _update_histories(self, by_user: dict[str, list[list[Any]]], replace: bool) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, args in self.history_updates(by_user, replace):
            self._update(keys=[key], args=args, client=pipe)
        pipe.execute()

    def history_updates(
        self, by_user: dict[str, list[list[Any]]], replace: bool
    ) -> list[tuple[str, list[str | int]]]:
        """UPDATE_HISTORY's key and arguments, per user."""
        return [
            (self.key(user), [json.dumps(events), self.history_len, str(int(replace))])
            for user, events in by_user.items()
        ]

    def purge_vectors(self, model: str, versions: Iterable[int], batch: int = 1000) -> int:
        """Delete cached vectors of old model versions, key by key (SCAN), never FLUSH."""
        fields = [f for v in versions for f in (f"v:{model}:{v}", f"v:{model}:{v}:ts")]
        removed = 0
        keys: list[bytes] = []
        for key in self.client.scan_iter(match=f"{self.prefix}*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                removed += self._hdel_all(keys, fields)
                keys = []
        return removed + (self._hdel_all(keys, fields) if keys else 0)

    def _hdel_all(self, keys: list[bytes], fields: list[str]) -> int:
        if not fields:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hdel(key, *fields)
        return sum(pipe.execute()) // 2

    # --- inspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        users = with_history = 0
        vectors: dict[str, int] = {}
        for key in self.client.scan_iter(match=f"{self.prefix}*", count=1000):
            users += 1
            for raw in self.client.hkeys(key):
                name = raw.decode() if isinstance(raw, bytes) else raw
                if name == "h":
                    with_history += 1
                elif name.startswith("v:") and not name.endswith(":ts"):
                    vectors[name[2:]] = vectors.get(name[2:], 0) + 1
        memory = self.client.info("memory")
        return {
            "prefix": self.prefix,
            "users": users,
            "users_with_history": with_history,
            "vectors": vectors,
            "used_memory": memory.get("used_memory_human"),
            "keys_in_db": self.client.dbsize(),
        }


class AsyncFeatureStore:
    """The serving path's reads and writes in FeatureStore's layout, on asyncio's Redis client.
    Measured at concurrency 16 against the same server: 66 us of CPU a call, against 214 us for
    the blocking client through a thread (asyncio.to_thread), and 3x the calls a second."""

    def __init__(self, layout: FeatureStore, client: "redis.asyncio.Redis"):
        self.layout, self.client = layout, client
        self._update = client.register_script(UPDATE_HISTORY)

    async def read(self, user_id: str | int, model: str, version: int) -> UserFeatures:
        raw = await self.client.hmget(*self.layout.read_request(user_id, model, version))
        return self.layout.parse(raw)

    async def write_vector(
        self, user_id: str | int, model: str, version: int, vector: np.ndarray
    ) -> None:
        key, fields = self.layout.vector_write(user_id, model, version, vector)
        await self.client.hset(key, mapping=fields)

    async def append_events(self, events: Iterable[Event]) -> int:
        by_user = self.layout.by_user(events)
        async with self.client.pipeline(transaction=False) as pipe:
            for key, args in self.layout.history_updates(by_user, replace=False):
                await self._update(keys=[key], args=args, client=pipe)
            await pipe.execute()
        return sum(len(v) for v in by_user.values())
