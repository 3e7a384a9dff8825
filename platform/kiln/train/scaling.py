"""Ray's fixed-size scaling policy, less its requests to the autoscaling coordinator.

A Train run's scaling policy tells Ray's autoscaling coordinator (a detached actor that imports
Ray Data, started by the cluster's first run) what its workers need, so that an autoscaler adds
nodes for them and Ray Data leaves them their share of the cluster. On the one-machine cluster
that `kiln train` or `kiln tune` starts for itself neither can happen, and the coordinator's
process cost a second of CPU on 2 cores while the run's workers started, plus a round trip
that the controller waited for before it asked for them. The run's controller unpickles this
policy: the module imports nothing heavier than Ray Train's own policy.
"""

from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy


class FixedWorkersNoRequests(FixedScalingPolicy):
    """The workers' placement group is asked for as by Ray's policy; the coordinator is not
    told, nor started."""

    def after_controller_start(self, train_run_context) -> None:
        pass  # no coordinator client: cancelling the request at the end does nothing

    def _maybe_send_resource_request(self) -> None:
        pass
