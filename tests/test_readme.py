"""The README and docs/ stay true: the format tables are the schema's, the commands exist, the setup is two lines,
and the code blocks run."""
import json
import re
from pathlib import Path

from filterdb import schema
from filterdb.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FORMAT = (ROOT / "docs" / "format.md").read_text()
DEVELOPMENT = (ROOT / "docs" / "development.md").read_text()
# The README first, then docs/ in name order: the runnable blocks of docs/ may use what the README's made.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_format_tables_document_every_column_exactly():
    for heading, columns in (("### /models", schema.MODEL_COLUMNS), ("### /layers", schema.LAYER_COLUMNS)):
        assert f"{heading}\n\n{schema.markdown_table(columns)}\n" in FORMAT, (
            f"docs/format.md's {heading} table is out of date: paste the output of 'python -m filterdb.schema'")


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
    for document in DOCUMENTS:
        text = document.read_text()
        named = set(re.findall(r"^(?:\.venv/bin/)?filterdb ([a-z-]+)", text, re.M))
        named |= set(re.findall(r"`filterdb ([a-z-]+)", text))
        unknown = named - set(main.list_commands(None))
        assert not unknown, f"{document.name} uses commands that do not exist: {sorted(unknown)}"


def test_every_dependency_is_explained():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]]
    names += [re.split(r"[<>=\[ ]", dep, maxsplit=1)[0] for dep in project["optional-dependencies"]["dev"]]
    why = DEVELOPMENT.split("## Dependencies, and why", 1)[1].split("\n## ", 1)[0]
    missing = [n for n in names if n not in why]
    assert not missing, f"docs/development.md does not say why these dependencies are there: {missing}"
    runtime = [re.split(r"[<>=\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]]
    in_short = README.split("## Dependencies\n", 1)[1].split("\n## ", 1)[0]
    missing = [n for n in runtime if n not in in_short]
    assert not missing, f"the README's Dependencies section does not say why these are there: {missing}"


def test_readme_stays_a_guide_of_at_most_350_lines():
    assert len(README.splitlines()) <= 350, "move reference detail into docs/ and link to it"


# ------------------------------------------------------------------ the code blocks of the README and docs/ run

MARKER = re.compile(r"<!-- (runnable|not run by tests/test_readme\.py: [^>]+) -->\n```(bash|python)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str, str]]:
    """(marker, language, code) of every ```bash and ```python block of the README, then of docs/, in order."""
    return [block for document in DOCUMENTS for block in MARKER.findall(document.read_text())]


def test_every_code_block_says_whether_it_runs():
    for document in DOCUMENTS:
        text = document.read_text()
        fences = re.findall(r"^```(bash|python)$", text, re.M)
        assert len(MARKER.findall(text)) == len(fences), (
            f"every ```bash / ```python block of {document.name} needs a marker line right above it: "
            "'<!-- runnable -->' or '<!-- not run by tests/test_readme.py: WHY -->'")
    assert sum(marker == "runnable" for marker, _, _ in readme_blocks()) >= 7


def readme_script() -> str:
    """The runnable blocks as one bash script: bash verbatim, python through a here-document."""
    parts = ["set -euo pipefail"]
    for marker, language, code in readme_blocks():
        if marker != "runnable":
            continue
        parts.append(code if language == "bash" else f"python - <<'PYTHON'\n{code}PYTHON\n")
    return "\n".join(parts)


def test_the_runnable_blocks_run_as_written(demo_home, tmp_path):
    """After the setup commands (here: the suite's demo checkpoints and database in FILTERDB_HOME, so
    'filterdb demo' finds them built), in a fresh working folder holding the repository's figures/."""
    import os
    import shutil
    import subprocess
    import sys

    import h5py

    home = tmp_path / "home"
    for part in ("demo-checkpoints", "demo-db"):
        shutil.copytree(demo_home / part, home / part)
    work = tmp_path / "work"
    work.mkdir()
    (work / "figures").symlink_to(Path(__file__).resolve().parents[1] / "figures")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILTERDB_")}
    env.update(FILTERDB_HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               MPLBACKEND="Agg")
    done = subprocess.run(["bash", "-c", readme_script()], cwd=work, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr
    # What the blocks say they make is there.
    assert f"The demo database is {home / 'demo-db'}" in done.stderr
    assert f"filterdb compare robust normal --layer deciles --db {home / 'demo-db'}" in done.stderr
    assert json.loads((work / "info.json").read_text())["models"] == 32
    assert (work / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((work / "compare.json").read_text())[0]["group_a"] == "arch=resnet8-8,robust"
    assert sorted(p.parent.name for p in (work / "runs" / "pair").glob("*/last.pt")) == ["normal", "pgd"]
    with h5py.File(work / "my-db" / "filterdb.h5", "r") as f:
        assert len(f["models/model_id"]) == 2
    assert any((work / "figs").glob("*.png"))
