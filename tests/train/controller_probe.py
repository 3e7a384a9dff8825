"""A Ray Train callback that runs on a run's controller and writes down, when the run ends,
whether torch was imported in the controller's process (tests/train/test_trainer.py).
Ray builds it from RAY_TRAIN_CALLBACKS on the driver: this module imports nothing heavy."""

import os
import sys

from ray.train.v2._internal.execution.callback import ControllerCallback

FILE_ENV = "KILN_TEST_CONTROLLER_PROBE"


class TorchProbe(ControllerCallback):
    def __init__(self) -> None:
        self.path = os.environ[FILE_ENV]  # read on the driver, where Ray builds the callback

    def after_controller_finish(self, result) -> None:
        with open(self.path, "a") as out:
            out.write(f"torch imported: {'torch' in sys.modules}\n")
