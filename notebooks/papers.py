"""The papers' own numbers, as data, for notebooks/paper_tables.ipynb to print beside what the harness measured.

Taken from the papers themselves (the abstracts; DADS read in full). Every entry names its source. Where a paper
gives no figure for a cell, the notebook prints :data:`NO_FIGURE` instead of inventing one.
"""

from __future__ import annotations

from harness.analysis.claims import Setting

NO_FIGURE = "[paper gives no figure]"

DADS = "DADS (Hu et al., INFOCOM 2019)"
CIC = "CIC (Yang et al., IJCNN 2022)"
QDMP = "QDMP (Zhang et al., IMWUT 2020)"
HALP = "HALP (Li, Iosifidis, Zhang, ICC 2022)"
MODNN = "MoDNN (Mao et al., DATE 2017)"

# The settings each claim was made for, as this repository's hardware and model names (conf/hardware, conf/model).
DADS_HARDWARE = "rpi3b_cpu_server"  # Raspberry Pi 3B device, 8-core cloud server
DADS_MODELS = ("nin", "tiny_yolov2", "vgg16", "alexnet", "resnet18")
CIC_HARDWARE = "xavier_1080ti"  # the setting of conf/experiment/cic_paper.yaml
HALP_HARDWARE = ("4x_1080ti", "4x_xavier")
HALP_PROTOTYPE_HARDWARE = "3x_rpi4"
HALP_PROTOTYPE_SPEEDUP = 1.7  # VGG-16 on three Raspberry Pi 4 (Dong, Li, Iosifidis, Zhang, European Wireless 2022)

# DADS's uplink rates (Mbit/s) and their names; the same rates are conf/link/{cat1,3g,lte,wifi}.yaml.
DADS_UPLINKS = {0.13: "CAT1", 1.1: "3G", 5.85: "4G", 18.88: "Wi-Fi"}

# DADS, light load (DSL), ResNet-18 on a Raspberry Pi 3B + 8-core cloud server, against edge-only (all on the device):
# (latency speed-up, throughput speed-up) per uplink rate.
DADS_RESNET18_VS_EDGE = {0.13: (1.46, 2.03), 1.1: (4.14, 8.3), 5.85: (7.23, 9.78), 18.88: (8.32, 9.31)}

# DADS's ranges over its five models and four uplinks: (low, high) speed-ups.
DADS_RANGES = {
    ("light", "device_only", "latency"): (1.91, 6.45),
    ("light", "device_only", "throughput"): (3.45, 8.31),
    ("light", "server_only", "latency"): (1.35, 8.08),
    ("light", "server_only", "throughput"): (1.46, 11.13),
    ("heavy", "device_only", "latency"): (1.66, 5.19),
    ("heavy", "device_only", "throughput"): (4.34, 9.14),
}

# CIC's best-case claims against "existing solutions" (its baselines, models, bandwidths and hardware are not in the
# stored sources).
CIC_CLAIMS = {"decision_speedup": 100.0, "latency_speedup": 2.6, "throughput_speedup": 3.3}

# What each paper says about its own decision time.
DECISION_CLAIMS = {
    "cic": f"up to {CIC_CLAIMS['decision_speedup']:g}x faster than existing solutions; real time for hundreds of "
           f"layers [{CIC}]",
    "qdmp": f"under 300 ms for hundreds of layers; up to 66.3x faster than the state of the art [{QDMP}]",
}

# HALP, VGG-16 on GTX 1080 Ti and Jetson AGX Xavier edge servers: speed-up over the host alone, (low, high), per
# tasks per batch. The abstract gives ranges, not a value per N, board or link rate.
HALP_SPEEDUP = {1: (1.7, 2.0), 4: (1.7, 1.8)}
HALP_PROTOTYPE = "3x Raspberry Pi 4: 1.7x for VGG-16"
HALP_VS_MODNN = "HALP better than MoDNN"  # no MoDNN figure in HALP's abstract
# MoDNN's own claim, in its own setting (mobile devices, its own network): speed-up with 2..4 workers.
MODNN_SPEEDUP = (2.17, 4.28)

# HALP's service reliability study: the abstract states the study, not a number.
HALP_RELIABILITY = NO_FIGURE


# The setting each claim was made for, as the runs label it (model name and input size, hardware, link rates): a run
# is at a paper's setting only when all of these match. Where a paper does not state its link rates, the rates of its
# preset stand for them (conf/experiment), and say so.
DADS_MODEL_LABELS = ("nin 224x224", "tiny_yolov2 416x416", "vgg16 224x224", "alexnet 224x224", "resnet18 224x224")
DADS_LIGHT = Setting((DADS_HARDWARE,), DADS_MODEL_LABELS, tuple(DADS_UPLINKS), scenario="single_stream")
DADS_HEAVY = Setting((DADS_HARDWARE,), DADS_MODEL_LABELS, tuple(DADS_UPLINKS), scenario="stream")
DADS_RESNET18 = Setting((DADS_HARDWARE,), ("resnet18 224x224",), tuple(DADS_UPLINKS), scenario="single_stream")
DADS_RESNET18_ANY_LOAD = Setting((DADS_HARDWARE,), ("resnet18 224x224",), tuple(DADS_UPLINKS))
# CIC's models and rates are those of conf/experiment/cic_paper.yaml (DADS's uplinks and Fast Ethernet)
CIC_SETTING = Setting((CIC_HARDWARE,), ("vgg16 224x224", "resnet50 224x224", "inception_v3 299x299",
                                        "densenet201 224x224"), (*DADS_UPLINKS, 100.0))
# HALP's abstract names no link rate: halp_paper's Fast Ethernet and gigabit between edge servers stand for it
HALP_SETTING = Setting(HALP_HARDWARE, ("vgg16 224x224",), (100.0, 1000.0), num_servers=(2, 3, 4))
# the prototype's rate is not in the stored sources either: the rates a Pi 4 reaches (conf/experiment/halp_prototype)
HALP_PROTOTYPE_SETTING = Setting((HALP_PROTOTYPE_HARDWARE,), ("vgg16 224x224",), (64.0, 100.0, 941.0),
                                 num_servers=(3,))
