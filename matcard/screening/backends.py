"""Where shards run: in the calling process, in local worker processes, or on a Dask cluster.

All three expose the same three calls (submit / wait_any / close) over futures, so the screening
loop that reads, dispatches and commits shards is written once.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from typing import Any

from matcard.errors import MatcardError, UsageError
from matcard.screening.worker import (
    ShardOutput,
    ShardTask,
    init_process_worker,
    run_shard,
    run_shard_in_process_worker,
    run_shard_on_dask,
)


class Backend:
    """Run shards; at most ``max_in_flight`` are submitted and not yet collected at any time."""

    name = "base"
    max_in_flight = 1
    # Build graphs (and predict) in the structure reader's worker processes (GraphPreparer): worth it
    # only where the shards run in this process, which would otherwise do that serially; shard workers
    # of the other backends do it in parallel already and would receive the graphs pickled twice.
    prepare_in_reader = False

    def submit(self, task: ShardTask) -> Any:
        raise NotImplementedError

    def wait_any(self, futures: list[Any]) -> list[Any]:
        """Block until at least one future is done; return the done ones."""
        raise NotImplementedError

    def result(self, future: Any) -> ShardOutput:
        return future.result()

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


class InProcessBackend(Backend):
    """Runs each shard synchronously in the calling process (``workers=1``)."""

    name = "in-process"
    prepare_in_reader = True

    def __init__(self, model: Any) -> None:
        import torch

        self.model = model
        # The structure reader already keeps the other cores busy parsing; torch's own intra-op
        # threads would only compete with it (measured: slower end to end on 2 cores).
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def submit(self, task: ShardTask) -> cf.Future[ShardOutput]:
        future: cf.Future[ShardOutput] = cf.Future()
        try:
            future.set_result(run_shard(task, self.model))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def wait_any(self, futures: list[Any]) -> list[Any]:
        return [f for f in futures if f.done()]

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads)


class ProcessBackend(Backend):
    """``workers`` local processes (spawned: safe with torch's thread pools), one model each."""

    def __init__(self, model: Any, workers: int) -> None:
        self.workers = workers
        self.name = f"{workers} local processes"
        self.max_in_flight = 2 * workers  # keeps every worker busy while the reader fills the next shard
        self.pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_process_worker,
            initargs=(model,),
        )

    def submit(self, task: ShardTask) -> cf.Future[ShardOutput]:
        return self.pool.submit(run_shard_in_process_worker, task)

    def wait_any(self, futures: list[Any]) -> list[Any]:
        done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, future: Any) -> ShardOutput:
        try:
            return future.result()
        except cf.process.BrokenProcessPool as exc:
            raise MatcardError(
                "a screening worker process died: out of memory, or a script that screens with "
                'workers > 1 without an `if __name__ == "__main__":` guard (workers are spawned and '
                "import the main module); finished shards are saved - rerun with --resume to continue"
            ) from exc

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskBackend(Backend):
    """Shards as tasks on an existing Dask distributed cluster; the model is broadcast once."""

    def __init__(self, model: Any, scheduler: Any) -> None:
        try:
            import distributed
        except ImportError as exc:  # pragma: no cover - dask[distributed] is a dependency
            raise UsageError("--scheduler needs dask[distributed] installed") from exc
        self._distributed = distributed
        self._owns_client = not isinstance(scheduler, distributed.Client)
        try:
            self.client = distributed.Client(scheduler, timeout="15s") if self._owns_client else scheduler
        except (OSError, TimeoutError) as exc:
            raise MatcardError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from exc
        n_threads = sum(self.client.nthreads().values()) or 1
        self.max_in_flight = 2 * n_threads
        self.name = f"Dask at {self.client.scheduler.address} ({len(self.client.nthreads())} workers)"
        self.model = self.client.scatter(model, broadcast=True, hash=False)

    def submit(self, task: ShardTask) -> Any:
        # pure=False: a shard is submitted once; no need to hash a large task for deduplication
        return self.client.submit(run_shard_on_dask, task, self.model, pure=False, retries=1)

    def wait_any(self, futures: list[Any]) -> list[Any]:
        done = self._distributed.wait(futures, return_when="FIRST_COMPLETED").done
        return list(done)

    def close(self) -> None:
        try:
            self.client.cancel(self.model)
        finally:
            if self._owns_client:
                self.client.close()


def make_backend(model: Any, model_ref: Any, *, workers: int, scheduler: Any | None) -> Backend:
    """``model_ref`` (a bundle path when known, else the model) is what local processes load;
    Dask workers get the model object itself, broadcast once, since they may not share our disk."""
    if scheduler is not None:
        return DaskBackend(model, scheduler)
    if workers <= 1:
        return InProcessBackend(model)
    return ProcessBackend(model_ref, workers)
