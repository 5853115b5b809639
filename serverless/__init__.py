"""What the RunPod serverless worker (handler.py, its entry point) adds to the queue's job
path: RunPod's input schema (`inputs`) and the answer's files (`answers`)."""
