"""The README stays true: its format tables are the schema's, its commands exist, its setup is two lines."""
import re
from pathlib import Path

from filterdb import schema
from filterdb.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_format_tables_document_every_column_exactly():
    for heading, columns in (("### /models", schema.MODEL_COLUMNS), ("### /layers", schema.LAYER_COLUMNS)):
        assert f"{heading}\n\n{schema.markdown_table(columns)}\n" in README, (
            f"README's {heading} table is out of date: paste the output of 'python -m filterdb.schema'")


def test_setup_section_holds_exactly_two_commands():
    setup = README.split("## Setup", 1)[1]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "pip install" in lines[0] and "filterdb demo" in lines[0]
    assert "pytest" in lines[1]


def test_every_command_the_readme_uses_exists():
    used = set(re.findall(r"^(?:\.venv/bin/)?filterdb ([a-z-]+)", README, re.M))
    used |= set(re.findall(r"`filterdb ([a-z-]+)", README))
    assert {"build", "compare", "demo", "info", "metrics", "evaluate", "train"} <= used
    unknown = used - set(main.commands)
    assert not unknown, f"README uses commands that do not exist: {sorted(unknown)}"


def test_every_dependency_is_explained():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]]
    names += [re.split(r"[<>=\[ ]", dep, maxsplit=1)[0] for dep in project["optional-dependencies"]["dev"]]
    why = README.split("## Dependencies, and why", 1)[1].split("\n## ", 1)[0]
    missing = [n for n in names if n not in why]
    assert not missing, f"README does not say why these dependencies are there: {missing}"
