"""Ctrl-C ends a command with one line: asyncio's report of the notebook cell whose kernel died is dropped."""

import asyncio
import gc
import logging

from nbclient.exceptions import DeadKernelError

from vfnb.cli import drop_dead_kernel_reports


def _task_failing_unretrieved(exc: BaseException) -> None:
    """A task that ends with ``exc`` and is never awaited, as a running cell's is when Ctrl-C stops a study."""
    async def cell():
        raise exc

    loop = asyncio.new_event_loop()
    task = loop.create_task(cell())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    del task
    gc.collect()  # asyncio reports "Task exception was never retrieved" when the task is collected


def test_dead_kernel_reports_are_dropped_and_other_task_failures_still_show(caplog):
    logger = logging.getLogger("asyncio")
    logger.addFilter(drop_dead_kernel_reports)
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            _task_failing_unretrieved(DeadKernelError("Kernel died"))
            _task_failing_unretrieved(ValueError("a real failure"))
    finally:
        logger.removeFilter(drop_dead_kernel_reports)
    reports = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [type(r.exc_info[1]) for r in reports] == [ValueError]


def test_without_the_filter_asyncio_reports_the_dead_kernel(caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _task_failing_unretrieved(DeadKernelError("Kernel died"))
    reports = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [type(r.exc_info[1]) for r in reports] == [DeadKernelError]
