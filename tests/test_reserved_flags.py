"""The guard that keeps secrets and sparkctl's own flags out of vllm_args and
ray.extra_args sees every spelling vLLM's parser accepts (issue #13, defect 2)."""

from __future__ import annotations

import pytest

from sparkctl.playbook import RESERVED_VLLM_FLAGS, reserved_flag
from tests.test_playbook import problems


@pytest.mark.parametrize(
    "arg, flag",
    [
        ("--api_key=SECRET", "--api-key"),  # vLLM turns _ into - in option names
        ("--hf_token", "--hf-token"),
        ("--tensor_parallel_size=3", "--tensor-parallel-size"),
        ("--api-k", "--api-key"),  # argparse's allow_abbrev: a unique prefix is the option
        ("--tensor-par=3", "--tensor-parallel-size"),
        ("--head", "--headless"),
        ("--served_model=x", "--served-model-name"),
        ("--api-key.x", "--api-key"),  # vLLM's dotted JSON form of --api-key
        ("-t", "-tp"),  # a prefix of a single-dash option
        ("-tp=3", "-tp"),
        ("-n3", "-n"),  # a one-letter option with its value attached
        ("-r1", "-r"),
    ],
)
def test_spellings_vllm_accepts_are_refused(tmp_path, arg, flag):
    assert reserved_flag(arg, RESERVED_VLLM_FLAGS) == flag
    found = problems(tmp_path, f"model: m\nvllm_args: ['{arg}', 'x']\n")
    written = arg.split("=")[0]
    said = flag if written == flag else f"{written} is {flag}, which"
    assert any(f"vllm_args[0]: {said} is set by sparkctl" in line for line in found), found


def test_the_secret_from_the_issue_never_reaches_the_playbook(tmp_path):
    found = problems(tmp_path, 'model: m\nvllm_args: ["--api_key=SECRET", "--hf_token", "x", "--tensor_parallel_size=3"]\n')
    assert [line.split(": ")[1] for line in found] == ["vllm_args[0]", "vllm_args[1]", "vllm_args[3]"]
    assert not any("SECRET" in line for line in found)


@pytest.mark.parametrize("arg", ["--max-model-len", "--max_model_len=4096", "--gpu-memory-utilization=0.8",
                                 "-q", "-O3", "4096", "-1", "--enforce-eager", "--hf-overrides.x", "--portable"])
def test_other_options_and_values_pass(arg):
    assert reserved_flag(arg, RESERVED_VLLM_FLAGS) is None


def test_data_parallel_flags_are_sparkctls_now():
    """The data-parallel layout sets them (playbook data_parallel_size): -dp is --data-parallel-size."""
    assert reserved_flag("-dp", RESERVED_VLLM_FLAGS) is not None
    assert reserved_flag("--data_parallel_size=2", RESERVED_VLLM_FLAGS) is not None


@pytest.mark.parametrize(
    "text, where",
    [
        ("ray:\n  extra_args: ['--temp_dir=/x']\n", "ray.extra_args[0]"),
        ("ray:\n  extra_args: ['--node-ip=1.2.3.4']\n", "ray.extra_args[0]"),
        ("ray:\n  extra_args: ['--num_gpus', '2']\n", "ray.extra_args[0]"),
    ],
)
def test_ray_extra_args_get_the_same_guard(tmp_path, text, where):
    found = problems(tmp_path, "model: m\n" + text)
    assert any(where in line and "set by sparkctl" in line for line in found), found


@pytest.mark.parametrize(
    "text, where",
    [
        ("model: '--api-key=SECRET'\n", "model"),
        ("model: m\nserved_model_name: '--port=1'\n", "served_model_name"),
        ("model: m\nvllm: {command: ['--api-key=SECRET', serve]}\n", "vllm.command[0]"),
        ("model: m\nvllm: {python: '-c'}\n", "vllm.python"),
        ("model: m\nray: {command: ['--head']}\n", "ray.command[0]"),
    ],
)
def test_values_that_would_read_as_options_are_refused(tmp_path, text, where):
    found = problems(tmp_path, text)
    assert any(f"{where}: must not start with '-'" in line for line in found), found
    assert not any("SECRET" in line for line in found)


def _vllm_serve_options() -> dict[str, str]:
    """`vllm serve`'s options and their destinations, from the installed vLLM."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    assert parser.allow_abbrev
    return {option: action.dest for option, action in parser._option_string_actions.items()}


@pytest.mark.vllm
def test_the_guard_matches_vllms_own_parser():
    """Against the installed vLLM: every option whose destination sparkctl sets is refused in
    every spelling, and no other option is."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:  # vLLM's import stays out of this process
        dests = pool.apply(_vllm_serve_options)
    reserved_dests = {dests[f] for f in RESERVED_VLLM_FLAGS}
    for option, dest in dests.items():
        if dest in reserved_dests:
            assert reserved_flag(option, RESERVED_VLLM_FLAGS) is not None, option
        elif option not in ("-h", "--help"):
            assert reserved_flag(option, RESERVED_VLLM_FLAGS) is None, option
