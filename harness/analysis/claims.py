"""The papers' claims against recorded runs: the setting a claim was made for (a run is at it only when its model,
input size, hardware and link all match), and how a claim's range compares with measured and predicted gains. The
papers' numbers themselves are data the caller passes (``notebooks/papers.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Setting:
    """Where a paper's claim was made: hardware names, model labels (name and input size, ``vgg16 224x224``), link
    rates in Mbit/s, and where it matters the scenario (load) and the number of edge servers."""

    hardware: tuple[str, ...]
    models: tuple[str, ...]
    rates_mbps: tuple[float, ...]
    scenario: str | None = None
    num_servers: tuple[int, ...] | None = None

    def __str__(self) -> str:
        extra = [f"{self.scenario}"] if self.scenario else []
        extra += [f"N={','.join(map(str, self.num_servers))}"] if self.num_servers else []
        return "; ".join([", ".join(self.hardware), ", ".join(self.models),
                          ", ".join(f"{r:g}" for r in self.rates_mbps) + " Mbit/s", *extra])

    def holds(self, table: pd.DataFrame | pd.Series) -> np.ndarray:
        """Which rows (columns or index levels hardware, model, bandwidth_mbps, and scenario / num_servers where the
        setting names them) are at this setting."""
        if not len(table):
            return np.zeros(0, dtype=bool)
        names = list(table.index.names) if name_in_index(table) else list(table.columns)
        get = (lambda name: table.index.get_level_values(name)) if name_in_index(table) else (lambda name: table[name])
        keep = np.isin(get("hardware"), self.hardware) & np.isin(get("model"), self.models)
        if "bandwidth_mbps" in names:  # a decision-time table holds the median over rates: no rate to match
            keep &= np.isclose(np.asarray(get("bandwidth_mbps"), dtype=float)[:, None], self.rates_mbps).any(axis=1)
        if self.scenario is not None:
            keep &= np.asarray(get("scenario")) == self.scenario
        if self.num_servers is not None:
            keep &= np.isin(get("num_servers"), self.num_servers)
        return np.asarray(keep, dtype=bool)


def name_in_index(table: pd.DataFrame | pd.Series) -> bool:
    return "hardware" in (table.index.names or [])


def span(values: pd.Series) -> str:
    """``low-high`` of the values, ``-`` when there are none."""
    values = values.dropna()
    return f"{values.min():.2f}-{values.max():.2f}" if len(values) else "-"


def in_range(values: pd.Series, low: float, high: float = np.inf) -> str:
    """How many of the values fall in the claimed range: ``3 of 5``."""
    values = values.dropna()
    return f"{int(((values >= low) & (values <= high)).sum())} of {len(values)}"


def rates_where(curve: pd.Series, low: float, high: float = np.inf) -> str:
    """The link rates (the curve's index) where the gain lies in [low, high], as a span, of how many swept."""
    curve = curve.dropna().sort_index()
    if not len(curve):
        return "-"
    inside = curve[(curve >= low) & (curve <= high)].index
    if not len(inside):
        return f"nowhere in {curve.index.min():g}-{curve.index.max():g} Mbit/s (max {curve.max():.2f}x)"
    return f"{inside.min():g}-{inside.max():g} Mbit/s ({len(inside)} of {len(curve)} rates)"


def reproduced(points: pd.Series, low: float, high: float = np.inf) -> str:
    """Whether measured gains (index: link rate) reach the claimed range, and where."""
    points = points.dropna()
    if not len(points):
        return "not measured"
    inside = points[(points >= low) & (points <= high)]
    if not len(inside):
        return f"no ({len(points)} measured, best {points.max():.2f}x)"
    return "yes: " + ", ".join(f"{rate:g} Mbit/s: {gain:.2f}x" for rate, gain in inside.items())


def claim_regions(gains: pd.DataFrame, column: str, claim: str, low: float, high: float, setting: Setting,
                  by: tuple[str, ...] = ("hardware", "model", "scenario")) -> pd.DataFrame:
    """Per group (``by``) of a gains table (index: ``by``, bandwidth_mbps, source): whether measured runs reach the
    claimed range, where the predicted ones say it would hold, and whether the runs are at the paper's setting (all
    of them: model, input size, hardware and link; "partly" where only some rates are): a claim is reproduced only
    where both hold."""
    rows = []
    if gains.empty:
        return pd.DataFrame(rows)
    for key, cell in gains.groupby(level=list(by)):
        by_source = {s: part.droplevel([*by, "source"])[column] for s, part in cell.groupby(level="source")}
        measured, predicted = (by_source.get(s, pd.Series(dtype=float)) for s in ("measured", "predicted"))
        at_paper = setting.holds(cell)
        rows.append({"claim": claim, "setting": " · ".join(f"N={k}" if name == "num_servers" else str(k)
                                                          for name, k in zip(by, key)),
                     "paper's setting": "yes" if at_paper.all() else ("partly" if at_paper.any() else "no"),
                     "in the range (measured)": reproduced(measured, low, high),
                     "would hold (predicted)": rates_where(predicted, low, high)})
    return pd.DataFrame(rows)


def claim_check(claim: str, paper: str, values: pd.Series, setting: Setting) -> dict[str, str]:
    """A claim beside measured values (a gains column indexed like a gains table; predicted rows are left out):
    their range at the paper's setting, and the best elsewhere."""
    if "source" in (values.index.names or []):
        values = values[values.index.get_level_values("source") == "measured"]
    at = setting.holds(values)
    rest = values[~at].dropna()
    return {"claim": claim, "paper": paper, "at the paper's setting": span(values[at]),
            "elsewhere (best)": f"{rest.max():.2f}" if len(rest) else "-"}


def range_check(claim: str, paper: str, values: pd.Series, low: float, high: float) -> dict[str, str]:
    """A claimed range beside the values at its setting, measured and predicted apart (index level ``source``)."""
    row = {"claim": claim, "paper": paper}
    for source in ("measured", "predicted"):
        part = values[values.index.get_level_values("source") == source] if len(values) else values
        row[source] = span(part)
        row[f"{source} cells in range"] = in_range(part, low, high)
    return row


def against_offload(gains: pd.Series, claim: str, setting: Setting) -> dict[str, str]:
    """Whether a method still beats compressed offload on the paper's hardware: ``gains`` its latency gains over
    it (a gains column indexed like a gains table, measured and predicted rows apart), restricted to the paper's
    hardware. Measured rows decide where there are any; predicted ones are said to be predicted."""
    if not len(gains):
        return {"claim": claim, "on the paper's hardware": "-", "holds against compressed offload": "not measured"}
    hardware = gains.index.get_level_values("hardware")
    ours = gains[np.isin(hardware, setting.hardware)].dropna()
    source = ours.index.get_level_values("source")
    judged, which = (ours[source == "measured"], "measured") if (source == "measured").any() else (
        ours[source == "predicted"], "predicted")
    if not len(judged):
        return {"claim": claim, "on the paper's hardware": "-", "holds against compressed offload": "not measured"}
    rates = judged.index.get_level_values("bandwidth_mbps")
    where = sorted({float(r) for r, g in zip(rates, judged) if g >= 1})
    verdict = ("yes, at every rate" if len(where) == len(set(rates)) else
               "no: slower at every rate" if not where else
               "only at " + ", ".join(f"{r:g}" for r in where) + " Mbit/s")
    return {"claim": claim, "on the paper's hardware": f"{span(judged)}x ({which})",
            "holds against compressed offload": verdict}
