"""The README's examples run as written: python blocks in order, then every `wsl` line of the bash blocks.

A block preceded by an `<!-- no-test: reason -->` comment is skipped (it needs a Hub account, or
minutes of training that `wsl demo` covers). Blocks run in one temporary folder, in README order.
"""
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- no-test[^>]*-->\s*)?```(\w+)\n(.*?)```", re.S)


def blocks():
    for m in BLOCK.finditer(README.read_text()):
        yield m.group(2), m.group(3), bool(m.group(1))


def wsl_lines(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("wsl "):
            out.append(line[4:])
    return out


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WSL_STORE")  # the README uses the default ./wsl-store
    namespace: dict = {}
    ran = {"python": 0, "wsl": 0, "toml": 0}
    for lang, text, skip in blocks():
        if skip:
            continue
        if lang == "toml":
            name = re.search(r"^# (\S+\.toml)", text, re.M)
            assert name, "a TOML example starts with '# FILE.toml' so later examples can use it"
            Path(name.group(1)).write_text(text)
            ran["toml"] += 1
        elif lang == "python":
            exec(compile(text, f"README.md python block {ran['python']}", "exec"), namespace)
            ran["python"] += 1
        elif lang == "bash":
            for line in wsl_lines(text):
                code, out, err = run_cli(*shlex.split(line))
                assert code == 0, f"`wsl {line}` exited {code}:\n{err}\n{out}"
                ran["wsl"] += 1
    assert ran["toml"] >= 1 and ran["python"] >= 3 and ran["wsl"] >= 10, ran
    assert Path("zoo-hub/README.md").exists() and Path("my-zoo-plots").is_dir()


def test_no_test_markers_say_why():
    for m in re.finditer(r"<!-- no-test(.*?)-->", README.read_text()):
        assert m.group(1).strip(": ").strip(), "a skipped README block says why it is skipped"
