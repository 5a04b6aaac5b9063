"""nvidia-smi parsers on outputs captured on GB10 machines (tests/fixtures/nvidia-smi)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkctl.checks import nvidia_smi

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia-smi"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_table_580_142_idle_with_list():
    text = fixture("gb10-580.142-table-and-L.txt")
    parsed = nvidia_smi.parse_table(text)
    assert parsed["smi_version"] == "580.142"
    assert parsed["driver_version"] == "580.142"
    assert parsed["cuda_version"] == "13.0"
    assert len(parsed["gpus"]) == 1
    gpu = parsed["gpus"][0]
    assert gpu["index"] == 0
    assert gpu["name"] == "NVIDIA GB10"
    assert gpu["persistence_mode"] == "On"
    assert gpu["pci_bus_id"] == "0000000F:01:00.0"  # 8-digit upper-case domain, as printed
    assert gpu["pci_address"] == "000f:01:00.0"  # sysfs spelling
    assert gpu["display_active"] == "Off"
    assert gpu["ecc_uncorrected"] is None  # N/A
    assert gpu["temperature_c"] == 36
    assert gpu["performance_state"] == "P8"
    assert gpu["power_draw_w"] == 4.0
    assert gpu["power_cap_w"] is None  # 'N/A' cap
    assert gpu["memory_supported"] is False  # 'Not Supported': unified memory
    assert gpu["memory_total_mib"] is None and gpu["memory_used_mib"] is None
    assert gpu["utilization_pct"] == 0
    assert gpu["compute_mode"] == "Default"
    assert [(p["pid"], p["type"], p["name"], p["memory_mib"]) for p in parsed["processes"]] == [
        (2747, "G", "/usr/lib/xorg/Xorg", 18),
        (2911, "G", "/usr/bin/gnome-shell", 6),
    ]
    assert nvidia_smi.parse_list(text) == [
        {"index": 0, "name": "NVIDIA GB10", "uuid": "GPU-b0ec33a0-2589-53de-953c-0713d37d0794"}
    ]


def test_table_580_95_desktop_session():
    parsed = nvidia_smi.parse_table(fixture("gb10-580.95.05-table.txt"))
    assert (parsed["driver_version"], parsed["cuda_version"]) == ("580.95.05", "13.0")
    gpu = parsed["gpus"][0]
    assert gpu["display_active"] == "On"
    assert (gpu["temperature_c"], gpu["performance_state"], gpu["power_draw_w"]) == (45, "P0", 11.0)
    assert gpu["utilization_pct"] == 10
    assert gpu["memory_supported"] is False
    assert [p["pid"] for p in parsed["processes"]] == [4174, 4399, 4761]
    assert parsed["processes"][2]["name"] == ".../7182/usr/lib/firefox/firefox"
    assert parsed["processes"][2]["memory_mib"] == 273


def test_table_without_processes_and_discrete_memory():
    # The GB10 table cut before the processes block, plus a discrete-GPU row
    # (memory in MiB) to show the memory cell is parsed when it exists.
    gb10 = fixture("gb10-580.142-table-and-L.txt").split("\n\n")[0]
    assert nvidia_smi.parse_table(gb10)["processes"] == []
    assert nvidia_smi.parse_table(gb10)["gpus"][0]["name"] == "NVIDIA GB10"
    discrete = (
        "|   0  NVIDIA H100 80GB HBM3          On  |   00000000:19:00.0 Off |                    0 |\n"
        "| N/A   33C    P0             71W /  700W |       1MiB /  81559MiB |      0%      Default |\n"
    )
    gpu = nvidia_smi.parse_table(discrete)["gpus"][0]
    assert (gpu["memory_used_mib"], gpu["memory_total_mib"], gpu["power_cap_w"]) == (1, 81559, 700.0)
    assert gpu["ecc_uncorrected"] == 0


def test_csv_noheader_gb10_na_memory():
    rows = nvidia_smi.parse_csv(fixture("gb10-query-name-memory-driver.csv"), ["name", "memory.total", "driver_version"])
    assert rows == [{"name": "NVIDIA GB10", "memory.total": None, "driver_version": "580.126.09"}]


def test_csv_with_header_units_and_elided_fields():
    rows = nvidia_smi.parse_csv(fixture("gb10-query-header-elided.csv"))
    assert rows == [{"name": "NVIDIA GB10", "memory.total": None, "memory.free": None, "memory.used": None}]
    rows = nvidia_smi.parse_csv(fixture("gb10-query-index-name-temp.csv"))
    assert rows == [{"index": 0, "name": "NVIDIA GB10", "temperature.gpu": 43, "power.draw": 12.31,
                     "utilization.gpu": 7, "memory.used": None}]


def test_csv_of_the_facts_query_and_gpu_records():
    text = "0, NVIDIA GB10, GPU-b0ec33a0-2589-53de-953c-0713d37d0794, 580.142, [N/A], 0000000F:01:00.0\n"
    rows = nvidia_smi.parse_csv(text, nvidia_smi.NVIDIA_SMI_QUERY.split(","))
    gpus = nvidia_smi.gpus_from_nvidia_smi(rows, {"gpus": []})
    assert gpus == [{"index": 0, "name": "NVIDIA GB10", "uuid": "GPU-b0ec33a0-2589-53de-953c-0713d37d0794",
                     "pci_bus_id": "0000000F:01:00.0", "memory_total_mib": None}]
    raw = {"nvidia_smi": {"csv": text, "csv_rc": 0, "table": fixture("gb10-580.142-table-and-L.txt"), "table_rc": 0}}
    assert nvidia_smi.gpus_from_raw(raw) == gpus


def test_gpu_records_fall_back_to_the_table():
    table = nvidia_smi.parse_table(fixture("gb10-580.95.05-table.txt"))
    gpus = nvidia_smi.gpus_from_nvidia_smi([], table)
    assert gpus == [{"index": 0, "name": "NVIDIA GB10", "uuid": None, "pci_bus_id": "0000000F:01:00.0",
                     "memory_total_mib": None}]


@pytest.mark.parametrize("text", [
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
    "NVIDIA driver is installed and running.\n",
    "No devices were found\n",
    "",
])
def test_error_outputs_give_no_gpus(text):
    assert nvidia_smi.parse_csv(text, nvidia_smi.NVIDIA_SMI_QUERY.split(",")) == []
    assert nvidia_smi.parse_table(text)["gpus"] == []


@pytest.mark.parametrize("raw,expected", [
    ("[N/A]", None), ("N/A", None), ("Not Supported", None), ("[Not Supported]", None), (" 580.142 ", "580.142"),
])
def test_not_available_spellings(raw, expected):
    assert nvidia_smi.smi_value(raw) == expected


def test_bus_id_normalisation():
    assert nvidia_smi.normalize_pci_bus_id("0000000F:01:00.0") == "000f:01:00.0"
    assert nvidia_smi.normalize_pci_bus_id("00000000:19:00.0") == "0000:19:00.0"
    assert nvidia_smi.normalize_pci_bus_id(None) is None


def test_h100_captured_by_sparkctl_on_the_gpu_machine():
    table = nvidia_smi.parse_table(fixture("h100-580.159.04-table.txt"))
    assert (table["driver_version"], table["cuda_version"]) == ("580.159.04", "13.0")
    (gpu,) = table["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["pci_bus_id"] == "00000000:00:06.0"
    assert gpu["memory_supported"] is True and (gpu["memory_used_mib"], gpu["memory_total_mib"]) == (0, 81559)
    assert (gpu["power_draw_w"], gpu["power_cap_w"], gpu["ecc_uncorrected"]) == (71.0, 700.0, 0)
    assert table["processes"] == []
    assert nvidia_smi.parse_list(fixture("h100-580.159.04-L.txt")) == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-87ae79ef-b9ea-b79e-5865-bc61e0f114cf"}
    ]
    (row,) = nvidia_smi.parse_csv(fixture("h100-580.159.04-query.csv"),
                                  ["index", "name", "uuid", "driver_version", "memory.total", "pci.bus_id"])
    assert row["memory.total"] == 81559 and row["driver_version"] == "580.159.04"
