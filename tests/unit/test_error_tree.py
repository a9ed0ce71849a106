"""The error tree in `errors.py`'s docstring is the module's classes, each drawn under its own base."""

import inspect
import re

import comfybatch.errors as errors

_TREE_LINE = re.compile(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Z]\w+)")


def _drawn_parents() -> dict[str, str | None]:
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        found = _TREE_LINE.match(line)
        if found is None:
            continue
        depth = len(found.group(1)) // 4 + (1 if "── " in line else 0)
        path[depth:] = [found.group(2)]
        parents[found.group(2)] = path[depth - 1] if depth else None
    return parents


def test_every_error_class_is_drawn_under_its_base() -> None:
    """Each exception class of `errors.py` is in the docstring's tree, below the class it derives from."""
    classes = {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
               if cls.__module__ == errors.__name__ and issubclass(cls, Exception)}  # fmt: skip
    drawn = _drawn_parents()

    assert set(drawn) == set(classes)
    assert {name: classes[name].__bases__[0].__name__ for name in classes if name != "ComfyBatchError"} == {
        name: parent for name, parent in drawn.items() if parent is not None
    }


def test_every_problem_class_is_named() -> None:
    """The problem records that errors carry (`RequestProblem`, `NodeProblem`) are named in the docstring."""
    records = [name for name, cls in inspect.getmembers(errors, inspect.isclass)
               if cls.__module__ == errors.__name__ and not issubclass(cls, Exception)]  # fmt: skip

    assert records
    assert all(f"`{name}`" in (errors.__doc__ or "") for name in records)
