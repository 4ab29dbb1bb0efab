"""The scenario's schedule: inferences issued to the first worker on this machine's clock, at most so many in
flight, completions filed as they arrive, an overrun inference repeated; progress as it goes."""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Callable, Protocol

from tqdm import tqdm

from harness.loadgen.dilation import Repeats
from harness.loadgen.result import RunResult, measured_seqs
import harness.worker.wire as wire  # the protocol only: the load generator starts no worker


class Workers(Protocol):
    """What the measurer needs of the controller: send a command, read the next report."""

    endpoints: dict[str, Any]
    on_retime: list[Callable[[float], None]]  # told every new TDF (e.g. a trace player keeps its place)

    def send(self, endpoint: str, obj: dict[str, Any]) -> None: ...

    def next_message(self) -> tuple[Any, wire.Frame]: ...

class ProgressLines:
    """Progress where stderr is no terminal (a log file, a CI job): a plain line at the start, at each tenth and at
    the end, where a bar's carriage returns and escape codes would garble the log. The part of tqdm's interface
    the measurer uses."""

    def __init__(self, total: int, disable: bool = False) -> None:
        self.total, self.n, self.disable, self.said = total, 0, disable, -1
        self._say()

    def _say(self) -> None:
        if not self.disable and self.n != self.said:
            print(f"inferences: {self.n}/{self.total}", file=sys.stderr, flush=True)
            self.said = self.n

    def update(self, count: int = 1) -> None:
        step = max(1, self.total // 10)
        before, self.n = self.n, self.n + count
        if self.n // step != before // step or self.n >= self.total:
            self._say()

    def refresh(self) -> None:
        """A new total (repeats added): said at the next tenth."""

    def close(self) -> None:
        self._say()

def absorb(frame: wire.Frame, result: RunResult) -> int | None:
    """File a worker's report into ``result``; the inference it completes, if it completes one."""
    if frame.kind == wire.Kind.TENSOR:
        result.outputs[frame.seq] = frame.tensor
    elif frame.kind == wire.Kind.JSON and frame.obj.get("event") == "spans":
        result.spans.extend(frame.obj["spans"])
        if "received_ns" in frame.obj:
            result.received_ns[int(frame.obj["seq"])] = int(frame.obj["received_ns"])
        if frame.obj.get("final"):
            result.ends_ns[frame.obj["seq"]] = int(frame.obj["done_ns"])
            return int(frame.obj["seq"])
    elif frame.kind == wire.Kind.JSON:
        result.events.append(frame.obj)
    return None

def wait_all(controller: Workers, event: str, result: RunResult,
             endpoints: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Wait until every worker (or those named) reports ``event``; their reports, by endpoint. Other reports are
    filed into ``result`` meanwhile."""
    pending, reports = set(controller.endpoints if endpoints is None else endpoints), {}
    while pending:
        ep, frame = controller.next_message()
        if frame.kind == wire.Kind.JSON and frame.obj.get("event") == event and ep.name in pending:
            pending.discard(ep.name)
            reports[ep.name] = frame.obj
        else:
            absorb(frame, result)
    return reports

def wait_for_span(controller: Workers, result: RunResult, seq: int, kind: str) -> None:
    """Wait until some worker has reported a ``kind`` span of inference ``seq``."""
    while not any(s["seq"] == seq and s["kind"] == kind for s in result.spans):
        absorb(controller.next_message()[1], result)

BeforeIssue = Callable[[int], None]

def drive(controller: Workers, first: str, total: int, warmup: int, in_flight: int, result: RunResult,
          before_issue: BeforeIssue | None = None, progress: bool = True,
          after_warmup: Callable[[], None] | None = None, repeats: "Repeats | None" = None) -> None:
    """Issue ``total`` inferences to the first endpoint with at most ``in_flight`` outstanding; collect results.

    With ``repeats``, a measured inference whose overruns broke the tolerance is discarded and issued again at a
    higher TDF, once nothing is in flight. With several in flight the measured phase starts over instead: its
    throughput must come from one TDF and an unbroken pipeline.
    """
    queue, outstanding, next_seq = deque(range(total)), set(), total
    warmed, overran = warmup == 0, None
    bar = (tqdm(total=total, desc="inferences", unit="inf", disable=not progress, leave=False) if sys.stderr.isatty()
           else ProgressLines(total, disable=not progress))
    if warmed and after_warmup is not None:
        after_warmup()
    while queue or outstanding:
        if overran is not None and not outstanding:
            if in_flight == 1:
                discard, count = [overran], 1
            else:
                discard, count = measured_seqs(result), total - warmup
                queue.clear()  # the measured phase starts over
            repeats.repeat(result, overran, discard)
            result.discarded.update(discard)
            again = list(range(next_seq, next_seq + count))
            next_seq += count
            queue.extendleft(reversed(again))
            result.repeats[-1]["issued_again"] = again
            bar.total = bar.n + len(queue)
            bar.refresh()
            overran = None
        # Warm-up inferences run one at a time; measured ones keep ``in_flight`` outstanding.
        limit = in_flight if warmed else 1
        while overran is None and queue and len(outstanding) < limit and (warmed or queue[0] < warmup):
            seq = queue.popleft()
            if before_issue is not None:
                before_issue(seq)
            result.seq_tdf[seq] = result.tdf
            result.starts_ns[seq] = time.monotonic_ns()  # the measurer's clock: a query starts when issued
            controller.send(first, {"cmd": "infer", "seq": seq})
            outstanding.add(seq)
        if not outstanding:
            continue
        done = absorb(controller.next_message()[1], result)
        if done is None:
            continue
        outstanding.discard(done)
        bar.update(1)
        if not warmed and not outstanding and (not queue or queue[0] >= warmup):
            warmed = True
            if after_warmup is not None:
                after_warmup()
        if (repeats is not None and overran is None and done >= warmup and done not in result.discarded
                and repeats.should_repeat(result, done)):
            overran = done
    bar.close()
