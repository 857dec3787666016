"""The README's python blocks run as written, in order, in one namespace."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["logits"].shape[0] == 3
    assert type(namespace["model"]).__module__.startswith("visionbridge")
    assert capsys.readouterr().out.strip()
    assert (Path(namespace["workdir"]) / "merged" / "modeling_visionbridge.py").is_file()
    assert (Path(namespace["workdir"]) / "adapter" / "adapter_model.safetensors").is_file()
