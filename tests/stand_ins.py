"""Stand-ins for the tests: a scriptable pipeline for the queue and HTTP tests (not a model),
and a tiny ONNX model where rembg looks for u2net.

The pipeline implements `pipelines.base.Pipeline`; what each job does is chosen by its `seed`:
`pipeline.actions[seed] = "block" | "fail" | "oom" | "die" | "invalid"`, default "ok".
A blocked job waits for `pipeline.release` (or its own event in `pipeline.gates`).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import torch
from onnx import TensorProto, helper, save

from pipelines.base import Result
from pipelines.errors import InvalidInput
from pipelines.lotus import DepthRequest
from pipelines.outputs import atomic_write
from workers.worker import WorkerLost


class WorkerDeath(BaseException):
    """Escapes the worker's `except Exception`, killing the thread as a bug would."""


class ScriptedPipeline:
    name = "lotus"
    options_model = DepthRequest
    oom_advice = "Try a smaller processing_res."

    def __init__(self):
        self.actions: dict[int, str] = {}
        self.release = threading.Event()
        self.started: queue.Queue[int] = queue.Queue()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()
        self.loaded = False

    def load(self) -> None:
        self.loaded = True

    def check(self, options) -> None:
        pass

    def run(self, options, image, output_stem: Path, progress) -> Result:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.started.put(options.seed)
            progress("working", 0.25)
            action = self.actions.get(options.seed, "ok")
            if action == "block":
                assert self.release.wait(30), "test never released the job"
                progress("finishing", 0.75)
            elif action == "fail":
                raise RuntimeError("the model broke")
            elif action == "invalid":
                raise InvalidInput("this image has no object in it")
            elif action == "oom":
                self.oom_tensor = torch.zeros(1)
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            elif action == "die":
                raise WorkerDeath()
            elif action == "handed back":  # as a model process stopped under its job
                assert self.release.wait(30), "test never released the job"
                return WorkerLost("the model worker stopped")  # the job waits again
            text = f"seed={options.seed} size={image.size}".encode()
            path = atomic_write(Path(f"{output_stem}.txt"), lambda tmp: tmp.write_bytes(text))
            info = {"min": 0.0, "max": 1.0, "width": image.width, "height": image.height}
            return Result(path, "text/plain", "result.txt", info)
        finally:
            with self._lock:
                self.running -= 1


def brightness_onnx(path: Path) -> Path:
    """A tiny stand-in for u2net (`U2NET_HOME/u2net.onnx`): the mask is the image's
    brightness, so rembg's soft mask is known from the photo."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input.1"], ["mean"], axes=[1], keepdims=1)],
        "brightness", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                     [1, 3, 320, 320])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 1, 320, 320])])
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
         path)
    return path
