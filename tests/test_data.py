"""Problem loaders (local files, benchmark rows, offline failure) and the resumable fail@k builder."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import build_hard
import sampler
from data import benchmarks
from data import hard
from data.benchmarks import BenchmarkUnavailable, ProblemFileError, load_problems

ROOT = Path(__file__).resolve().parents[1]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---- loaders ------------------------------------------------------------------------------------

def test_jsonl_json_and_parquet_files_load_with_settable_fields(tmp_path):
    rows = [{"q": "What is 1+1?", "a": 2, "level": 1}, {"q": "Name it.", "a": "\\text{Bob}"}]
    jsonl = write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    as_json = write(tmp_path / "p.json", json.dumps(rows))
    loaded = [load_problems(str(p), problem_field="q", answer_field="a") for p in (jsonl, as_json)]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist([{"q": r["q"], "a": str(r["a"])} for r in rows]), tmp_path / "p.parquet")
    loaded.append(load_problems(str(tmp_path / "p.parquet"), problem_field="q", answer_field="a"))
    for got in loaded:
        assert [(r["problem"], r["answer"]) for r in got] == [("What is 1+1?", "2"), ("Name it.", "\\text{Bob}")]
    assert loaded[0][0]["level"] == 1  # other fields are kept


def test_a_solution_field_gives_the_last_boxed_answer(tmp_path):
    row = {"problem": "p", "solution": "First $\\boxed{1}$, in fact $\\boxed{\\frac{1}{2}}$."}
    path = write(tmp_path / "math.jsonl", json.dumps(row) + "\n")
    assert load_problems(str(path), answer_field="solution")[0]["answer"] == "\\frac{1}{2}"


@pytest.mark.parametrize("content,message", [
    ('{"problem": "a", "answer": "1"}\n{"problem": "b"}\n', r"p\.jsonl:2: no field 'answer'"),
    ('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n', r"p\.jsonl:2: not valid JSON"),
    ('{"problem": "a", "answer": "1"}\n\n[1, 2]\n', r"p\.jsonl:3: a row must be an object"),
    ('{"problem": "", "answer": "1"}\n', r"p\.jsonl:1: field 'problem' must be non-empty text"),
    ('{"problem": "a", "answer": null}\n', r"p\.jsonl:1: field 'answer' holds no answer"),
    ('', r"p\.jsonl: no problems"),
])
def test_bad_rows_fail_naming_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "p.jsonl", content)
    with pytest.raises(ProblemFileError, match=message):
        load_problems(str(path))


def test_missing_file_and_unknown_name_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        load_problems(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="neither a file nor a known benchmark"):
        load_problems("gsm9k")
    with pytest.raises(ProblemFileError, match="unknown format '.csv'"):
        load_problems(str(write(tmp_path / "p.csv", "a,b\n")))


def test_offline_benchmark_fails_fast_saying_how_to_pass_a_file(monkeypatch, tmp_path):
    import huggingface_hub

    def not_cached(*args, local_files_only=False, **kwargs):
        assert local_files_only, "no download may start once the hub probe failed"
        raise FileNotFoundError("not in the cache")

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.setenv("SOAR_CACHE", str(tmp_path / "soar"))  # no cached HARP zip
    monkeypatch.setattr(benchmarks, "HARP_URL", "https://unreachable.invalid/HARP.jsonl.zip")
    for name in benchmarks.BENCHMARKS:
        start = time.monotonic()
        with pytest.raises(BenchmarkUnavailable, match="pass a local file"):
            load_problems(name)
        assert time.monotonic() - start < 15


def test_benchmark_rows_map_to_problem_and_answer(monkeypatch, tmp_path):
    """The hub layouts (as cached by snapshot_download) map to problem/answer rows."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    (tmp_path / "algebra").mkdir()
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "solution": "It is $\\boxed{2}$.", "level": "Level 1",
                                          "type": "Algebra"}]), tmp_path / "algebra" / "test-00000-of-00001.parquet")
    (tmp_path / benchmarks.OLYMPIAD_CONFIG).mkdir()
    pq.write_table(pa.Table.from_pylist([{"question": "Find x.", "final_answer": ["$3$", "$4$"]},
                                         {"question": "Prove it.", "final_answer": None}]),
                   tmp_path / benchmarks.OLYMPIAD_CONFIG / "train-00000-of-00001.parquet")
    write(tmp_path / "test.jsonl", json.dumps({"problem": "2+2?", "answer": "4"}) + "\n")
    monkeypatch.setattr(benchmarks, "hub_snapshot", lambda name, patterns: tmp_path)
    assert [(r["problem"], r["answer"]) for r in load_problems("math")] == [("1+1?", "2")]
    assert [(r["problem"], r["answer"]) for r in load_problems("olympiadbench")] == [("Find x.", "$3$, $4$")]
    assert [(r["problem"], r["answer"]) for r in load_problems("math500")] == [("2+2?", "4")]


# ---- the fail@k builder -------------------------------------------------------------------------

PROBLEMS = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in
            [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1)]] + [{"problem": "Broken gold.", "answer": "}{"}]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"User: {p['problem']}\nAssistant: so \\boxed{{{p['answer']}}}" for p in PROBLEMS] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return LlamaForCausalLM.from_pretrained(path).eval(), tokenizer, path


def run_build(model, tokenizer, out_dir, **kw):
    return hard.build_hard(model, tokenizer, PROBLEMS, 3, out_dir=out_dir, chat_template=False,
                                 max_new_tokens=6, chunk_problems=2, seed=1, progress=False, **kw)


def test_build_hard_keeps_unsolved_problems_and_splits_them(tiny_llama, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny_llama
    real_check_many = hard.check_many

    def grade_by_rule(texts, golds, timeout):
        """Real checks for the golds' self-check; every sample counts as solving golds 3 and 7."""
        if all(t.startswith("\\boxed{") for t in texts):
            return real_check_many(texts, golds, timeout)
        return [g in ("3", "7") for g in golds]
    monkeypatch.setattr(hard, "check_many", grade_by_rule)
    train, test, stats = run_build(model, tokenizer, tmp_path)
    assert stats["pool_size"] == 7 and stats["invalid_gold"] == 1
    assert stats["solve_count_histogram"] == {"0": 4, "3": 2}
    assert (len(train), len(test)) == (2, 2) and stats["n_hard"] == 4
    assert {r["answer"] for r in train + test} == {"11", "15", "4", "10"}
    assert [json.loads(line) for line in (tmp_path / "hard_train.jsonl").read_text().splitlines()] == train
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def test_build_hard_resumes_without_recomputing_and_matches_a_full_run(tiny_llama, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny_llama
    full = run_build(model, tokenizer, tmp_path / "full")
    sampled = []
    real_sample = sampler.sample

    def stop_after_two_chunks(model, prompt_ids, **kw):
        if len(sampled) == 2:
            raise KeyboardInterrupt
        sampled.append(len(prompt_ids))
        return real_sample(model, prompt_ids, **kw)
    monkeypatch.setattr(sampler, "sample", stop_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run_build(model, tokenizer, tmp_path / "resumed")
    results = tmp_path / "resumed" / "results.jsonl"
    assert len(results.read_text().splitlines()) == 4
    with results.open("a") as f:
        f.write('{"problem": "half a line')  # as if killed mid-write
    sampled.clear()
    monkeypatch.setattr(sampler, "sample", lambda model, prompt_ids, **kw: (
        sampled.append(len(prompt_ids)), real_sample(model, prompt_ids, **kw))[1])
    resumed = run_build(model, tokenizer, tmp_path / "resumed")
    # only the chunks not done before: problems 4-5, and 6, whose broken gold leaves nothing to sample
    assert sampled == [2]
    assert resumed == full
    for name in ("results.jsonl", "hard_train.jsonl", "hard_test.jsonl", "stats.json"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "full" / name).read_text()
    sampled.clear()
    assert run_build(model, tokenizer, tmp_path / "resumed") == full and sampled == []


def test_build_hard_refuses_a_folder_built_with_other_settings(tiny_llama, tmp_path):
    model, tokenizer, _ = tiny_llama
    run_build(model, tokenizer, tmp_path)
    with pytest.raises(SystemExit, match="other settings"):
        hard.build_hard(model, tokenizer, PROBLEMS, 5, out_dir=tmp_path, chat_template=False,
                              max_new_tokens=6, chunk_problems=2, seed=1, progress=False)


def test_build_hard_command_line_writes_the_hard_set_where_train_looks(tiny_llama, tmp_path):
    _, _, model_path = tiny_llama
    dataset = write(tmp_path / "mini.jsonl", "".join(json.dumps(p) + "\n" for p in PROBLEMS[:3]))
    build_hard.main(["--model", str(model_path), "--dataset", str(dataset), "--k", "2", "--limit", "2",
                     "--max-new-tokens", "4", "--out-dir", str(tmp_path / "hard"), "--chat-template", "off"])
    train_path, test_path = hard.hard_set_paths(tmp_path / "hard", str(model_path), str(dataset))
    assert train_path.parent == tmp_path / "hard" / model_path.name / "mini"
    stats = json.loads((train_path.parent / "stats.json").read_text())
    assert stats["pool_size"] == 2 and stats["settings"]["k"] == 2
    n_written = len(train_path.read_text().splitlines()) + len(test_path.read_text().splitlines())
    assert n_written == stats["n_hard"]


def test_rounds_add_up_to_k_and_double_what_was_drawn():
    assert hard.round_sizes(128, 8) == [8, 8, 16, 32, 64]
    assert hard.round_sizes(3, 8) == [3]
    assert hard.round_sizes(10, 4) == [4, 4, 2]
    assert all(sum(hard.round_sizes(k, f)) == k for k in range(1, 40) for f in (1, 3, 8))


def test_rounds_stop_a_problem_at_its_first_success_and_give_the_unsolved_all_k(tiny_llama, tmp_path,
                                                                                monkeypatch):
    """Gold 3 is solved by every sample, gold 7 by its 3rd sample only, the rest never: with rounds
    of 1, 1, 2, 1 samples gold 3 takes 1 sample, gold 7 takes 4, the others all 5, and the hard
    set is the one all k samples give."""
    model, tokenizer, _ = tiny_llama
    real_check_many = hard.check_many

    def grade_by_rule(texts, golds, timeout):
        if all(t.startswith("\\boxed{") for t in texts):
            return real_check_many(texts, golds, timeout)
        out = []
        for g in golds:
            seen[g] = seen.get(g, 0) + 1
            out.append(g == "3" or (g == "7" and seen[g] == 3))
        return out
    monkeypatch.setattr(hard, "check_many", grade_by_rule)
    builds = {}
    for all_k in (False, True):
        seen = {}
        builds[all_k] = hard.build_hard(model, tokenizer, PROBLEMS, 5, out_dir=tmp_path / str(all_k),
                                              chat_template=False, max_new_tokens=4, chunk_problems=7,
                                              first_round=1, all_k=all_k, seed=1, progress=False)
    train, test, stats = builds[False]
    rows = {r["answer"]: r for r in hard.read_jsonl(tmp_path / "False" / "results.jsonl")}
    assert stats["settings"]["rounds"] == [1, 1, 2, 1]
    assert (rows["3"]["samples"], rows["3"]["n_correct"]) == (1, 1)
    assert (rows["7"]["samples"], rows["7"]["n_correct"]) == (4, 1)
    assert all(rows[a]["samples"] == 5 and rows[a]["n_correct"] == 0 for a in ("11", "15", "4", "10"))
    assert rows["}{"]["samples"] == 0 and rows["}{"]["n_correct"] is None
    assert (train, test) == builds[True][:2]
    assert stats["samples"] == 1 + 4 + 4 * 5 and builds[True][2]["samples"] == 6 * 5
    assert builds[True][2]["solve_count_histogram"] == {"0": 4, "1": 1, "5": 1}


def test_chat_prompts_carry_a_fixed_date(tiny_llama):
    import sampler as project_sampler
    _, tokenizer, _ = tiny_llama
    tokenizer = tokenizer.__class__.from_pretrained(tiny_llama[2])
    tokenizer.chat_template = ("{{ 'Today Date: ' + (date_string if date_string is defined else "
                               "'a date that changes') + '\\n' }}{% for m in messages %}{{ m['content'] }}"
                               "{% endfor %}")
    ids = project_sampler.encode_prompt(tokenizer, "hi", chat_template=True)
    assert tokenizer.decode(ids).startswith("Today Date: " + project_sampler.CHAT_DATE)


def test_the_builder_loads_the_base_without_adapters(tiny_llama):
    import models as project_models
    model, _ = project_models.load_model(str(tiny_llama[2]), "none", adapters=False)
    assert not any("lora_" in n for n, _ in model.named_parameters()) and not model.training


@pytest.mark.slow  # two processes
def test_two_processes_build_the_same_hard_set_as_one(tiny_llama, tmp_path):
    _, _, model_path = tiny_llama
    dataset = write(tmp_path / "mini.jsonl", "".join(json.dumps(p) + "\n" for p in PROBLEMS))
    args = ["--model", str(model_path), "--dataset", str(dataset), "--k", "3", "--max-new-tokens", "4",
            "--chunk-problems", "2", "--chat-template", "off"]
    build_hard.main([*args, "--out-dir", str(tmp_path / "one")])
    done = subprocess.run([sys.executable, str(ROOT / "build_hard.py"), *args, "--processes", "2",
                           "--out-dir", str(tmp_path / "two")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = hard.hard_set_paths(tmp_path / "one", str(model_path), str(dataset))[0].parent
    for name in ("results.jsonl", "hard_train.jsonl", "hard_test.jsonl", "stats.json"):
        assert (tmp_path / "two" / folder.relative_to(tmp_path / "one") / name).read_text() == \
            (folder / name).read_text()
    assert done.stdout.count("problems solved 0/3 times") == 1
