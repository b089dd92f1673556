"""`--executor ray`: a sweep's cells and a study's trials spread over a Ray cluster. The only package that imports
ray, and only when that executor is chosen.

The head (the machine running `python -m benchmark`, head.py) resolves everything a cell depends on — its config
dict, λ, device — and hands each Ray task plain, typed data (jobs.py): the tracking URI, the sweep's run id, the
protocol as a dict, the estimator plugins to load, where the data lies. The task (worker.py), on whichever machine
Ray places it, loads the data, opens the same tracking store and records its cells as children of the head's
sweep, as a local run does; results never travel through Ray. Resuming by config hash therefore works across
machines: the hash is computed on the head.

A worker that dies mid-cell (killed, out of memory, its machine lost) cannot mark its own runs. Every run a task
starts carries a token of that task (tag `ray_task`) and the machine and process that ran it (`worker_host`,
`worker_pid`); by the token the head — or the task's retry — finds what the dead worker left RUNNING and marks it
FAILED with the reason.
"""
