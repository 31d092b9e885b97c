"""Print the bytes the installed distributions of this interpreter take, by their RECORD sizes.

Arguments: path prefixes (relative to site-packages, e.g. `torch/include`) that the image
deletes after installing; their files are not counted. Prints one JSON object:
{"total": bytes, "distributions": {name: bytes}}. Runs in the measured environment (the local
executor environment in tests/test_image.py, /opt/venv in the built image), standard library only.
"""

import json
import sys
from importlib import metadata


def installed_bytes(distribution: metadata.Distribution, deleted: tuple[str, ...]) -> int:
    return sum(
        file.size or 0
        for file in distribution.files or []
        if not any(file.as_posix().startswith(prefix + "/") for prefix in deleted)
    )


def main() -> None:
    deleted = tuple(prefix.rstrip("/") for prefix in sys.argv[1:])
    sizes = {d.metadata["Name"]: installed_bytes(d, deleted) for d in metadata.distributions()}
    print(json.dumps({"total": sum(sizes.values()), "distributions": sizes}))


if __name__ == "__main__":
    main()
