"""The reference of every suite key (type, default, allowed range, meaning), generated from the suite schema
itself (harness/suite.py: the dataclasses, their comments and RANGES), so that the documentation cannot drift
from what the suite reader accepts. `harness list --suite-keys` prints it; docs/plugins.md holds it."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing

from harness import suite as schema

SECTIONS = {"": schema.Suite, "benchmark": schema.BenchmarkSpec, "backbone": schema.BackboneSpec,
            "protocol": schema.ProtocolSpec, "training": schema.TrainingSpec, "evaluation": schema.EvaluationSpec,
            "methods[]": schema.MethodSpec}
NOT_KEYS = ("source",)


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the comment lines just above it and the one after it."""
    comments, pending, lines = {}, [], inspect.getsource(cls).splitlines()
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        name = stripped.split(":", 1)[0]
        if ":" in stripped and name.isidentifier() and not stripped.startswith(("def ", "class ", "return")):
            trailing = [token.string.lstrip("# ").strip() for token in tokenize.generate_tokens(io.StringIO(line).readline)
                        if token.type == tokenize.COMMENT]
            comments[name] = " ".join(pending + trailing)
        pending = []
    return comments


def default_of(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def key_reference() -> str:
    """A Markdown table: one line per suite key."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for section, cls in SECTIONS.items():
        hints, comments = typing.get_type_hints(cls), field_comments(cls)
        for field in dataclasses.fields(cls):
            if field.name in NOT_KEYS or dataclasses.is_dataclass(hints[field.name]) or (
                    section == "" and field.name in ("benchmark", "methods")):
                continue
            key = f"{section}.{field.name}" if section else field.name
            allowed = str(schema.RANGES[(cls, field.name)]) if (cls, field.name) in schema.RANGES else ""
            meaning = comments.get(field.name, "").replace("|", "\\|")
            # the type in the wording of the suite reader's own errors
            lines.append(f"| `{key}` | {schema._type_name(hints[field.name])} | {default_of(field)} | {allowed} | "
                         f"{meaning} |")
    return "\n".join(lines) + "\n"
