"""pytest helpers for method packages: `assert_conforms(MyMethod)` runs the conformance check."""

from __future__ import annotations

from harness.api.conformance import check_method, failures


def assert_conforms(method: type | str, **options) -> None:
    """Fail with every broken rule of the method contract (its name and the numbers). `method` is the
    class or its registered name; `options` go to harness.api.conformance.check_method (backbone, params,
    frames, words, image_size, count, chunk, seed)."""
    if isinstance(method, str):
        from harness import registry

        method = registry.methods()[method]
    broken = failures(check_method(method, **options))
    assert not broken, f"{getattr(method, 'name', method)} breaks the method contract:\n" + "\n".join(
        str(finding) for finding in broken)
