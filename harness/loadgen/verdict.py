"""The verdict as named checks (after MLPerf's VALID/INVALID: the measurer decides, not the measured)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.loadgen.result import RunResult, measured_seqs, overrun_pct


def overrun_metrics(result: RunResult) -> dict[str, float]:
    """How far real compute overran its emulated budgets in the measured inferences, per span and per inference;
    how many inferences were repeated."""
    seqs = set(measured_seqs(result))
    spans = [s for s in result.spans if s["kind"] == "compute" and s["seq"] in seqs]
    costs = [overrun_pct(result, seq) for seq in seqs]
    return {"max_overrun_pct": 100 * max((s.get("overrun", 0.0) for s in spans), default=0.0),
            "overrun_spans": float(sum(s.get("overrun", 0.0) > 0 for s in spans)), "compute_spans": float(len(spans)),
            "overrun_cost_pct": max(costs, default=0.0), "repeated_inferences": float(len(result.repeats))}

@dataclass(frozen=True)
class Check:
    """One named criterion of the verdict: whether it held, and what was measured. Only a check that
    ``invalidates`` can make a run INVALID; the others say how far its figures can be trusted."""

    name: str
    passed: bool
    detail: str
    invalidates: bool = True

    def tag(self) -> str:
        return f"{'pass' if self.passed else 'fail'}: {self.detail}"[:4000]

# A percentile q is more than the largest sample only from 1 / (1 - q) samples on (MLPerf asks far more for p99).
PERCENTILE_SAMPLES = {50: 2, 90: 10, 99: 100}

def outputs_check(result: RunResult, expected: int) -> Check:
    expected = max(expected, len(result.starts_ns))  # every inference issued, repeats included
    received = len(result.outputs)
    return Check("outputs", received == expected, f"{received} of {expected} outputs received")

def overrun_check(result: RunResult, tolerance_pct: float) -> Check:
    """Real compute that overruns its dilated budget delays everything after it: when the overruns of a measured
    inference add up to more than ``tolerance_pct`` of its latency, the emulation no longer holds. A tiny span that
    overruns by 50 % but costs microseconds does not invalidate a run; warm-up inferences and inferences replaced by
    a repeat do not count."""
    worst_pct, worst_seq = 0.0, None
    for seq in measured_seqs(result):
        if (pct := overrun_pct(result, seq)) > worst_pct:
            worst_pct, worst_seq = pct, seq
    if worst_pct <= tolerance_pct:
        return Check("overrun", True, f"worst inference delayed {worst_pct:.2f}% by overruns (<= {tolerance_pct:g}%)")
    late = [s for s in result.spans if s["kind"] == "compute" and s["seq"] == worst_seq and s.get("overrun", 0) > 0]
    by_endpoint = {e: sum(s["endpoint"] == e for s in late) for e in sorted({s["endpoint"] for s in late})}
    repeated = (f" after {len(result.repeats)} repeated inference(s) at raised TDFs (runtime.max_repeats)"
                if result.repeats else "")
    return Check("overrun", False,
                 f"real compute overran its emulated budgets (TDF {result.tdf_of(worst_seq):.2f}) by {worst_pct:.1f}% "
                 f"of inference {worst_seq}'s latency (> {tolerance_pct:g}%), in compute spans {by_endpoint}"
                 f"{repeated}; raise runtime.tdf or runtime.max_repeats, or run on a quieter machine")

def percentiles_check(result: RunResult) -> Check:
    """Which reported latency percentiles the measured inferences support (p90 from 10, p99 from 100)."""
    measured = len(measured_seqs(result))
    short = [f"p{q} needs {n}" for q, n in PERCENTILE_SAMPLES.items() if measured < n]
    detail = f"{measured} measured inferences" + (f"; {', '.join(short)} (reported, but no more than the largest)"
                                                  if short else ": every percentile supported")
    return Check("percentiles", not short, detail, invalidates=False)

def stamps_check(result: RunResult) -> Check:
    """Whose clock stamped each inference's start and completion: a remote worker's, within its offset's
    uncertainty, or the controller's (the start on issue, the completion on arrival) where that uncertainty was too
    large to trust."""
    untrusted = {e: c["uncertainty_ms"] for e, c in result.clocks.items() if c.get("completion_stamp") == "controller"}
    if untrusted:
        return Check("stamps", False, "starts stamped on issue and completions on arrival for " + ", ".join(
            f"{e} (clock uncertain by {ms:.2f} ms)" for e, ms in untrusted.items()), invalidates=False)
    where = "remote workers' clocks" if result.clocks else "this machine's clock"
    return Check("stamps", True, f"starts and completions stamped by {where}", invalidates=False)

def checks(result: RunResult, expected: int, tolerance_pct: float) -> list[Check]:
    """The verdict's criteria, in the order they are judged (MLPerf's VALID/INVALID: the measurer decides, not the
    measured). ``expected``: the outputs the scenario asks for, before any repeat."""
    outputs = outputs_check(result, expected)
    judged = [outputs] if not outputs.passed else [outputs, overrun_check(result, tolerance_pct)]
    return [*judged, percentiles_check(result), stamps_check(result)]

def verdict(result: RunResult, expected: int, tolerance_pct: float) -> str | None:
    """Why a run is invalid (the first criterion that invalidates and failed), or None."""
    failed = [c for c in checks(result, expected, tolerance_pct) if c.invalidates and not c.passed]
    return failed[0].detail if failed else None
