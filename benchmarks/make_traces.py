"""Write the generated bandwidth traces shipped in ``conf/traces`` (``harness.controller.traces.shipped_trace_files``:
a Mahimahi file and ``seconds Mbit/s`` pairs, synthetic, from fixed seeds). The output is committed; running this
again rewrites the same bytes, which ``tests/test_scenarios.py`` checks.

    PYTHONPATH=. .venv/bin/python benchmarks/make_traces.py
"""

from __future__ import annotations

from harness.controller.traces import TRACE_DIR, load_trace, shipped_trace_files


def main() -> None:
    for name, text in shipped_trace_files().items():
        path = TRACE_DIR / name
        path.write_text(text)
        trace = load_trace(path)
        print(f"wrote {path.name}: {trace.period_s:g} s, {min(trace.mbps):.2f}-{max(trace.mbps):.2f} Mbit/s, "
              f"mean {trace.mean_mbps:.2f}, {len(trace.times_s)} steps")


if __name__ == "__main__":
    main()
