"""lmpipe.backends.agent: a record's agent merged into the generation settings, the command line first."""

from __future__ import annotations

import pytest

from lmpipe.backends.agent import apply_agent
from lmpipe.backends.generate import GenerateSettings
from lmpipe.engine.sampling import Sampling
from lmpipe.errors import RecordError

BASE = GenerateSettings(sampling=Sampling(max_new_tokens=256, seed=1))


def test_run_settings_and_model_apply_and_the_manifest_says_so():
    agent = {"file": "translator.toml", "model": "org/name",
             "run": {"max_new_tokens": 5, "temperature": 0, "stop": "\n", "use_cache": True,
                     "skip_special_tokens": True}}
    got = apply_agent(BASE, agent, frozenset())
    assert got.model == "org/name"
    assert got.settings.sampling == Sampling(max_new_tokens=5, temperature=0.0, stop=("\n",), seed=1)
    assert got.settings.prompt == BASE.prompt and got.settings.out == BASE.out
    assert got.manifest == {"file": "translator.toml", "overridden": [],
                            "applied": {"model": "org/name", "max_new_tokens": 5, "temperature": 0.0, "stop": ["\n"],
                                        "use_cache": True, "skip_special_tokens": True}}


def test_options_given_on_the_command_line_win():
    agent = {"file": "a.toml", "model": "org/name", "run": {"max_new_tokens": 5, "top_k": 4}}
    got = apply_agent(BASE, agent, frozenset({"model", "max_new_tokens", "batch_size"}))
    assert got.model is None  # the running model
    assert (got.settings.sampling.max_new_tokens, got.settings.sampling.top_k) == (256, 4)
    assert got.manifest["applied"] == {"top_k": 4}
    assert got.manifest["overridden"] == ["model", "max_new_tokens"]


def test_an_agent_without_wishes_changes_nothing():
    got = apply_agent(BASE, {"file": "a.toml", "model": None, "run": {}}, frozenset())
    assert (got.settings, got.model) == (BASE, None)
    assert got.manifest == {"file": "a.toml", "applied": {}, "overridden": []}


@pytest.mark.parametrize(("agent", "error"), [
    ({"run": {"num_beams": 4}}, "agent [run] num_beams: not a setting lmpipe knows (max_new_tokens, temperature,"),
    ({"run": {"skip_special_tokens": False}}, "agent [run] skip_special_tokens = false: not supported"),
    ({"run": {"max_new_tokens": "many"}}, 'agent [run] max_new_tokens = "many": expected an integer'),
    ({"run": {"max_new_tokens": 2.5}}, "agent [run] max_new_tokens = 2.5: expected an integer"),
    ({"run": {"temperature": True}}, "agent [run] temperature = true: expected a number"),
    ({"run": {"stop": [1]}}, "agent [run] stop = [1]: expected a string or a list of strings"),
    ({"run": {"temperature": -1}}, "agent [run]: --temperature must be 0 (greedy) or more"),
    ({"run": ["max_new_tokens"]}, "agent.run must be an object"),
    ({"model": 7}, "agent.model = 7: expected a model name"),
    ("translator.toml", "agent must be an object"),
])
def test_what_lmpipe_cannot_do_is_the_records_error_naming_it(agent, error):
    with pytest.raises(RecordError) as raised:
        apply_agent(BASE, agent, frozenset())
    assert str(raised.value).startswith(error)


def test_a_key_the_command_line_set_is_still_checked():
    with pytest.raises(RecordError, match="num_beams"):
        apply_agent(BASE, {"run": {"num_beams": 4}}, frozenset({"num_beams"}))
    with pytest.raises(RecordError, match="expected an integer"):
        apply_agent(BASE, {"run": {"max_new_tokens": "x"}}, frozenset({"max_new_tokens"}))
