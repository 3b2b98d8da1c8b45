"""The published OpenAPI document: `docs/openapi.json` is this, rendered from the app.

`python -m api.contract docs/openapi.json` rewrites the file; a test keeps the
committed file equal to what the app serves with the default settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from api.app import create_app
from api.settings import ApiSettings
from safecity.registry import default_city


def document(settings: ApiSettings | None = None) -> dict[str, Any]:
    """The OpenAPI document of the app (default settings unless given)."""
    app = create_app(settings or ApiSettings.model_construct(), default_city())
    return app.openapi()


def render(settings: ApiSettings | None = None) -> str:
    """The document as the committed file holds it (2-space JSON, trailing newline)."""
    return json.dumps(document(settings), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """Write the document to the path given (or print it)."""
    text = render()
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
