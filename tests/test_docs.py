"""The README's promises: its config reference is the one generated from the dataclasses, and its two commands
are the Makefile's."""

import re
from pathlib import Path

from medsum.config import load_run_config, markdown_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_matches_the_dataclasses():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", text, re.S)
    assert block, "README.md lacks the config-reference markers"
    assert block.group(1).strip() == markdown_reference().strip(), \
        "README config reference is stale: regenerate it from medsum.config.markdown_reference()"


def test_readme_opens_with_make_demo_and_make_test():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_shipped_configs_are_valid():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"lora", "prompt_tuning", "full"}
    for path in configs:
        cfg = load_run_config(path)
        assert cfg.method.name == path.stem
        assert path.read_text().startswith(f"# medsum train configs/{path.name}")


def test_readme_methods_table_matches_the_method_modules():
    from medsum.methods.catalog import markdown_table

    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- methods:start -->\n(.*?)\n<!-- methods:end -->", text, re.S)
    assert block, "README.md lacks the methods markers"
    assert block.group(1).strip() == markdown_table().strip(), \
        "README methods table is stale: regenerate it from medsum.methods.catalog.markdown_table()"
