"""The README is true: its Python examples run, and CI runs its test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_python_examples_run_in_order():
    namespace = {}
    blocks = list(re.finditer(r"```python\n(.*?)```", README, re.S))
    assert len(blocks) >= 6
    for block in blocks:
        # Pad with blank lines so a failure's traceback names the README's own line.
        first_line = README[: block.start(1)].count("\n")
        exec(
            compile("\n" * first_line + block.group(1), str(ROOT / "README.md"), "exec"), namespace
        )


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(commands) >= 2, "the README opens with the main command and the test command"
    test_command = commands[1].strip()
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()
