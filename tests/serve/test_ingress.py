"""Reading HAProxy's CSV stats (pure logic; the live page is read by every deploy in
tests/serve, whose wait_until_running waits on it)."""

from kiln.serve.control.ingress import count_up, stats_url

STATS = """# pxname,svname,qcur,scur,status,bck,
http_frontend,FRONTEND,,0,OPEN,,
http-digits-mlp,SERVE_REPLICA_digits-mlp-ModelDeployment-6l8o5323,0,0,DOWN,0,
http-digits-mlp,SERVE_PROXY_ACTOR-fallback-33db26fd,0,0,UP,1,
http-digits-mlp,BACKEND,0,0,UP,,
http-digits-cnn,SERVE_REPLICA_digits-cnn-ModelDeployment-a1,0,0,UP,0,
http-digits-cnn,SERVE_REPLICA_digits-cnn-ModelDeployment-b2,0,0,UP,0,
http-digits-cnn,SERVE_PROXY_ACTOR-fallback-33db26fd,0,0,UP,1,
stats,FRONTEND,,0,OPEN,,
"""


def test_only_replicas_that_are_up_count_not_the_backup_proxy():
    assert count_up(STATS) == {"digits-mlp": 0, "digits-cnn": 2}


def test_the_stats_page_is_on_the_dashboards_host():
    assert stats_url("http://10.0.0.5:8265").startswith("http://10.0.0.5:")
    assert stats_url("127.0.0.1:8265").endswith("/stats;csv")
