"""`qstar.Model`: generate, score and choose on the real default model,
checked against the command-line program and against each other."""

import json
import math
import subprocess
import threading
import time

import pytest

import qstar
from conftest import qstar_binary


def cli_json(*args):
    run = subprocess.run(
        [str(qstar_binary()), *args, "--json"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


PROMPT = "The three primary colours are"


def test_greedy_generate_equals_the_command_line_program(model):
    ours = model.generate(PROMPT, max_tokens=24)
    theirs = cli_json("generate", "--prompt", PROMPT, "--max-tokens", "24")
    assert ours == theirs
    completion = ours["completions"][0]
    assert completion["text"] and len(completion["token_ids"]) <= 24
    assert ours["usage"]["completion_tokens"] == len(completion["token_ids"])
    # Greedy is deterministic: a second call gives the same text.
    assert model.generate(PROMPT, max_tokens=24) == ours


def test_score_and_choose_equal_the_command_line_program(model):
    assert model.score(PROMPT, " red, blue and yellow") == cli_json(
        "score", "--prompt", PROMPT, "--continuation", " red, blue and yellow"
    )
    options = [" red", " green", " blue"]
    theirs = cli_json("choose", "--prompt", PROMPT, *[a for o in options for a in ("--option", o)])
    assert model.choose(PROMPT, options) == theirs["options"]


def test_score_is_the_sum_of_its_tokens_and_agrees_with_choose(model):
    prompt = "The capital of France is"
    options = [" Paris", " London", " a city in Europe"]
    scores = [model.score(prompt, o) for o in options]
    for s in scores:
        assert len(s["tokens"]) >= 1
        assert all(t["logprob"] is not None and t["logprob"] <= 0 for t in s["tokens"])
        assert s["total_logprob"] == pytest.approx(sum(t["logprob"] for t in s["tokens"]), abs=1e-6)
    # No option is a prefix of another: P(option) = exp(score) normalised.
    totals = [s["total_logprob"] for s in scores]
    norm = sum(math.exp(t) for t in totals)
    chosen = model.choose(prompt, options)
    assert [c["text"] for c in chosen] == options
    for c, total in zip(chosen, totals):
        assert c["logprob"] == pytest.approx(total, abs=1e-3)
        assert c["prob"] == pytest.approx(math.exp(total) / norm, rel=1e-3, abs=1e-6)
    assert chosen[0]["prob"] > 0.5  # the model knows this one


def test_choose_probabilities_sum_to_one_even_when_options_nest(model):
    # " Par" is a prefix of " Paris": the distribution is over complete options.
    for options in ([" Paris", " London"], [" Par", " Paris", " P"], ["1", "2", "3", "4", "10"]):
        chosen = model.choose("The capital of France is", options)
        assert len(chosen) == len(options)
        assert all(0.0 <= c["prob"] <= 1.0 for c in chosen)
        assert sum(c["prob"] for c in chosen) == pytest.approx(1.0, abs=1e-9)


def test_sampling_is_seeded(model):
    a = model.generate(PROMPT, max_tokens=16, temperature=1.0, seed=7, n=2)
    b = model.generate(PROMPT, max_tokens=16, temperature=1.0, seed=7, n=2)
    assert a == b and len(a["completions"]) == 2
    stopped = model.generate(PROMPT, max_tokens=64, stop=[","])
    assert "," not in stopped["completions"][0]["text"]


def test_bad_model_input_raises_value_error(model, tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        model.generate(PROMPT, temperature=-1.0)
    with pytest.raises(ValueError, match="n must be"):
        model.generate(PROMPT, n=0)
    with pytest.raises(ValueError, match="stop"):
        model.generate(PROMPT, stop=[""])
    with pytest.raises(ValueError, match="at least one option"):
        model.choose(PROMPT, [])
    with pytest.raises(ValueError, match="same text"):
        model.choose(PROMPT, [" a", " a"])
    with pytest.raises(ValueError, match="no model file"):
        qstar.Model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="URL"):
        qstar.Model(base_url=42)


def test_a_broken_model_file_is_a_qstar_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(qstar.QstarError):
        qstar.Model(str(bad))
    assert issubclass(qstar.QstarError, Exception)
    assert not issubclass(qstar.QstarError, ValueError)


def test_other_python_threads_run_while_the_engine_generates(model):
    """The interpreter lock is released during a long generate: a Python
    thread keeps ticking while it is in flight."""
    span = {}

    def work():
        span["start"] = time.monotonic()
        span["result"] = model.generate(PROMPT, max_tokens=200, temperature=0.0, stop=None)
        span["end"] = time.monotonic()

    worker = threading.Thread(target=work)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.monotonic())
        time.sleep(0.005)
    worker.join()
    start, end = span["start"], span["end"]
    inside = [t for t in ticks if start < t < end]
    duration = end - start
    assert duration > 0.2, f"generate took only {duration:.3f} s: too short to tell"
    # Held lock: no tick inside the call at all. Released: one every ~5 ms.
    assert len(inside) >= 10, f"{len(inside)} ticks in {duration:.2f} s"
    gaps = [b - a for a, b in zip([start] + inside, inside + [end])]
    assert max(gaps) < duration / 2, f"longest pause {max(gaps):.3f} s of {duration:.3f} s"
