"""What runs the models: lanes of jobs, and the model workers that drain them.

    route -> queue (queue_manager.py) -> lane (lanes.py) -> model worker (model_process.py,
    or in_process.py) -> pipeline (pipelines/) -> result file

Each pipeline has its own lane, so a depth map never waits behind a 3D object; each lane
has its workers, one per device and MAX_CONCURRENT slot (pool.py), each pinned to its one
device (devices.py).
"""
