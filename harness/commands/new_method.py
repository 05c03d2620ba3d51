"""`harness new-method NAME`: a ready plugin package rendered from the templates in plugin_template/."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import jinja2

from harness.errors import HarnessError

TEMPLATES = Path(__file__).parent / "plugin_template"
NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def names(name: str) -> dict[str, str]:
    """The names the templates use: entry point, distribution, import package, class and suite."""
    if not NAME.fullmatch(name):
        raise HarnessError(f"new-method: {name!r} is not a method name: use lowercase letters, digits and single "
                           "hyphens, starting with a letter (e.g. my-method).")
    package = name.replace("-", "_")
    return {"name": name, "distribution": name, "package": package, "suite_name": package,
            "class_name": "".join(part.capitalize() for part in name.split("-"))}


def new_method(name: str, directory: Path | None = None) -> list[Path]:
    """Write the package for method `name` into `directory` (default ./NAME); returns the files written."""
    from harness import registry

    values = names(name)
    if name in registry.methods():
        where = "; ".join(plugin.where() for plugin in registry.methods().by_name[name])
        raise HarnessError(f"new-method: {name!r} is already registered ({where}); choose another name.")
    directory = Path(directory or name)
    if directory.exists() and any(directory.iterdir()):
        raise HarnessError(f"new-method: {directory} exists and is not empty; give a new --dir.")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True,
                                     undefined=jinja2.StrictUndefined)
    written = []
    for template in sorted(TEMPLATES.rglob("*.j2")):
        relative = template.relative_to(TEMPLATES)
        parts = [values["package"] if part == "package" else part for part in relative.parent.parts]
        target = directory.joinpath(*parts, relative.name.removesuffix(".j2"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(environment.get_template(relative.as_posix()).render(**values))
        written.append(target)
    return written


def _new_method(args: argparse.Namespace) -> None:
    folder = Path(args.dir or args.name)
    for path in new_method(args.name, folder):
        print(f"wrote {path}")
    print(f"next: pip install -e {folder} && harness check-method {args.name} && harness run {folder / 'suite.yaml'}")


def add(commands) -> None:
    scaffold = commands.add_parser("new-method", help="write a ready plugin package for a new method (entry point, "
                                                      "method module, example suite, conformance test)")
    scaffold.add_argument("name", help="the method's registered name, e.g. my-method")
    scaffold.add_argument("--dir", help="where to write the package (default: ./NAME)")
    scaffold.set_defaults(handler=_new_method)
