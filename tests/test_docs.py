"""Docs beside the code stay true: the README schema table and .env.example."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from safecity import schema, settings

ROOT = Path(__file__).resolve().parent.parent


def env_names(model: type[BaseModel], prefix: str = "SAFECITY_") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_readme_schema_table_is_generated_from_the_catalogue() -> None:
    assert schema.markdown_table() in (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:10])
    assert "make run" in head and "make test" in head


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    expected = set()
    for cls in (
        settings.IngestSettings,
        settings.ApiSettings,
        settings.SimulatorSettings,
        settings.StackSettings,
    ):
        expected |= env_names(cls)
    missing = sorted(name for name in expected if f"{name}=" not in text)
    assert missing == []
