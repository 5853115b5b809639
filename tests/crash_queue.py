"""Run a queue on OUTPUT_DIR, finish some jobs, leave one waiting, then die by SIGKILL.

    python tests/crash_queue.py OUTPUT_DIR JOBS

Prints each finished job's id and result file, then `running <id>` and `waiting <id>`
(a video waits when VIDEO is set to a video file's path); the tests damage what
the process left (journal, its -wal file) and start the next queue on the same folder.
"""

import base64
import os
import signal
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]

from PIL import Image  # noqa: E402

from pipelines.lotus import DepthRequest  # noqa: E402
from queue_manager import JobQueue  # noqa: E402
from settings import load_settings  # noqa: E402
from stand_ins import ScriptedPipeline  # noqa: E402

out, count = Path(sys.argv[1]), int(sys.argv[2])
pipeline = ScriptedPipeline()
queue = JobQueue({"lotus": pipeline}, out)
queue.start()
for seed in range(count):
    view = queue.wait(queue.submit("lotus", (DepthRequest(image="x", seed=seed),
                                             Image.new("RGB", (8, 8)))).id, 10)
    print(view.id, view.result.path.name, flush=True)
pipeline.actions[99] = "block"
running = queue.submit("lotus", (DepthRequest(image="x", seed=99), Image.new("RGB", (8, 8))))
while pipeline.started.get(timeout=10) != 99:  # running when the process dies
    pass
print("running", running.id, flush=True)
if os.environ.get("VIDEO"):
    data = Path(os.environ["VIDEO"]).read_bytes()
    request = DepthRequest(video=base64.b64encode(data).decode(), seed=100)
    waiting = queue.submit("lotus", lambda: request.load(load_settings().image_limits))
else:
    waiting = queue.submit("lotus", (DepthRequest(image="x", seed=100),
                                     Image.new("RGB", (8, 8))))
print("waiting", waiting.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
