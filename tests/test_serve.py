"""Using a trained run: the summariser API, export (merged and not), the HTTP service, and `medsum summarize`.

One tiny LoRA run is trained per session. Two steps barely move lora_B, so tests about the adapter's effect use a
copy whose lora_B is drawn at random (``perturbed_run``): otherwise "merged == adapter" would hold trivially.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import itertools
import json
import os
import shutil
import socket
import sys
import threading
import time
import typing
import warnings
from pathlib import Path

import httpx
import pytest
import torch
import yaml

import medsum
from medsum.cli import main
from medsum.config import load_run_config
from medsum.errors import MedsumError
from medsum.evaluate import generate_texts, generation_kwargs
from medsum.serve import export_run, load_summarizer
from medsum.serve.summarizer import GENERATION_BOUNDS, resolve_generation

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sumpubmed"
GREEDY = {"num_beams": 1}


def _articles(n: int) -> list[str]:
    with gzip.open(DATA / "test.jsonl.gz", "rt") as handle:
        return [json.loads(line)["article"] for line in itertools.islice(handle, n)]


ARTICLES = _articles(3)


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory) -> Path:
    from medsum.train import run

    out = tmp_path_factory.mktemp("runs") / "lora"
    # no warm-up: with 2 steps, a 10% warm-up makes step 1 a zero-lr step that selection may keep (lora_B == 0)
    cfg = load_run_config(None, [
        "model.name=tiny", f"data.path={DATA}", "method.name=lora", "train.max_steps=2", "data.max_train_examples=8",
        "data.max_eval_examples=2", "data.max_source_tokens=128", "generate.max_new_tokens=16",
        "generate.min_new_tokens=1", "train.warmup_ratio=0", f"output_dir={out}"])
    run(cfg, show_progress=False)
    return out


def _copy_run(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target)
    return target


def _rewrite_adapter(run_dir: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    path = run_dir / "adapter" / "adapter_model.safetensors"
    save_file(change(load_file(str(path))), str(path))


@pytest.fixture(scope="session")
def perturbed_run(lora_run, tmp_path_factory) -> Path:
    run_dir = _copy_run(lora_run, tmp_path_factory.mktemp("perturbed") / "run")
    generator = torch.Generator().manual_seed(0)
    _rewrite_adapter(run_dir, lambda tensors: {
        k: torch.randn(v.shape, generator=generator) * 0.5 if "lora_B" in k else v for k, v in tensors.items()})
    return run_dir


@pytest.fixture(scope="session")
def summarizer(lora_run):
    return medsum.load(lora_run)


@pytest.fixture(scope="session")
def perturbed(perturbed_run):
    return load_summarizer(perturbed_run)


def _greedy(model, tokenizer, texts: list[str], prefix: str = "summarize: ", max_source_tokens: int = 128) -> list[str]:
    ids = tokenizer([prefix + t for t in texts], max_length=max_source_tokens, truncation=True)["input_ids"]
    settings = generation_kwargs(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=3, min_new_tokens=1,
                                 max_new_tokens=16)
    return generate_texts(model, tokenizer, ids, settings, batch_size=8, device="cpu")[0]


# ---------------------------------------------------------------------------------------------- API


def test_summarize_a_string_and_a_list(summarizer):
    one = summarizer.summarize(ARTICLES[0])
    assert isinstance(one, str) and one.strip()
    assert summarizer.summarize([ARTICLES[0]]) == [one]
    many = summarizer.summarize(ARTICLES[:2])
    assert len(many) == 2 and all(isinstance(s, str) and s.strip() for s in many)
    assert summarizer.summarize([]) == []


def test_the_run_prefix_and_truncation_apply(summarizer):
    assert summarizer.prefix == "summarize: " and summarizer.cfg.data.max_source_tokens == 128
    long_text = ARTICLES[0] * 3
    # everything past 128 tokens is cut, so a different tail cannot change the summary
    assert summarizer.summarize(long_text + " unrelated tail words", **GREEDY) == summarizer.summarize(
        long_text + " something else entirely", **GREEDY)


@pytest.mark.parametrize("overrides", [
    {"num_beams": 0}, {"num_beams": 9}, {"num_beams": True}, {"num_beams": 2.5}, {"max_new_tokens": 0},
    {"max_new_tokens": 2000}, {"min_new_tokens": 20, "max_new_tokens": 10}, {"length_penalty": 0},
    {"length_penalty": 6}, {"length_penalty": float("nan")}, {"no_repeat_ngram_size": 11},
    {"no_repeat_ngram_size": -1}, {"temperature": 0.7}, {"num_beams": "2"},
])
def test_out_of_range_generation_settings_are_refused(summarizer, overrides):
    with pytest.raises(MedsumError):
        summarizer.summarize("some text", **overrides)


def test_generation_bounds_are_the_config_declarations_capped_for_requests():
    from medsum.config import GENERATION_SETTINGS
    from medsum.serve.schema import request_model
    from medsum.serve.summarizer import GENERATION_BOUNDS

    assert list(GENERATION_BOUNDS) == list(GENERATION_SETTINGS) == [
        "num_beams", "length_penalty", "no_repeat_ngram_size", "min_new_tokens", "max_new_tokens"]
    assert GENERATION_BOUNDS["num_beams"].describe() == "an integer in [1, 8]"
    assert GENERATION_BOUNDS["length_penalty"].describe() == "a number in (0, 5]"
    one, many = (typing.get_args(member)[0] for member in typing.get_args(typing.get_args(request_model(4))[0]))
    assert set(one.model_fields) == {"text", *GENERATION_SETTINGS}
    assert set(many.model_fields) == {"texts", *GENERATION_SETTINGS}
    # a config may ask for more than a request may: a study can test 16 beams, a caller cannot
    assert load_run_config(None, ["generate.num_beams=16"]).generate.num_beams == 16
    with pytest.raises(MedsumError, match="generate.num_beams must be >= 1, got 0"):
        load_run_config(None, ["generate.num_beams=0"])


def test_generation_settings_resolve_over_the_run_defaults(summarizer):
    settings = summarizer.generation_settings(num_beams=2, max_new_tokens=8)
    assert settings["num_beams"] == 2 and settings["max_new_tokens"] == 8 and settings["no_repeat_ngram_size"] == 3
    run_defaults = {"num_beams": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3, "min_new_tokens": 30,
                    "max_new_tokens": 256}
    assert resolve_generation(run_defaults, {"max_new_tokens": 16})["min_new_tokens"] == 16


def test_empty_or_non_string_texts_are_refused(summarizer):
    for bad in ("", "   \n", ["fine", ""], [3], 7):
        with pytest.raises(MedsumError):
            summarizer.summarize(bad)


def test_unfinished_or_missing_run_is_refused(tmp_path, lora_run):
    with pytest.raises(MedsumError, match="not found"):
        medsum.load(tmp_path / "nowhere")
    unfinished = _copy_run(lora_run, tmp_path / "unfinished")
    (unfinished / "metrics.json").unlink()
    with pytest.raises(MedsumError, match="not a finished run"):
        medsum.load(unfinished)


# ---------------------------------------------------------------------------------------------- adapter loading


def test_the_adapter_changes_the_output(perturbed, perturbed_run):
    from medsum.models import load_pretrained

    base = load_pretrained(str(perturbed_run / "base_model"))
    assert perturbed.summarize(ARTICLES[:2], **GREEDY) != _greedy(base, perturbed.tokenizer, ARTICLES[:2])


def test_an_adapter_file_without_its_tensors_is_refused(lora_run, tmp_path):
    partial = _copy_run(lora_run, tmp_path / "partial")
    _rewrite_adapter(partial, lambda tensors: dict(list(tensors.items())[:4]))
    with pytest.raises(MedsumError, match="4 of the adapter's 24 tensors"):
        load_summarizer(partial)


def test_a_lora_adapter_that_changes_nothing_is_flagged(lora_run, tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*every lora_B weight is zero")
        load_summarizer(lora_run)  # trained: no warning
    zero = _copy_run(lora_run, tmp_path / "zero")
    _rewrite_adapter(zero, lambda tensors: {k: v * 0 if "lora_B" in k else v for k, v in tensors.items()})
    with pytest.warns(UserWarning, match="every lora_B weight is zero"):
        load_summarizer(zero)


# ---------------------------------------------------------------------------------------------- export


def test_merged_export_loads_without_peft_and_matches_the_adapter(perturbed, perturbed_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "merged"
    line = export_run(perturbed_run, out, merge=True)
    assert "exported lora run" in line and not (out / "adapter_config.json").exists()
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert not any("lora_" in name for name, _ in model.named_parameters())
    manifest = json.loads((out / "medsum_export.json").read_text())
    assert manifest["merged"] is True and manifest["prefix"] == "summarize: "
    merged = _greedy(model, AutoTokenizer.from_pretrained(out), ARTICLES)
    assert merged == perturbed.summarize(ARTICLES, **GREEDY)


def test_adapter_export_is_self_contained(lora_run, tmp_path):
    from peft import AutoPeftModelForSeq2SeqLM

    out = tmp_path / "adapter-export"
    export_run(lora_run, out, merge=False)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(out.resolve() / "base_model")
    assert (out / "tokenizer.json").is_file() and (out / "base_model" / "model.safetensors").is_file()
    assert type(AutoPeftModelForSeq2SeqLM.from_pretrained(out)).__name__ == "PeftModelForSeq2SeqLM"


def _prompt_tuning_run(lora_run: Path, target: Path) -> Path:
    """A finished prompt-tuning run made from the LoRA run's files: training one would cost a minute."""
    from medsum.methods import METHODS, ModelContext
    from medsum.models import FAMILIES, load_pretrained

    run_dir = target
    run_dir.mkdir()
    for name in ("config.yaml", "metrics.json", "tokenizer", "base_model"):
        source = lora_run / name
        shutil.copytree(source, run_dir / name) if source.is_dir() else shutil.copy(source, run_dir / name)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["method"] = {"name": "prompt_tuning", "num_virtual_tokens": 4, "init": "random"}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    method = load_run_config(run_dir / "config.yaml").method
    torch.manual_seed(0)
    model = METHODS["prompt_tuning"].apply(load_pretrained(str(run_dir / "base_model")), method,
                                           ModelContext("tiny", str(run_dir / "tokenizer"), FAMILIES["t5"]))
    model.save_pretrained(run_dir / "adapter")
    return run_dir


def test_prompt_tuning_cannot_be_merged_and_exports_its_adapter(lora_run, tmp_path):
    from peft import AutoPeftModelForSeq2SeqLM
    from transformers import AutoTokenizer

    pt_run = _prompt_tuning_run(lora_run, tmp_path / "pt")
    out = tmp_path / "pt-export"
    line = export_run(pt_run, out, merge=True)
    assert "prompt_tuning cannot be merged" in line and "\n" not in line
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        out.resolve() / "base_model")
    exported = AutoPeftModelForSeq2SeqLM.from_pretrained(out).eval()
    expected = load_summarizer(pt_run).summarize(ARTICLES[:2], **GREEDY)
    assert _greedy(exported, AutoTokenizer.from_pretrained(out), ARTICLES[:2]) == expected


def test_full_fine_tuning_exports_its_model(lora_run, tmp_path):
    from medsum.models import load_pretrained

    full_run = _copy_run(lora_run, tmp_path / "full")
    shutil.rmtree(full_run / "adapter")
    config = yaml.safe_load((full_run / "config.yaml").read_text())
    config["method"] = {"name": "full"}
    (full_run / "config.yaml").write_text(yaml.safe_dump(config))
    load_pretrained(str(full_run / "base_model")).save_pretrained(full_run / "model")
    line = export_run(full_run, tmp_path / "out", merge=True)
    assert "no adapter to merge" in line
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    assert medsum.load(full_run).summarize(ARTICLES[0]).strip()


def test_export_never_overwrites_and_leaves_no_partial_directory(lora_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(MedsumError, match="not empty"):
        export_run(lora_run, taken, merge=True)
    assert (taken / "keep.txt").read_text() == "mine"
    broken = _copy_run(lora_run, tmp_path / "broken")
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(MedsumError):
        export_run(broken, tmp_path / "never", merge=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "taken"]


# ---------------------------------------------------------------------------------------------- HTTP service


@contextlib.contextmanager
def running_server(app):
    """A real uvicorn server for ``app`` on a free port, in a background thread."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(summarizer):
    from medsum.serve.app import create_app

    with running_server(create_app(summarizer, max_body_bytes=100_000, max_texts=4)) as url:
        yield url


def _post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url + "/summarize", timeout=60, **kwargs)


def test_service_answers_and_refuses_bad_input(server, summarizer):
    assert httpx.get(server + "/health").json()["status"] == "ok"
    ok = _post(server, json={"text": ARTICLES[0]})
    assert ok.status_code == 200 and ok.json()["summary"].strip()
    assert ok.json()["summary"] == summarizer.summarize(ARTICLES[0])
    two = _post(server, json={"texts": ARTICLES[:2], "max_new_tokens": 4, "num_beams": 1})
    assert two.status_code == 200 and len(two.json()["summaries"]) == 2

    bad = {
        "malformed JSON": {"content": b'{"text": ', "headers": {"content-type": "application/json"}},
        "missing field": {"json": {"txt": "x"}},
        "wrong type": {"json": {"text": 5}},
        "empty text": {"json": {"text": "  "}},
        "too many texts": {"json": {"texts": ["a"] * 5}},
        "beams out of range": {"json": {"text": "a", "num_beams": 9}},
        "both text and texts": {"json": {"text": "a", "texts": ["b"]}},
        "empty texts": {"json": {"texts": []}},
        "blank text in texts": {"json": {"texts": ["a", " \n"]}},
        "beams as a string": {"json": {"text": "a", "num_beams": "2"}},
        "not UTF-8": {"content": b"\xff\xfe"},
        "not an object": {"json": ["a"]},
    }
    for what, request in bad.items():
        response = _post(server, **request)
        assert response.status_code == 422 and "detail" in response.json(), what

    too_big = json.dumps({"text": "a " * 60_000}).encode()
    assert _post(server, content=too_big, headers={"content-type": "application/json"}).status_code == 413
    chunks = (too_big[i:i + 8192] for i in range(0, len(too_big), 8192))  # no Content-Length: counted as it comes
    assert _post(server, content=chunks, headers={"content-type": "application/json"}).status_code == 413

    again = _post(server, json={"text": ARTICLES[1]})
    assert again.status_code == 200 and again.json()["summary"].strip()
    # what the schema cannot state (a relation between two fields) the server does not refuse: min is lowered
    lowered = _post(server, json={"text": "a", "min_new_tokens": 9, "max_new_tokens": 2, "num_beams": 1})
    assert lowered.status_code == 200
    assert _post(server, json={"text": "a", "max_new_tokens": 2.0, "num_beams": 1}).status_code == 200  # 2.0 is 2


def test_a_failed_generation_answers_500_and_the_service_goes_on(server, summarizer, monkeypatch):
    def broken(texts, settings):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(summarizer, "generate", broken)
    failed = _post(server, json={"text": "a"})
    assert failed.status_code == 500 and "out of memory" in failed.json()["detail"]
    monkeypatch.undo()
    assert _post(server, json={"text": "a"}).status_code == 200


def test_requests_that_arrive_together_share_a_generate_call(server):
    before = httpx.get(server + "/health").json()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(server + "/summarize", json={"text": t, "max_new_tokens": 4})
                                          for t in ARTICLES * 2))

    responses = asyncio.run(burst())
    after = httpx.get(server + "/health").json()
    assert [r.status_code for r in responses] == [200] * 6
    assert after["requests"] - before["requests"] == 6 and after["batches"] - before["batches"] < 6


def test_openapi_page(server):
    assert httpx.get(server + "/docs").status_code == 200
    assert "/summarize" in httpx.get(server + "/openapi.json").json()["paths"]


def test_the_schema_states_what_the_server_enforces(server):
    spec = httpx.get(server + "/openapi.json").json()
    operation = spec["paths"]["/summarize"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in body["oneOf"]] == ["TextRequest", "TextsRequest"]
    schemas = spec["components"]["schemas"]
    one, many = schemas["TextRequest"], schemas["TextsRequest"]
    assert one["required"] == ["text"] and many["required"] == ["texts"]
    assert one["additionalProperties"] is False and many["additionalProperties"] is False
    assert one["properties"]["text"]["pattern"] == r"\S" and many["properties"]["texts"]["items"]["pattern"] == r"\S"
    texts = many["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, 4)  # the server fixture's max_texts
    for key, bound in GENERATION_BOUNDS.items():
        field = one["properties"][key]
        assert field["type"] == ("integer" if bound.kind is int else "number")
        low = "exclusiveMinimum" if bound.bound.low_open else "minimum"
        assert (field[low], field["maximum"]) == (bound.bound.low, bound.bound.high)
    assert sorted(operation["responses"]) == ["200", "400", "413", "422", "500", "503"]
    assert "Retry-After" in operation["responses"]["503"]["headers"]


class SlowSummarizer:
    """A stand-in summariser whose generate() takes ``seconds``: enough to fill a small queue."""

    def __init__(self, summarizer, seconds: float):
        self.cfg, self.seconds, self.calls = summarizer.cfg, seconds, []
        self.generation_settings = summarizer.generation_settings

    def generate(self, texts, settings):
        self.calls.append(len(texts))
        time.sleep(self.seconds)
        return [f"summary of {len(t)} characters" for t in texts]


def test_an_overloaded_server_answers_503_with_retry_after(summarizer):
    from medsum.serve.app import create_app

    slow = SlowSummarizer(summarizer, seconds=1.0)
    with running_server(create_app(slow, max_texts=2, max_queue=3)) as url:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                first = asyncio.create_task(client.post(url + "/summarize", json={"text": "busy"}))
                await asyncio.sleep(0.3)  # the first generate() is under way: the queue is empty again
                return [await first, *await asyncio.gather(
                    *(client.post(url + "/summarize", json={"texts": ["a", "b"]}) for _ in range(3)))]

        responses = asyncio.run(burst())
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 503, 503], "one request of 2 texts fits the queue of 3; two more do not"
        refused = next(r for r in responses if r.status_code == 503)
        assert int(refused.headers["Retry-After"]) >= 1 and "overloaded" in refused.json()["detail"]
        assert httpx.get(url + "/health").json()["queued_texts"] == 0
        assert _post(url, json={"texts": ["a", "b"]}).status_code == 200  # drained: answered again


@pytest.mark.slow
def test_schemathesis_finds_nothing_the_schema_does_not_state(summarizer, tmp_path):
    """schemathesis with every check against the service (a fast stand-in generate(), the real request handling)."""
    import shutil
    import subprocess

    from medsum.serve.app import create_app

    tool = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    with running_server(create_app(SlowSummarizer(summarizer, seconds=0.0), max_texts=4)) as url:
        done = subprocess.run([tool, "run", url + "/openapi.json", "--checks", "all", "-n", "60", "--seed", "1",
                               "--workers", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Schema validation mismatch" not in done.stdout


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_summarizes_a_file_and_stdin(lora_run, tmp_path, capsys, monkeypatch):
    article = tmp_path / "article.txt"
    article.write_text(ARTICLES[0])
    assert main(["summarize", "--run", str(lora_run), str(article)]) == 0
    from_file = capsys.readouterr().out.strip()
    assert from_file
    monkeypatch.setattr("sys.stdin", io.StringIO(ARTICLES[0]))
    assert main(["summarize", "--run", str(lora_run), "-"]) == 0
    assert capsys.readouterr().out.strip() == from_file


def test_cli_json_gives_one_line_per_file(lora_run, tmp_path, capsys):
    files = []
    for i, text in enumerate(ARTICLES[:2]):
        files.append(tmp_path / f"a{i}.txt")
        files[-1].write_text(text)
    assert main(["summarize", "--run", str(lora_run), "--json", "--batch-size", "1", *map(str, files)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in files] and all(r["summary"].strip() for r in rows)


def test_cli_refuses_an_empty_file_in_one_line(lora_run, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["summarize", "--run", str(lora_run), str(empty)]) == 2
    err = capsys.readouterr().err
    assert "empty.txt is empty" in err and "Traceback" not in err


def test_cli_export_merge(lora_run, tmp_path, capsys):
    assert main(["export", str(lora_run), "--merge", "--output", str(tmp_path / "m")]) == 0
    assert "exported lora run" in capsys.readouterr().out
    assert (tmp_path / "m" / "model.safetensors").is_file()
