"""Type policy: overrides, fallbacks and --target-bpw mixes (sizes counted to the byte)."""
import json

import pytest

from jlcm_gguf import assets, pack, policy


@pytest.fixture(scope="module")
def config():
    return json.loads((assets.hf_model_dir() / "config.json").read_text())


def test_overrides_last_match_wins_and_odd_rows_fall_back(config):
    types = policy.plan(config, "JLCM2", [("ffn_", "JLCM3"), ("blk\\.0\\.ffn_down", "Q8_0")])
    assert types["model.layers.3.mlp.up_proj.weight"] == "JLCM3"
    assert types["model.layers.0.mlp.down_proj.weight"] == "Q8_0"
    assert types["model.layers.3.self_attn.o_proj.weight"] == "JLCM2"
    odd = dict(config, intermediate_size=1000)          # ffn_down rows 1000 wide: not a multiple of 64
    types = policy.plan(odd, "JLCM2", [])
    assert types["model.layers.1.mlp.down_proj.weight"] == policy.FALLBACK_TYPE
    assert types["model.layers.1.mlp.up_proj.weight"] == "JLCM2"


def sizes(config, types, fixed, n_total):
    lin = sum(L.n * policy.type_bits(types[L.hf_name]) / 8 for L in policy.linears(config))
    return 8 * (fixed + lin) / n_total


@pytest.mark.parametrize("target", [2.7, 3.0, 3.3])
def test_target_mix_lands_within_tolerance(config, target):
    n_lin = sum(L.n for L in policy.linears(config))
    fixed, n_total = 1_000_000, n_lin + 2_000_000       # a file with a little besides the linears
    types = policy.target_mix(config, target, fixed, n_total, [])
    assert abs(sizes(config, types, fixed, n_total) - target) <= 0.05
    assert set(types.values()) == {"JLCM2", "JLCM3"}
    # the most damaging class per weight (gate/up) is raised before the least (attn_output)
    up3 = sum(t == "JLCM3" for k, t in types.items() if "up_proj" in k)
    o3 = sum(t == "JLCM3" for k, t in types.items() if "o_proj" in k)
    assert up3 >= o3


def test_target_mix_refuses_what_no_mix_reaches(config):
    n_lin = sum(L.n for L in policy.linears(config))
    with pytest.raises(policy.PolicyError, match="--target-bpw"):
        policy.target_mix(config, 2.0, 0, n_lin, [])
    with pytest.raises(policy.PolicyError, match="--target-bpw"):
        policy.target_mix(config, 4.5, 0, n_lin, [])


def test_type_bits_count_every_byte():
    assert policy.type_bits("JLCM2") == 2.5 and policy.type_bits("JLCM3") == 3.75
    assert policy.type_bits("Q8_0") == 8.5 and policy.type_bits("Q4_0") == 4.5
    with pytest.raises(policy.PolicyError, match="--type"):
        policy.check_type("IQ9", "--type")
    assert pack.JLCM2.bpw == 2.5
