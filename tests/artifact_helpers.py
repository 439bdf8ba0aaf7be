"""Rewriting an artifact's manifest as another machine's export would have written it: the
fields changed and sealed again (a plain edit is refused by the seal, tests/ir/test_export_artifact.py)."""
import json
from pathlib import Path

from passion_deploy.export import artifact


def reseal(d: Path, m: dict) -> None:
    m = {k: v for k, v in m.items() if k != artifact.SEAL}
    m[artifact.SEAL] = artifact.manifest_seal(m)
    (Path(d) / artifact.MANIFEST).write_text(json.dumps(m))
