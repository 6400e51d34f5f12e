"""`qstar.Model(base_url=…)`: the OpenAI backend, against `qstar serve` (the
binary) on the same default model as the embedded one."""

import socket
import subprocess
import time
import urllib.request

import pytest

import qstar
from conftest import qstar_binary


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    port = free_port()
    child = subprocess.Popen(
        [str(qstar_binary()), "serve", "--port", str(port), "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert child.poll() is None, "qstar serve exited"
            assert time.monotonic() < deadline, "qstar serve did not come up"
            time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=30)


def test_a_server_model_answers_as_the_embedded_one(model, server_url):
    remote = qstar.Model(base_url=server_url)
    assert remote.backend == f"openai ({server_url})"
    # The server reports the model's size on /v1/models.
    assert remote.parameters == model.parameters
    prompt = "The three primary colours are"
    ours = model.generate(prompt, max_tokens=16)["completions"][0]
    theirs = remote.generate(prompt, max_tokens=16)["completions"][0]
    assert theirs["text"] == ours["text"]
    options = [" red", " green", " blue"]
    local = model.choose(prompt, options)
    served = remote.choose(prompt, options)
    assert [o["text"] for o in served] == options
    for a, b in zip(local, served):
        assert b["prob"] == pytest.approx(a["prob"], abs=1e-3)
    assert sum(o["prob"] for o in served) == pytest.approx(1.0, abs=1e-9)
    scored = remote.score(prompt, " red")
    assert scored["total_logprob"] == pytest.approx(
        model.score(prompt, " red")["total_logprob"], abs=1e-3
    )


def test_labels_through_a_server_match_the_embedded_ones(model, server_url, pairs):
    remote = qstar.Model(base_url=[server_url])
    served = qstar.label(pairs[:2], model=remote, prompt_format="plain")
    local = qstar.label(pairs[:2], model=model, prompt_format="plain")
    assert [r["p_human_chosen"] for r in served] == pytest.approx(
        [r["p_human_chosen"] for r in local], abs=1e-3
    )


def test_an_unreachable_server_is_a_qstar_error():
    remote = qstar.Model(base_url=f"http://127.0.0.1:{free_port()}", server_params=135_000_000)
    assert remote.parameters == 135_000_000
    with pytest.raises(qstar.QstarError):
        remote.generate("hi", max_tokens=2)
