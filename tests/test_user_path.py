"""The user's path: extension contracts that explain themselves, configuration errors in one line, honest
provenance, and runs that say what they found (and retry an overrun emulation at a higher TDF)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from harness.config import ConfigError, explain, register, resolve
from harness.controller import records
from harness.model.graph import COSTED_KINDS, build_graph
from harness.model.models import ModelBuildError, ModelSpec, build_model
from partitioners.base import Partitioner
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e  # a new user's path through run.py

register()


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A copy of conf/ that a test may add the user's own YAMLs to."""
    return Path(shutil.copytree(ROOT / "conf", tmp_path / "conf"))


def resolved(conf: Path, overrides: list[str]):
    """Compose and resolve as run.py does, with Hydra's choices set (so that errors can name the YAML)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # as a job receives it
        return resolve(cfg)


def composition_error(conf: Path, overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:
        resolved(conf, overrides)
    line = explain(info.value)
    assert line is not None and "\n" not in line, info.value
    return line


def test_a_misspelled_key_in_a_hardware_yaml_names_key_file_and_accepted_keys(conf: Path) -> None:
    (conf / "hardware" / "rpi4_1080ti.yaml").write_text(
        "defaults:\n  - /profile@device: raspberry_pi_4\n  - /profile@server: gtx1080ti\n  - _self_\n"
        "name: rpi4_1080ti\ntopolgy: pair\n")
    line = composition_error(conf, ["hardware=rpi4_1080ti"])
    assert line == ("unknown key 'hardware.topolgy' in conf/hardware/rpi4_1080ti.yaml; "
                    "accepted keys: name, topology, num_servers, device, server")


def test_a_misspelled_override_names_the_command_line(conf: Path) -> None:
    line = composition_error(conf, ["link.bandwitdh_mbps=5"])
    assert line.startswith("unknown key 'link.bandwitdh_mbps' in the command line; accepted keys: name, bandwidth_mbps")


def test_a_profile_key_its_class_does_not_take_is_refused(conf: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolved(conf, ["hardware=xavier_1080ti", "+hardware.device.peak_gflop=3"])
    assert str(info.value).startswith("unknown key 'peak_gflop' in conf/profile/jetson_agx_xavier.yaml")
    assert "accepted keys: _target_, name, peak_gflops," in str(info.value)


def test_an_efficiency_key_that_is_no_op_kind_is_refused(conf: Path) -> None:
    profile = (conf / "profile" / "gtx1080ti.yaml").read_text()
    (conf / "profile" / "gtx1080ti.yaml").write_text(profile.replace("efficiency: {conv2d: 0.8", "efficiency: {Conv2d: 0.8"))
    with pytest.raises(ConfigError, match=r"conf/profile/gtx1080ti.yaml.*efficiency key 'Conv2d' is not an op kind"
                                          r".*accepted \(lower case\): .*conv2d"):
        resolved(conf, ["hardware=xavier_1080ti"])


def test_costed_kinds_cover_every_node_with_arithmetic() -> None:
    for name in ("resnet18", "mobilenet_v2"):
        graph = build_graph(ModelSpec(name, f"torchvision.models.{name}", (1, 3, 32, 32), args={"weights": None}))
        assert {n.kind for n in graph.nodes.values() if n.flops} <= COSTED_KINDS


def test_a_method_yaml_needs_only_its_target_and_own_options(conf: Path) -> None:
    (conf / "method" / "half.yaml").write_text("_target_: tests.user_methods.Half\n")
    (conf / "method" / "fraction.yaml").write_text("_target_: tests.user_methods.Fraction\nfraction: 0.25\n")
    half = resolved(conf, ["method=half", "hardware=xavier_1080ti"])
    assert half.method.name == "half" and half.method.kind == "cut"
    assert half.config["method"]["name"] == "half"  # recorded as params.method.name
    fraction = resolved(conf, ["method=fraction", "hardware=xavier_1080ti"])
    assert fraction.method.name == "fraction" and fraction.method.fraction == 0.25


def test_a_method_option_its_constructor_does_not_take_is_refused(conf: Path) -> None:
    (conf / "method" / "fraction.yaml").write_text("_target_: tests.user_methods.Fraction\nfractoin: 0.25\n")
    with pytest.raises(ConfigError) as info:
        resolved(conf, ["method=fraction"])
    assert str(info.value) == ("unknown key 'fractoin' in conf/method/fraction.yaml (method 'fraction'); "
                               "accepted keys: _target_, name, fraction")
    (conf / "method" / "fraction.yaml").write_text("_target_: tests.user_methods.Fraction\nfraction: 2\n")
    with pytest.raises(ConfigError, match=r"method 'fraction' \(conf/method/fraction.yaml\): fraction must be in"):
        resolved(conf, ["method=fraction"])


def test_a_method_kind_is_checked_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="kind = 'split'; a method's kind is 'cut' or 'spatial'"):
        type("Odd", (Partitioner,), {"kind": "split"})


def test_an_unimportable_target_names_the_folder_to_make_importable(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere" / "mypkg").mkdir(parents=True)
    (tmp_path / "elsewhere" / "mypkg" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelBuildError, match=rf"the folder {tmp_path / 'elsewhere'} \(which holds mypkg\) must be "
                                              rf"importable: export PYTHONPATH={tmp_path / 'elsewhere'}"):
        build_model(ModelSpec("mine", "mypkg.models.build", (1, 3, 32, 32)))


def test_provenance_counts_untracked_source_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    git = lambda *args: subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "run.py").write_text("print('hi')\n")
    git("add", "run.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(records, "PROJECT_ROOT", tmp_path)
    clean, clean_hash = records.git_commit(), records.code_hash()
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "notes.txt").write_text("not code\n")
    assert records.git_commit() == clean and records.code_hash() == clean_hash
    (tmp_path / "half.py").write_text("class Half: ...\n")  # a new method file, never committed
    assert records.git_commit() == f"{clean}-dirty"
    first = records.code_hash()
    assert first != clean_hash
    (tmp_path / "half.py").write_text("class Half: pass\n")
    assert records.code_hash() not in (first, clean_hash)


def test_a_users_config_folder_is_hashed_with_the_code_and_leaves_the_project_clean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "my_conf" / "model"
    mine.mkdir(parents=True)
    (mine / "tiny.yaml").write_text("name: tiny\n")
    monkeypatch.setenv("SPLITBENCH_CONF", str(tmp_path / "my_conf"))
    assert records.user_config_files() == [(mine / "tiny.yaml").resolve()]
    before = records.code_hash(records.user_config_files())
    (mine / "tiny.yaml").write_text("name: tiny\nseed: 1\n")
    assert records.code_hash(records.user_config_files()) != before
    assert not any(p.is_relative_to(tmp_path) for p in records.source_files())  # not the project's: never -dirty


def test_configuration_errors_print_one_line_without_traceback(tracking_uri: str, tmp_path: Path,
                                                              empty_store: Path) -> None:
    cases = {"link.bandwitdh_mbps=5": "error: unknown key 'link.bandwitdh_mbps' in the command line; accepted keys:",
             "hardware.num_servers=9": "error: hardware.num_servers must be in 2..4, got 9",
             "model.input_shape=[3,64,64]": "error: model.input_shape=[3, 64, 64] does not fit model 'resnet18'"}
    for override, line in cases.items():
        proc = run_cli(["model=resnet18", override], tracking_uri, tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(line), proc.stderr
    assert (tmp_path / "mlflow.db").read_bytes() == empty_store.read_bytes()  # nothing ran, nothing recorded
    full = run_cli(["hardware.num_servers=9"], tracking_uri, tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "got 9" in full.stderr


def test_an_overrun_emulation_is_retried_at_a_higher_tdf_and_linked(tracking_uri: str, tmp_path: Path) -> None:
    # TDF 1 on a GTX 1080 Ti server: ~150 MFLOP that one core here computes some 50x slower overrun their budgets on
    # any machine (a smaller model can fit a 1080 Ti's per-kernel overheads on a quiet one); 500x leaves room to spare
    proc = run_cli(["model=custom", "model._target_=tests.user_models.build", "model.input_shape=[1,3,128,128]",
                    "+model.args.width=32", "hardware=xavier_1080ti", "method=server_only", "runtime.tdf=1",
                    "runtime.retries=1", "runtime.retry_tdf_factor=500", "scenario.inferences=2"], tracking_uri,
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=["own_runs"]).sort_values("start_time")
    assert len(df) == 2
    first, last = df.iloc[0], df.iloc[1]
    assert first["status"] == "FAILED" and first["tags.valid"] == "false" and first["metrics.tdf"] == 1.0
    assert "overran" in first["tags.invalid_reason"] and "retried at a higher TDF" in first["tags.invalid_reason"]
    assert first["tags.retried_as"] == last["run_id"] and last["tags.retry_of"] == first["run_id"]
    assert last["status"] == "FINISHED" and last["tags.valid"] == "true" and last["tags.attempt"] == "2"
    assert last["metrics.tdf"] == 500.0 and last["params.runtime.tdf"] == "500.0"
    assert last["tags.code_hash"] == first["tags.code_hash"] and len(last["tags.code_hash"]) == 64
    # one name for the user's model: MLflow's tag and run name, and the summary below
    assert last["tags.model_label"] == "tests.user_models.build 128x128"
    assert last["tags.mlflow.runName"] == "server_only-tests.user_models.build-xavier_1080ti-1000mbps"
    # the summary shows the counted attempt only, the experiment and how to open it
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split() == ["method", "model", "hardware", "link", "Mbit/s", "decision", "ms", "p50", "ms",
                                     "95%", "CI", "inf/s", "valid", "run", "id"]
    assert lines[header + 2].split()[:4] == ["server_only", "tests.user_models.build", "128x128", "xavier_1080ti"]
    assert "valid (attempt 2)" in lines[header + 2] and lines[header + 2].endswith(last["run_id"])
    assert lines[header + 3].startswith("1 job(s), 1 valid; 1 INVALID attempt(s) retried at a higher TDF")
    assert "MLflow experiment 'own_runs'" in lines[header + 3]
    assert lines[header + 4] == f"UI:       mlflow ui --backend-store-uri {tracking_uri}   # then " \
                                "http://127.0.0.1:5000, experiment own_runs"
    assert lines[header + 5].startswith(f"report:   MLFLOW_TRACKING_URI={tracking_uri} EXPERIMENTS=own_runs ")
    assert lines[header + 5].endswith("notebooks/paper_tables.py") and " python " not in lines[header + 5]


def test_a_users_own_config_folder_is_searched_outside_the_clone(tracking_uri: str, tmp_path: Path) -> None:
    mine = tmp_path / "my_conf"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "tiny.yaml").write_text("name: tiny\n_target_: tests.user_models.build\n"
                                              "input_shape: [1, 3, 64, 64]\nseed: 0\nargs: {width: 8}\n")
    proc = run_cli(["mode=predict", "model=tiny", "hardware=xavier_1080ti", "method=dads"], tracking_uri, tmp_path,
                   env={"SPLITBENCH_CONF": str(mine)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny" in proc.stdout and "predicted only" in proc.stdout
    proc = run_cli(["mode=predict", "model=tiny"], tracking_uri, tmp_path, env={"SPLITBENCH_CONF": str(tmp_path / "no")})
    assert proc.returncode != 0 and "SPLITBENCH_CONF=" in proc.stderr and "is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr

