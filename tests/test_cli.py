"""The command line: bad input gives one clear line on stderr, a non-zero exit, no traceback and writes nothing
(issue 8); `medsum train --help` documents every key with its default (issue 2)."""

from __future__ import annotations

import gzip
import json
import re
import subprocess

import pytest

from conftest import medsum_command, subprocess_env
from medsum.cli import main
from medsum.config import help_lines
from medsum.errors import MedsumError


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, data_dir):
    """Real records with one bad line in the middle (as acceptance/8-reliability writes them)."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    with gzip.open(data_dir / "validation.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(next(handle)) for _ in range(40)]
    lines = [json.dumps(dict(r, article=r["article"][:3000])) for r in rows]
    no_abstract = {k: v for k, v in rows[2].items() if k != "abstract"}
    (folder / "noabs.jsonl").write_text("\n".join(lines[:2] + [json.dumps(no_abstract)] + lines[3:]) + "\n")
    (folder / "garbage.jsonl").write_text("\n".join(lines[:4] + ["not json"] + lines[5:]) + "\n")
    (folder / "good.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "empty.jsonl").write_text("")
    (folder / "bad.yaml").write_text("seed: 3\nmodel: [unclosed\n")
    return folder


# (case, arguments after `train` with {d}: the bad-input folder, {data}: the real data, pattern stderr must match)
BAD_INPUTS = [
    ("missing data path", ["data.path={d}/nope"], r"data\.path.*nope"),
    ("record without abstract", ["data.path={d}/noabs.jsonl"], r"noabs\.jsonl line 3\b.*abstract"),
    ("not JSON", ["data.path={d}/garbage.jsonl"], r"garbage\.jsonl line 5\b"),
    ("empty data file", ["data.path={d}/empty.jsonl"], r"empty\.jsonl"),
    ("broken YAML", ["{d}/bad.yaml"], r"bad\.yaml.*line \d"),
    ("unknown key", ["data.path={data}", "train.learnin_rate=1"], r"train\.learnin_rate.*train\.learning_rate"),
    ("unknown method", ["data.path={data}", "method.name=lorra"], r"method\.name.*lorra"),
    ("rank zero", ["data.path={data}", "method.r=0"], r"method\.r\b"),
    ("negative learning rate", ["data.path={data}", "train.learning_rate=-1"], r"train\.learning_rate"),
    ("unknown local model", ["data.path={d}/good.jsonl", "model.name={d}/no-such-model"], r"model\.name"),
    ("unknown hub model", ["data.path={d}/good.jsonl", "model.name=nobody-medsum/no-such-model"], r"model\.name"),
]


@pytest.mark.parametrize("case, arguments, pattern", BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(bad_inputs, data_dir, tmp_path, case, arguments, pattern):
    output_dir = tmp_path / "run"
    items = [a.format(d=bad_inputs, data=data_dir) for a in arguments]
    if not items[0].endswith(".yaml"):
        items = ["model.name=tiny", "method.name=lora", "train.max_steps=1", *items]
    command = medsum_command("train", *items, f"output_dir={output_dir}")
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, f"{case}: exit 0"
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, f"{case}: want one line on stderr, got {lines}"
    assert lines[0].startswith("medsum: error: ")
    assert re.search(pattern, lines[0]), f"{case}: {lines[0]!r} does not match {pattern!r}"
    assert not output_dir.exists(), f"{case}: wrote {output_dir}"


def test_in_process_error_is_one_line_with_exit_2(capfd, tmp_path):
    assert main(["train", "train.learnin_rate=1", "method.r=0x", f"output_dir={tmp_path / 'run'}"]) == 2
    out, err = capfd.readouterr()
    assert err.count("\n") == 1 and "did you mean train.learning_rate?" in err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback():
    with pytest.raises(MedsumError, match="train.learnin_rate"):
        main(["--debug", "train", "train.learnin_rate=1"])


def test_unexpected_error_is_still_one_line(capfd, monkeypatch):
    import medsum.accounting

    def broken(cfg):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(medsum.accounting, "count_for_config", broken)
    assert main(["params", "--json"]) == 1
    _, err = capfd.readouterr()
    assert err.count("\n") == 1
    assert "internal error: RuntimeError: something broke" in err and "--debug" in err


def test_stray_argument_is_refused(capfd, tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 1\n")
    with pytest.raises(MedsumError, match="key=value"):
        main(["--debug", "train", str(tmp_path / "a.yaml"), "not-an-override"])
    assert main(["train", str(tmp_path / "a.yaml"), "not-an-override"]) == 2
    assert "not-an-override" in capfd.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capfd.readouterr().err


def test_overrides_after_options_are_gathered(monkeypatch):
    import medsum.rundir
    import medsum.train

    seen = []
    monkeypatch.setattr(medsum.train, "run", lambda cfg, force, show_progress: seen.append((cfg, force)))
    monkeypatch.setattr(medsum.rundir, "is_finished", lambda run_dir: False)
    assert main(["train", "--quiet", "seed=9", "--force", "method.name=full", "output_dir=/nonexistent/x"]) == 0
    (cfg, force), = seen
    assert (cfg.seed, cfg.method.name, force) == (9, "full", True)


def help_blocks(text: str) -> list[tuple[str, str]]:
    """`--help`'s config reference: (key, its help text with wrapped lines joined), in order (a key several methods
    share, such as method.r, appears once per method)."""
    reference = text[text.index("config keys"):].splitlines()[1:]
    blocks: list[tuple[str, str]] = []
    for line in reference:
        if line.startswith("  ") and not line.startswith("   "):
            blocks.append((line.strip(), ""))
        elif blocks:
            blocks[-1] = (blocks[-1][0], f"{blocks[-1][1]} {line.strip()}".strip())
    return blocks


def test_train_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    listed = help_blocks(text)
    rows = help_lines()
    assert [key for key, _ in listed] == [key for key, _, _ in rows]
    for (key, block), (_, default, _) in zip(listed, rows):
        assert block.endswith(f"[{default}]"), f"{key}: {block!r} does not end with [{default}]"
    blocks = dict(listed)
    assert blocks["generate.num_beams"].endswith("[4]")
    assert blocks["train.learning_rate"].endswith("[null]")
    assert "medsum train configs/lora.yaml" in text  # examples open the help


def test_a_command_is_required():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
