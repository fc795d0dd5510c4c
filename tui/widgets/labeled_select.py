"""A ``Select`` with a label in its top border, like the inputs of the forms."""

from __future__ import annotations

from typing import Any

from textual.widgets import Select
from textual.widgets._select import SelectCurrent


class LabeledSelect(Select):
    """``Select`` draws its border on its ``SelectCurrent`` child: the label goes there."""

    def __init__(self, options: Any, *, label: str, **kw: Any) -> None:
        super().__init__(options, **kw)
        self.label = label

    def on_mount(self) -> None:
        for current in self.query(SelectCurrent):
            current.border_title = self.label
