"""`qstar.label`, `qstar.rate` and `qstar.solve` on the real default model:
the records the command-line program writes, as Hugging Face datasets and
TRL's DPOTrainer read them."""

import pytest

import qstar
from conftest import ROOT, read_jsonl

try:  # The test command installs `datasets`; a bare `pytest` may lack it.
    import datasets
except ImportError:  # pragma: no cover
    datasets = None


def as_dataset(records):
    """`datasets.Dataset.from_list` of the records (Arrow refuses ragged types)."""
    assert datasets is not None, "pip install datasets (the test command does)"
    table = datasets.Dataset.from_list(records)
    assert table.num_rows == len(records)
    return table


def is_messages(value, role=None):
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and set(m) == {"role", "content"} for m in value)
        and all(isinstance(m["content"], str) for m in value)
        and (role is None or all(m["role"] == role for m in value))
    )


def dpo_form(row):
    """The form of a preference row as TRL documents it: `standard` when
    prompt, chosen and rejected are strings, `conversational` when they are
    lists of role/content messages (the replies the assistant's); anything
    else (a mix) is refused."""
    values = [row["prompt"], row["chosen"], row["rejected"]]
    if all(isinstance(v, str) for v in values):
        return "standard"
    if is_messages(row["prompt"]) and is_messages(row["chosen"], "assistant") and is_messages(
        row["rejected"], "assistant"
    ):
        return "conversational"
    raise AssertionError(f"not a TRL preference row: {row!r}")


def to_dpo_rows(records):
    """What a user hands to DPOTrainer: the three columns of each record."""
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]


def test_label_gives_soft_labels_that_become_dpo_rows(model, pairs):
    records = qstar.label(pairs, model=model, principles=2, both_orders=True, seed=3)
    assert [r["line"] for r in records] == [1, 2, 3]
    for pair, r in zip(pairs, records):
        p = r["p_human_chosen"]
        assert 0.0 <= p <= 1.0
        assert 0.5 <= r["soft_label"] <= 1.0 and r["soft_label"] == pytest.approx(max(p, 1 - p))
        assert r["agrees_with_human"] == (p > 0.5)
        # Two principles, each in both orders; the label is their mean.
        js = r["judgements"]
        assert len(js) == 4 and len({j["principle"] for j in js}) == 2
        assert {j["human_chosen_first"] for j in js} == {True, False}
        per = [j["p_a"] if j["human_chosen_first"] else 1 - j["p_a"] for j in js]
        assert p == pytest.approx(sum(per) / len(per), abs=1e-9)
        # The preferred reply is `chosen`.
        human, other = pair["chosen"], pair["rejected"]
        assert (r["chosen"], r["rejected"]) == ((human, other) if p >= 0.5 else (other, human))
        assert r["prompt"] == pair["prompt"]
    rows = to_dpo_rows(records)
    assert {dpo_form(row) for row in rows} == {"conversational"}
    table = as_dataset(records)
    assert {"prompt", "chosen", "rejected", "soft_label"} <= set(table.column_names)
    dpo = as_dataset(rows)
    assert dpo[0]["chosen"] == rows[0]["chosen"]


def test_standard_rows_stay_standard_and_openrlhf_keys(model, pairs):
    plain = [
        {"prompt": p["prompt"][0]["content"], "chosen": p["chosen"][0]["content"],
         "rejected": p["rejected"][0]["content"]}
        for p in pairs[:2]
    ]
    records = qstar.label(plain, model=model)
    assert {dpo_form(r) for r in to_dpo_rows(records)} == {"standard"}
    # The same pairs in either form get the same label.
    conversational = qstar.label(pairs[:2], model=model)
    assert [r["p_human_chosen"] for r in records] == pytest.approx(
        [r["p_human_chosen"] for r in conversational], abs=1e-9
    )
    as_dataset(records)
    whole = qstar.label(pairs[:1], model=model, keys="openrlhf")[0]
    assert "prompt" not in whole
    assert whole["chosen"][:-1] == pairs[0]["prompt"] and whole["chosen"][-1]["role"] == "assistant"


def test_rate_rewards_are_the_expected_rating(model, pairs):
    records = qstar.rate(pairs[:2], model=model)
    for pair, r in zip(pairs, records):
        for side in ("chosen", "rejected"):
            rating = r[f"rating_{side}"]
            dist = rating["distribution"]
            assert len(dist) == 10 and sum(dist) == pytest.approx(1.0, abs=1e-9)
            expected = sum((k + 1) * p for k, p in enumerate(dist))
            assert rating["expected_score"] == pytest.approx(expected, abs=1e-9)
            assert r[f"reward_{side}"] == pytest.approx((expected - 5.5) / 4.5, abs=1e-9)
            assert -1.0 <= r[f"reward_{side}"] <= 1.0
        assert r["prompt"] == pair["prompt"]
    as_dataset(records)
    # Prompt–completion rows rate each reply alone, with the same reward.
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs[:2]]
    single = qstar.rate(rows, model=model)
    assert [s["reward"] for s in single] == pytest.approx(
        [r["reward_chosen"] for r in records], abs=1e-9
    )
    as_dataset(single)


def test_solve_records_are_checked_and_load_as_a_dataset(model):
    questions = read_jsonl(ROOT / "examples" / "gsm8k_sample.jsonl", limit=2)
    records = qstar.solve(
        questions, model=model, task="gsm8k", strategy="majority", n=2, max_tokens=96, seed=1
    )
    assert [r["line"] for r in records] == [1, 2]
    for q, r in zip(questions, records):
        assert r["question"] == q["question"]
        assert r["reference"] == q["answer"].rsplit("####", 1)[1].strip()
        assert r["strategy"] == "majority" and r["budget"] == 2
        correct = r["answer"] is not None and float(r["answer"]) == float(r["reference"])
        assert r["correct"] == correct
        assert r["compute"]["tokens_generated"] > 0
        assert r["candidates"] == 2
    as_dataset(records)
    # The same seed gives the same records.
    again = qstar.solve(
        questions, model=model, task="gsm8k", strategy="majority", n=2, max_tokens=96, seed=1
    )
    assert [r["solution"] for r in again] == [r["solution"] for r in records]


def test_bad_rows_raise_value_error_with_their_index(model, pairs):
    with pytest.raises(ValueError, match=r"pairs\[1\]: needs `chosen` and `rejected`"):
        qstar.label([pairs[0], {"prompt": "only a prompt"}], model=model)
    with pytest.raises(ValueError, match=r"pairs\[0\]: not a dict"):
        qstar.label(["text"], model=model)
    with pytest.raises(ValueError, match=r"pairs\[0\]: .*not JSON-like"):
        qstar.label([{"prompt": object()}], model=model)
    with pytest.raises(ValueError, match="list of dicts, not a string"):
        qstar.label("pairs.jsonl", model=model)
    with pytest.raises(ValueError, match="principles"):
        qstar.label(pairs, model=model, principles=0)
    with pytest.raises(ValueError, match="unknown method"):
        qstar.label(pairs, model=model, method="vibes")
    with pytest.raises(ValueError, match="batch_pairs must be at least 1"):
        qstar.label(pairs, model=model, batch_pairs=0)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        qstar.rate(pairs, model=model, batch=0)
    with pytest.raises(ValueError, match=r"pairs_or_rows\[1\]: a prompt–completion row"):
        qstar.rate([pairs[0], {"prompt": "q", "completion": "a"}], model=model)
    with pytest.raises(ValueError, match=r"questions\[0\]: missing string field"):
        qstar.solve([{"answer": "#### 4"}], model=model, task="gsm8k")
    with pytest.raises(ValueError, match="unknown task"):
        qstar.solve([], model=model, task="chess")
    with pytest.raises(ValueError, match="unknown strategy"):
        qstar.solve([], model=model, strategy="guess")
    with pytest.raises(ValueError, match="needs a verifier"):
        qstar.solve([], model=model, strategy="best-of-n")
    with pytest.raises(ValueError, match="n must be"):
        qstar.solve([], model=model, n=0)
    assert qstar.label([], model=model) == []


def cli_records(tmp_path, command, pairs, *args):
    """The records `qstar COMMAND` writes for `pairs`, read back."""
    import json
    import subprocess

    from conftest import qstar_binary

    src = tmp_path / f"{command}-in.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / f"{command}-out.jsonl"
    run = subprocess.run(
        [str(qstar_binary()), command, "--input", str(src), "--out", str(out), *args],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    return read_jsonl(out)


def test_revise_gives_the_command_line_programs_sft_rows(model, pairs, tmp_path):
    records = qstar.revise(pairs[:2], model=model, seed=5, max_tokens=24,
                           mix_input_replies=True)
    want = cli_records(tmp_path, "revise", pairs[:2], "--seed", "5", "--max-tokens", "24",
                       "--mix-input-replies")
    assert records == want
    # A revision row and the input's own reply for each pair, TRL messages.
    assert [(r["line"], r["source"]) for r in records] == [
        (1, "revision"), (1, "input"), (2, "revision"), (2, "input")]
    for r in records:
        assert is_messages(r["messages"])
    chain = records[0]["chain"]
    assert records[0]["messages"][1]["content"] == chain["rounds"][-1]["revision"]
    openrlhf = qstar.revise(pairs[:1], model=model, seed=5, max_tokens=24, keys="openrlhf")
    assert set(openrlhf[0]) >= {"input", "output", "chain"}
    as_dataset(records)
    with pytest.raises(ValueError, match="keys"):
        qstar.revise(pairs[:1], model=model, keys="alpaca")


def test_judge_gives_the_command_line_programs_pairs(model, pairs, tmp_path):
    # Seed 8 forms pairs on two of the three prompts (most of the default
    # model's judgements do not parse, so many seeds form none).
    records = qstar.judge(pairs, model=model, samples=4, seed=8, max_tokens=48)
    want = cli_records(tmp_path, "judge", pairs, "--samples", "4", "--seed", "8",
                       "--max-tokens", "48")
    # The command exports only the prompts that formed a pair.
    assert len(want) == 2
    assert [r for r in records if "chosen" in r] == want
    assert len(records) == len(pairs)
    for r in records:
        assert len(r["samples"]) == 4
        if "chosen" in r:
            assert dpo_form(r) == "conversational"
    with pytest.raises(ValueError, match="samples"):
        qstar.judge(pairs[:1], model=model, samples=1)
