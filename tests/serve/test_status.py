"""`kiln serve status`'s reading of the nodes' metrics (pure logic: the live status is in
test_cli.py)."""

from prometheus_client.parser import text_string_to_metric_families

from kiln.serve.control.status import served_versions


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def requests(v1: int, v2: int) -> str:
    return (
        "# TYPE ray_kiln_requests counter\n"
        f'ray_kiln_requests_total{{model="digits-cnn",version="1",arm="",code="200"}} {v1}\n'
        f'ray_kiln_requests_total{{model="digits-cnn",version="2",arm="",code="200"}} {v2}\n'
    )


GAUGE = '# TYPE ray_kiln_model_version gauge\nray_kiln_model_version{model="digits-cnn"} 2\n'


def test_the_version_gauge_names_the_served_version():
    before, after = samples(requests(50, 0) + GAUGE), samples(requests(90, 5) + GAUGE)
    assert served_versions(before, after) == {"digits-cnn": 2}  # the gauge, not the traffic


def test_a_gauge_sample_the_agent_dropped_is_stood_in_for():
    """Ray's agent drops a gauge not exported again within two report intervals: on a busy
    node one scrape can lack it."""
    assert served_versions(samples(requests(0, 0) + GAUGE), samples(requests(0, 9))) == {
        "digits-cnn": 2
    }
    # Neither scrape has it: the version that answered most of the window's requests.
    assert served_versions(samples(requests(10, 0)), samples(requests(12, 40))) == {"digits-cnn": 2}
    assert served_versions(samples(requests(0, 0)), samples(requests(0, 0))) == {}
