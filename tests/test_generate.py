"""lm-generate end to end: the record contract, exit codes, streaming, pipes and signals."""

import signal
import subprocess
import sys

import orjson
import pytest
from click.testing import CliRunner
from conftest import BIN, jsonl, run_tool

from lmpipe.bin.generate import main


def invoke(*args, input=b""):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return ["--model", str(tiny_llama), "-n", "6"]


def test_records_pass_through_with_text_stats_and_manifest(tiny):
    result = invoke(*tiny, input=b'{"text": "The quick", "id": 1}\nplain line\n')
    assert result.exit_code == 0, result.stderr
    a, b = jsonl(result.stdout_bytes)
    assert a["id"] == 1 and a["text"] == "The quick" and isinstance(a["generated"], str)
    assert b["text"] == "plain line"
    assert set(a["stats"]) == {"input_tokens", "output_tokens", "ttft_s", "tokens_per_s", "total_s", "finish_reason"}
    assert a["stats"]["finish_reason"] in ("eos", "length", "stop")
    m = a["manifest"]
    assert m["kind"] == "folder" and m["sampling"]["max_new_tokens"] == 6 and isinstance(m["sampling"]["seed"], int)
    assert set(m["versions"]) == {"lmpipe", "torch", "transformers"}
    assert result.stderr == ""


def test_cli_greedy_equals_transformers_and_batching_changes_nothing(embedded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = ["What is the capital of France?", "Name a fruit.", "What is 2+2?"]
    data = "".join(orjson.dumps({"text": p}).decode() + "\n" for p in prompts)
    results = [invoke("-n", "12", "-b", batch, input=data) for batch in ("1", "3")]
    assert [r.exit_code for r in results] == [0, 0], results[0].stderr + results[1].stderr
    one, three = (jsonl(r.stdout_bytes) for r in results)
    model, tok = AutoModelForCausalLM.from_pretrained(embedded), AutoTokenizer.from_pretrained(embedded)
    for p, a, b in zip(prompts, one, three, strict=True):
        enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
        expected = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert a["generated"] == b["generated"] == expected
        assert a["stats"]["input_tokens"] == enc["input_ids"].shape[1]


def test_same_seed_same_sample_and_different_seeds_differ(tiny):
    def sample(seed):
        out = invoke(*tiny[:2], "-n", "16", "-t", "1.0", "--seed", str(seed), input=b"The quick\n")
        return jsonl(out.stdout_bytes)[0]["generated"]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_bad_input_becomes_error_records_in_order_and_exit_1(tiny):
    data = b"".join([
        b'{"text": "first"}\n',
        b'{"text": broken\n',
        b"\n",
        b"caf\xe9 au lait\n",
        b'{"prompt": "no text field"}\n',
        b'{"text": 42}\n',
        b'{"text": "last"}\n',
    ])
    result = invoke(*tiny, input=data)
    assert result.exit_code == 1
    records = jsonl(result.stdout_bytes)
    assert [r.get("line") for r in records] == [None, 2, 4, 5, 6, None]
    assert records[0]["text"] == "first" and records[-1]["text"] == "last" and "generated" in records[-1]
    assert records[1]["error"].startswith("invalid JSON")
    assert "UTF-8" in records[2]["error"]
    assert records[3] == {"prompt": "no text field", "error": "record has no 'text' field (choose one with --field)",
                          "line": 5}
    assert "must be a string" in records[4]["error"]
    assert result.stderr.count("\n") == 1 and "4 of 6 records failed" in result.stderr


def test_a_one_megabyte_line_is_an_error_record_not_a_crash(tiny):
    huge = orjson.dumps({"text": "word " * 200_000}) + b"\n"
    result = invoke(*tiny, input=huge + b"after\n")
    assert result.exit_code == 1
    big, after = jsonl(result.stdout_bytes)
    assert "context is 256" in big["error"] and big["line"] == 1
    assert after["text"] == "after" and "generated" in after


def test_empty_input_is_one_line_and_success(tiny):
    result = invoke(*tiny, input=b"")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "lm-generate: no input records\n")


def test_unknown_model_and_unknown_option_are_usage_errors():
    result = invoke("--model", "nobody/nothing", input=b"hi\n")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("lm-generate: error: model 'nobody/nothing' is not in the Hugging Face cache; "
                             "fetch it with: lm-pull nobody/nothing\n")
    result = invoke("--no-such-option", input=b"hi\n")
    assert result.exit_code == 2 and "No such option" in result.stderr


def test_messages_system_and_raw(tiny, tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}]

    def prompt_tokens(messages):
        return len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
                   ["input_ids"])

    out = jsonl(invoke(*tiny, "--system", "Be brief.", input=orjson.dumps({"messages": turns})).stdout_bytes)[0]
    plain = jsonl(invoke(*tiny, input=orjson.dumps({"messages": turns})).stdout_bytes)[0]
    # The template's own prompt, with --system as the first turn and without it.
    assert out["stats"]["input_tokens"] == prompt_tokens([{"role": "system", "content": "Be brief."}, *turns])
    assert plain["stats"]["input_tokens"] == prompt_tokens(turns)
    assert out["manifest"]["system"] == "Be brief." and plain["manifest"]["system"] is None
    raw = jsonl(invoke(*tiny, "--raw", input=b"The quick\n").stdout_bytes)[0]
    chat_one = jsonl(invoke(*tiny, input=b"The quick\n").stdout_bytes)[0]
    assert raw["stats"]["input_tokens"] < chat_one["stats"]["input_tokens"]
    bad = jsonl(invoke(*tiny, input=b'{"messages": [{"role": "wizard", "content": "x"}]}').stdout_bytes)[0]
    assert "bad message" in bad["error"]


def test_stream_writes_token_events_then_the_record(tiny):
    result = invoke(*tiny, "--stream", "-b", "1", input=b"The quick\nPipes\n")
    lines = jsonl(result.stdout_bytes)
    events = [x for x in lines if x.get("event") == "token"]
    records = [x for x in lines if "event" not in x]
    assert [r["text"] for r in records] == ["The quick", "Pipes"]
    first = [e for e in events if e["line"] == 1]
    assert "".join(e["text"] for e in first) == records[0]["generated"]
    assert lines.index(records[0]) > max(lines.index(e) for e in first)


def test_top_probs_and_time_to_nth_token(tiny):
    result = invoke(*tiny, "--top-probs", "3", "--ttnt", "2", "--stop", "zzzz", input=b"The quick\n")
    rec = jsonl(result.stdout_bytes)[0]
    assert len(rec["tokens"]) == rec["stats"]["output_tokens"]
    for t in rec["tokens"]:
        assert set(t) == {"id", "token", "p", "top"} and len(t["top"]) == 3
    assert "".join(t["token"] for t in rec["tokens"]) == rec["generated"]
    assert rec["stats"]["ttnt"] == 2 and rec["stats"]["ttnt_s"] >= rec["stats"]["ttft_s"]


def test_prompt_argument(tiny):
    result = invoke(*tiny, "The quick")
    assert jsonl(result.stdout_bytes)[0]["text"] == "The quick"


def test_help_and_usage_errors_do_not_import_torch():
    code = ("import sys\nfrom click.testing import CliRunner\n"
            "from lmpipe.bin.generate import main as g\nfrom lmpipe.bin.tokenize import main as t\n"
            "for m in (g, t):\n    assert CliRunner().invoke(m, ['--help']).exit_code == 0\n"
            "assert CliRunner().invoke(g, ['--temperature', 'hot']).exit_code == 2\n"
            "assert CliRunner().invoke(g, ['--model', 'nobody/nothing'], input=b'hi').exit_code == 2\n"
            "print(sorted(k for k in ('torch', 'transformers') if k in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_closed_pipe_exits_quietly(tiny_llama):
    lines = "".join(f"record {i}\n" for i in range(20))
    shell = f"'{BIN}/lm-generate' --model '{tiny_llama}' -n 4 -b 1 | head -1"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell], input=lines, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and orjson.loads(out.stdout)["text"] == "record 0"


def foreground_sigint() -> None:
    """Ctrl-C as a tool in a terminal's foreground gets it: a suite started as a background job
    (`cmd &` in a script) runs with SIGINT ignored, and a child inherits that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_with_one_line_and_keeps_finished_records(tiny_llama):
    proc = subprocess.Popen([str(BIN / "lm-generate"), "--model", str(tiny_llama), "-n", "4", "-b", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=foreground_sigint)
    proc.stdin.write(b"first\n")
    proc.stdin.flush()
    first = proc.stdout.readline()  # stdin stays open: the tool is now waiting for more
    proc.send_signal(signal.SIGINT)
    # Wait with stdin still open: communicate() would close it, and an end of input racing the
    # signal is a clean finish (exit 0), not the Ctrl-C this test is about.
    proc.wait(timeout=60)
    rest, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    assert proc.returncode == 130
    assert orjson.loads(first)["text"] == "first" and rest == b""
    (line,) = err.decode().strip().splitlines()  # one line, never a traceback
    assert line.startswith("lm-generate: interrupted")


def test_warm_cache_loads_without_converting_again(embedded):
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in embedded.iterdir()}
    result = run_tool("lm-generate", "-n", "2", input="hi\n")
    assert result.returncode == 0, result.stderr
    assert b"converting" not in result.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in embedded.iterdir()} == before
    from lmpipe.models.gguf import conversion_info
    from lmpipe.models.resolve import embedded_gguf

    # No second conversion, no leftovers (other tests' quantized copies of tiny models may sit beside it).
    conversions = [p.name for p in embedded.parent.iterdir()
                   if (conversion_info(p) or {}).get("source") == str(embedded_gguf())]
    assert conversions == [embedded.name]
    assert not [p.name for p in embedded.parent.iterdir() if p.name.startswith(".")]


AGENT = """
[agent]
role = "You are terse."

[engine]
model_id = "{model}"

[run]
max_new_tokens = 5
temperature = 0
"""


def test_an_agent_file_runs_as_written(tmp_path, tiny_llama, embedded):
    # lm-template --agent copies [engine] and [run] into the record; lm-generate applies them.
    terse, beams = tmp_path / "terse.toml", tmp_path / "beams.toml"
    terse.write_text(AGENT.format(model=tiny_llama))
    beams.write_text(AGENT.format(model=tiny_llama) + "num_beams = 4\n")
    first, last = run_tool("lm-template", "--agent", str(terse), input="The quick\nbrown fox\n").stdout.splitlines()
    wrong = run_tool("lm-template", "--agent", str(beams), input="jumps\n").stdout.strip()
    data = b"\n".join([first, b'{"text": "What is the capital of France?"}', wrong, last]) + b"\n"
    result = invoke("--seed", "1", input=data)
    assert result.exit_code == 1
    a, plain, error, b = jsonl(result.stdout_bytes)
    for record in (a, b):  # batched together with their own model, not the running one
        m = record["manifest"]
        assert (m["model"], m["kind"]) == (str(tiny_llama), "folder")
        assert (m["sampling"]["max_new_tokens"], m["sampling"]["temperature"], m["sampling"]["seed"]) == (5, 0.0, 1)
        assert m["agent"] == {"file": str(terse), "overridden": [],
                              "applied": {"model": str(tiny_llama), "max_new_tokens": 5, "temperature": 0.0}}
        assert record["stats"]["output_tokens"] <= 5
    assert (a["text"], b["text"]) == ("The quick", "brown fox")
    assert plain["manifest"]["kind"] == "embedded" and "agent" not in plain["manifest"]
    assert plain["manifest"]["sampling"]["max_new_tokens"] == 256 and plain["generated"]
    assert error["line"] == 3 and error["text"] == "jumps" and "generated" not in error
    assert error["error"].startswith("agent [run] num_beams: not a setting lmpipe knows (max_new_tokens,")
    assert "1 of 4 records failed (first: line 3: agent [run] num_beams" in result.stderr


def test_options_typed_on_the_command_line_win_over_the_agent(tiny):
    agent = {"file": "a.toml", "model": "smollm2",
             "run": {"max_new_tokens": 5, "seed": 3, "top_k": 2, "temperature": 0.7}}
    result = CliRunner().invoke(main, tiny, input=orjson.dumps({"text": "The quick", "agent": agent}),
                                env={"LMPIPE_SEED": "7"}, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    m = jsonl(result.stdout_bytes)[0]["manifest"]
    assert m["model"] == tiny[1] and m["sampling"]["max_new_tokens"] == 6  # -m and -n were typed
    # An environment variable is a default, not a choice made for this run: the agent's seed wins.
    assert (m["sampling"]["seed"], m["sampling"]["top_k"], m["sampling"]["temperature"]) == (3, 2, 0.7)
    assert m["agent"] == {"file": "a.toml", "overridden": ["model", "max_new_tokens"],
                          "applied": {"seed": 3, "top_k": 2, "temperature": 0.7}}


def test_a_model_an_agent_names_that_cannot_load_fails_its_records_only(tiny_llama):
    lines = [{"text": "a", "agent": {"model": "nobody/nothing"}}, {"text": "b"},
             {"text": "c", "agent": {"model": "nobody/nothing", "run": {"max_new_tokens": 2}}}]
    data = b"".join(orjson.dumps(r) + b"\n" for r in lines)
    result = CliRunner().invoke(main, ["-n", "3"], input=data, env={"LMPIPE_MODEL": str(tiny_llama)},
                                catch_exceptions=False)
    assert result.exit_code == 1
    a, b, c = jsonl(result.stdout_bytes)
    assert (a["line"], c["line"]) == (1, 3) and a["error"] == c["error"]
    assert a["error"] == ("agent model nobody/nothing: model 'nobody/nothing' is not in the Hugging Face cache; "
                          "fetch it with: lm-pull nobody/nothing")
    assert b["manifest"]["model"] == str(tiny_llama) and "error" not in b
