"""The online feature cache for recommendations: users' recent interactions and cached user
vectors in Redis (an embedded server by default, or KILN_REDIS_URL).

    with redis_for_kiln() as url:                 # embedded Redis under KILN_HOME, or yours
        store = FeatureStore(connect(url), history_len=20)
        store.append_events([Event(user_id="7", item_id="42")])
        features = store.read("7", model="recsys", version=3)   # one round trip
"""

from kiln.features.redis_server import EmbeddedRedis, connect, connect_async, redis_for_kiln
from kiln.features.store import AsyncFeatureStore, Event, FeatureStore, UserFeatures

__all__ = [
    "AsyncFeatureStore",
    "EmbeddedRedis",
    "Event",
    "FeatureStore",
    "UserFeatures",
    "connect",
    "connect_async",
    "redis_for_kiln",
]
