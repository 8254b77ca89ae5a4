"""The machine fields of :func:`floatlab.provenance.environment`."""

import torch

from floatlab import provenance


def test_cpu_id_names_the_generation_behind_a_generic_model_name():
    # two "AMD EPYC" virtual machines: Zen 3 (no AVX-512) and Zen 4 (AVX-512) give other float32 bits
    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "model name": "AMD EPYC", "stepping": "1"}
    zen3 = dict(zen4, model="1")
    assert provenance._cpu_id(zen4) == "family 25 model 17 stepping 1"
    assert provenance._cpu_id(zen3) != provenance._cpu_id(zen4)
    assert provenance._cpu_model(zen4) == "AMD EPYC"
    assert provenance._cpu_id({}) is None          # no /proc/cpuinfo (macOS, Windows)


def test_environment_records_the_kernel_isa():
    env = provenance.environment()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(env) >= {"cpu", "cpu_id", "cpu_count", "torch_threads", "versions", "time_utc"}
