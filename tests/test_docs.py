"""The documentation site builds with ``mkdocs build --strict``: a broken link or anchor, a page left
out of the navigation, or an API reference that does not resolve fails it, and the tables generated
from the code at build time (docs/hooks/generated.py) hold what the code registers."""

import os
import re
import subprocess
import sys
from pathlib import Path

from fusionrec.plugins import BUILTIN_DISTRIBUTION, get_registry

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strictly_with_generated_tables(tmp_path):
    site = tmp_path / "site"
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"^WARNING", output, re.M), output

    components = (site / "components" / "index.html").read_text()
    assert "fusionrec:components" not in components  # the marker was replaced
    for slot, registered in get_registry().components.items():
        for name, component in registered.items():
            if component.distribution == BUILTIN_DISTRIBUTION:
                assert f"<code>{name}</code></td>" in components, f"{slot} '{name}' missing from components.md"
    # Options come from the constructors' signatures: PLE's, with its type and default.
    assert re.search(r"num_levels</code>: an int &gt;= 1 = <code>2</code>", components)

    cli = (site / "cli" / "index.html").read_text()
    for option in ("--max-batch-rows", "--exclude", "--no-onnx", "--model.trunk", "--data.features",
                   "--test_after_fit", "run_dir"):
        assert option in cli, f"{option} missing from cli.md"
    assert "--trainer.gradient_clip_val" not in cli  # the Trainer's options are Lightning's to document

    assert "fusionrec_register_trunks" in (site / "reference" / "hookspecs" / "index.html").read_text()
