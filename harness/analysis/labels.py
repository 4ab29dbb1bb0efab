"""The names a run is shown by, wherever it is shown (end-of-run summary, notebook, MLflow tag ``model_label``), and
the commands a reader is told to run. Plain strings only: no pandas, so the recorder imports this cheaply."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

RUN = ".venv/bin/python run.py"  # the project's interpreter: a bare `python` outside the venv lacks the packages
CUSTOM = "custom"  # the name conf/model/custom.yaml gives every model set on the command line
# The report's own MLflow runs: one per `make report` in the experiment REPORTS, its figures as artifacts, tagged so
# that no reader takes one for a measurement (it has no params, metrics or verdict); earlier reports logged theirs,
# when asked to, in paper_figures. Neither experiment holds runs to read.
REPORTS, REPORT_TAG = "reports", "report"
REPORT_EXPERIMENTS = (REPORTS, "paper_figures")
MARKERS = "osD^v<>pPX*h"


def input_size(input_shape: Any) -> str:
    """``[1, 3, 64, 64]`` (a list or its recorded text) -> ``64x64``; empty when there are fewer than two dims."""
    dims = re.findall(r"\d+", str(input_shape))
    return "x".join(dims[-2:]) if len(dims) >= 2 else ""


def model_name(name: Any, target: Any) -> str:
    """A model's name: its preset's, or for a model set on the command line (named ``custom``) its factory."""
    return str(target) if str(name) == CUSTOM and isinstance(target, str) and target else str(name)


def model_label(name: Any, target: Any, input_shape: Any) -> str:
    """One label per model, wherever a run is shown: its name and its input size (the same model at another size
    is another workload): ``vgg16 224x224``, ``mymodels.tiny.build 64x64``."""
    base, size = model_name(name, target), input_size(input_shape)
    return f"{base} {size}" if size else base


def link_rates(link_dir: Path) -> dict[str, float]:
    """The rate each link preset (``conf/link/*.yaml``) names, to tell a run that overrode it."""
    rates = {}
    for path in sorted(link_dir.glob("*.yaml")):
        preset = yaml.safe_load(path.read_text()) or {}
        if "bandwidth_mbps" in preset:
            rates[str(preset.get("name", path.stem))] = float(preset["bandwidth_mbps"])
    return rates


def link_label(name: Any, rate_mbps: Any, preset_rates: Mapping[str, float]) -> str:
    """The link a run really had: the preset's name where the run kept its rate, else the name with the rate it was
    set to (``gigabit, set to 1.1``: ``link.bandwidth_mbps=1.1`` on the gigabit preset)."""
    try:
        rate = float(rate_mbps)
    except (TypeError, ValueError):
        return str(name)
    known = preset_rates.get(str(name))
    if known is None or math.isclose(known, rate):
        return str(name)
    return f"{name}, set to {rate:g}"


def command(overrides: Mapping[str, Any], sweep: bool = False) -> str:
    """The ``run.py`` command line that records these overrides, quoted for a shell."""
    words = [f"{key}={value}" for key, value in overrides.items()]
    return " ".join([RUN, *(["-m"] if sweep else []), *map(shlex.quote, words)])


def method_styles(methods: Iterable[str]) -> dict[str, dict[str, str]]:
    """One colour and marker per method, the same in every figure: the order given (the conf/method presets first,
    then any others, sorted) decides, never the methods a panel happens to hold."""
    ordered = dict.fromkeys(methods)
    return {m: {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)]} for i, m in enumerate(ordered)}
