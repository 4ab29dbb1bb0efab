"""Every config composes, and bad values stop before any work with a message naming the value and the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from harness.config import ConfigError, register, resolve_objective, validate


CONF = Path(__file__).resolve().parent.parent / "conf"
register()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=overrides)
    resolve_objective(cfg)
    return cfg


def test_default_config_is_valid() -> None:
    validate(make([]))


@pytest.mark.parametrize("group", ["model", "hardware", "link", "method", "scenario"])
def test_every_option_composes(group: str) -> None:
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        extra = ["model._target_=tests.user_models.build"] if (group, option) == ("model", "custom") else []
        if group == "scenario" and option == "dynamic":
            extra.append("link=trace_stepped")
        cfg = make([f"{group}={option}", *extra])
        assert OmegaConf.select(cfg, group) is not None
        if group == "method":  # spatial methods need a star; cut methods run anywhere
            validate(make([f"method={option}", "hardware=4x_1080ti"]))
        else:
            validate(cfg)


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_preset_composes(option: str) -> None:
    validate(make([f"experiment={option}"]))


def test_unknown_model_lists_the_accepted_ones() -> None:
    with pytest.raises((ConfigCompositionException, MissingConfigException)) as info:
        make(["model=not_a_model"])
    message = str(info.value)
    assert "not_a_model" in message and "vgg16" in message


def test_negative_bandwidth_is_refused_with_its_value() -> None:
    with pytest.raises(ConfigError, match=r"link.bandwidth_mbps must be a finite number > 0 \(Mbit/s\), got -5"):
        validate(make(["link.bandwidth_mbps=-5"]))


def test_the_reports_experiment_is_kept_for_the_reports_figures() -> None:
    with pytest.raises(ConfigError, match=r"experiment.name='reports' holds the report's figures"):
        validate(make(["experiment.name=reports"]))


def test_non_numeric_bandwidth_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException, match="bandwidth_mbps"):
        make(["link.bandwidth_mbps=fast"])


def test_spatial_method_on_a_pair_names_the_accepted_hardware() -> None:
    with pytest.raises(ConfigError, match=r"method 'halp' .* needs a star topology.*4x_1080ti"):
        validate(make(["method=halp", "hardware=xavier_1080ti"]))


def test_bad_scenario_values_are_named() -> None:
    with pytest.raises(ConfigError, match="scenario.inferences must be >= 1, got 0"):
        validate(make(["scenario.inferences=0"]))
    with pytest.raises(ConfigError, match=r"runtime.backend='carrier_pigeon' is not one of"):
        validate(make(["runtime.backend=carrier_pigeon"]))
    with pytest.raises(ConfigError, match="hardware.num_servers must be in 2..4, got 7"):
        validate(make(["hardware=4x_1080ti", "hardware.num_servers=7"]))
    with pytest.raises(ConfigError, match=r"scenario.estimator='psychic' is not one of \['probe', 'smoothed', 'last'"):
        validate(make(["scenario=dynamic", "link=trace_stepped", "scenario.estimator=psychic"]))


def test_stream_scenario_turns_auto_objective_into_throughput() -> None:
    cfg = make(["method=neurosurgeon", "scenario=stream"])
    assert cfg.method.objective == "throughput"
    assert make(["method=neurosurgeon"]).method.objective == "latency"


def test_sweep_size_counts_command_line_and_preset_sweeps() -> None:
    from harness.progress import sweep_size

    cfg = OmegaConf.create({"hydra": {"overrides": {"task": ["method=cic,dads", "link.bandwidth_mbps=1,2,3",
                                                             "model=vgg16"]},
                                      "sweeper": {"params": {"hardware.num_servers": "2,3"}}}})
    assert sweep_size(cfg) == 12
    single = OmegaConf.create({"hydra": {"overrides": {"task": ["model=vgg16"]}, "sweeper": {"params": None}}})
    assert sweep_size(single) == 1
    # The command line narrows a preset's sweep, as the sweeper does: 1 board x 3 N here, not 2 x 2 x 3.
    narrowed = OmegaConf.create({"hydra": {"overrides": {"task": ["hardware=4x_xavier", "hardware.num_servers=2,3,4"]},
                                           "sweeper": {"params": {"hardware": "4x_1080ti,4x_xavier",
                                                                  "hardware.num_servers": "2,3",
                                                                  "link": "ethernet_100,gigabit"}}}})
    assert sweep_size(narrowed) == 3 * 2


def test_a_bad_trace_is_a_configuration_error_before_any_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("1 2 3\n")
    with pytest.raises(ConfigError, match=r"link.trace: bandwidth trace .*bad.txt: first line '1 2 3'"):
        validate(make(["link=trace_stepped", "scenario=dynamic", f"link.trace={path}"]))
    with pytest.raises(ConfigError, match=r"link.trace: bandwidth trace 'nowhere.up' not found"):
        validate(make(["link=trace_stepped", "scenario=dynamic", "link.trace=nowhere.up"]))


def test_spatial_method_under_a_trace_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"method 'halp' cannot follow a bandwidth trace.*single_stream, stream"):
        validate(make(["method=halp", "scenario=dynamic", "link=trace_stepped"]))


def test_the_default_config_resolves_to_the_typed_defaults() -> None:
    """Defaults are written once, in the typed experiment: the composed default config (schema and YAML files
    together) resolves to exactly them, so no copy can drift (max_real_minutes once said 10 in one and None in the
    other)."""
    from harness.config import resolve
    from harness.controller.experiment import Runtime, Scenario

    exp = resolve(make([]))
    assert exp.runtime == Runtime()
    assert exp.scenario == Scenario(name="single_stream")
